"""The 402 answer for a request the caller's credits cannot pay: the paper's body plus x402 v2.

The paper's shape is `{"scheme": "x402", "price_credits": N}`; the x402 v2 PaymentRequired
object (x402Version, resource, accepts[] with scheme "exact" on a CAIP-2 Solana network, USDC
mint, atomic amount, payTo, maxTimeoutSeconds) rides in the same body and, base64-encoded, in the
PAYMENT-REQUIRED header (complete there, "error" string included). Settling a retry's payment comes with the money issue.
"""

import base64
import json

from django.conf import settings

from .pricing import micro_to_credits_ceil


def payment_required(*, price_micro: int, available_micro: int, resource_url: str) -> tuple[dict, dict]:
    """(body fields, headers) for a 402. USDC has 6 decimals, so micro-USDC is the atomic unit."""
    requirement = {
        "scheme": "exact",
        "network": settings.PEER_SOLANA_NETWORK,
        "amount": str(price_micro),
        "asset": settings.PEER_USDC_MINT,
        "payTo": settings.PEER_PAY_TO,
        "maxTimeoutSeconds": settings.PEER_X402_TIMEOUT_SECONDS,
        "extra": {"feePayer": settings.PEER_PAY_TO},
    }
    x402 = {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": resource_url, "description": "Peer Cycles inference job",
                     "mimeType": "application/json"},
        "accepts": [requirement],
    }
    # The body's "error" stays OpenAI's error object (SDKs read it); x402's own "error" string
    # travels in the header's complete PaymentRequired object.
    body = {"scheme": "x402", "price_credits": micro_to_credits_ceil(price_micro),
            "price_micro_usdc": price_micro, "balance_micro_usdc": available_micro,
            **{k: v for k, v in x402.items() if k != "error"}}
    header = base64.b64encode(json.dumps(x402, separators=(",", ":")).encode()).decode()
    return body, {"PAYMENT-REQUIRED": header}
