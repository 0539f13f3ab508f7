"""x402 per-request payments: the 402 answer, and settling a retry's PAYMENT-SIGNATURE.

The 402 body is the paper's `{"scheme": "x402", "price_credits": N}` plus the x402 v2
PaymentRequired object; the complete object, base64-encoded, is the PAYMENT-REQUIRED header.

A retry that carries PAYMENT-SIGNATURE is verified and settled through the official `x402`
package: by this node as its own facilitator (its hot wallet co-signs as fee payer and submits
the transfer through Solana RPC), or by the facilitator at PEER_X402_FACILITATOR_URL. The
settled USDC is credited to the caller's account (external:solana:USDC -> user), once per
on-chain transaction, and the job is then paid from credits like any other: a job that fails
is refunded to that account, as credits.
"""

import base64
import json
import logging
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError, transaction

from .ledger import EXTERNAL_USDC_CODE, Leg, ledger_post, system_account
from .pricing import micro_to_credits_ceil

logger = logging.getLogger(__name__)
PAYMENT_HEADER = "PAYMENT-SIGNATURE"


class PaymentRejected(Exception):
    """A payment that cannot be accepted; `reason` is x402's or ours, for the client."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Settlement:
    transaction: str
    payer: str
    amount: int
    header: str  # PAYMENT-RESPONSE value


def fee_payer_address() -> str:
    """The address that pays the network fee: our hot wallet, or the remote facilitator's."""
    if settings.PEER_X402_FACILITATOR_URL:
        return _remote_fee_payer()
    keypair = _hot_wallet()
    return str(keypair.pubkey()) if keypair else ""


def payment_requirements(*, price_micro: int):
    from x402.schemas import PaymentRequirements

    return PaymentRequirements(
        scheme="exact", network=settings.PEER_SOLANA_NETWORK, asset=settings.PEER_USDC_MINT,
        amount=str(price_micro), pay_to=settings.PEER_PAY_TO,
        max_timeout_seconds=settings.PEER_X402_TIMEOUT_SECONDS, extra={"feePayer": fee_payer_address()})


def payment_required(*, price_micro: int, available_micro: int, resource_url: str) -> tuple[dict, dict]:
    """(body fields, headers) for a 402. USDC has 6 decimals, so micro-USDC is the atomic unit."""
    from x402.schemas import PaymentRequired, ResourceInfo

    required = PaymentRequired(
        error="Payment required",
        resource=ResourceInfo(url=resource_url, description="Peer Cycles inference job",
                              mime_type="application/json"),
        accepts=[payment_requirements(price_micro=price_micro)])
    x402 = required.model_dump(by_alias=True, exclude_none=True)
    # The body's "error" stays OpenAI's error object (SDKs read it); x402's own "error" string
    # travels in the header's complete PaymentRequired object.
    body = {"scheme": "x402", "price_credits": micro_to_credits_ceil(price_micro),
            "price_micro_usdc": price_micro, "balance_micro_usdc": available_micro,
            **{k: v for k, v in x402.items() if k != "error"}}
    header = base64.b64encode(json.dumps(x402, separators=(",", ":")).encode()).decode()
    return body, {"PAYMENT-REQUIRED": header}


def x402_settle_to_credits(*, user, header_value: str, price_micro: int) -> Settlement:
    """Verify and settle the payment in PAYMENT-SIGNATURE for exactly `price_micro`, and credit
    it to `user`. Raises PaymentRejected; never credits a payment that did not settle.

    Slow network calls (verify, settle) run outside any database transaction.
    """
    from x402.http.utils import decode_payment_signature_header, encode_payment_response_header
    from x402.schemas import PaymentPayload

    if not settings.PEER_X402_FACILITATOR_URL and not settings.PEER_PAYOUT_KEYPAIR:
        raise PaymentRejected("facilitator_unavailable", "This node accepts no x402 payments: it has neither "
                              "a hot wallet (PEER_PAYOUT_KEYPAIR) nor a facilitator URL.")
    try:
        payload = decode_payment_signature_header(header_value)
    except Exception:  # the header is attacker-controlled: any decode failure is a 400
        raise PaymentRejected("invalid_payload", f"{PAYMENT_HEADER} is not a base64 x402 payment payload.") from None
    if not isinstance(payload, PaymentPayload):
        raise PaymentRejected("unsupported_version", "Only x402 version 2 payments are accepted.")
    wanted = payment_requirements(price_micro=price_micro)
    _check_accepted(payload.accepted, wanted)
    if not settings.PEER_X402_FACILITATOR_URL:  # our hot wallet will co-sign: its costs are ours
        _check_fee_payer_cost(payload.payload, fee_payer=wanted.extra["feePayer"])
    server = _resource_server()
    verified = server.verify_payment(payload, wanted)
    if not verified.is_valid:
        raise PaymentRejected(verified.invalid_reason or "invalid_payment",
                              verified.invalid_message or "The payment did not verify.")
    settled = server.settle_payment(payload, wanted)
    if not settled.success:
        raise PaymentRejected(settled.error_reason or "settlement_failed",
                              settled.error_message or "The payment could not be settled.")
    amount = int(settled.amount or wanted.amount)
    _credit(user=user, signature=settled.transaction, payer=settled.payer or "", amount=amount)
    return Settlement(transaction=settled.transaction, payer=settled.payer or "", amount=amount,
                      header=encode_payment_response_header(settled))


def _check_accepted(accepted, wanted) -> None:
    """The payment must answer exactly what we asked: same scheme, network, asset, payee, amount."""
    for field in ("scheme", "network", "asset", "pay_to", "amount"):
        got, expected = str(getattr(accepted, field)), str(getattr(wanted, field))
        if got != expected:
            raise PaymentRejected(f"{field}_mismatch", f"The payment's {field} is {got!r}; this request "
                                  f"needs {expected!r}.")
    # Only our own fee payer may co-sign: anything else would have us sign for a stranger.
    fee_payer = (accepted.extra or {}).get("feePayer")
    if fee_payer != wanted.extra["feePayer"]:
        raise PaymentRejected("fee_payer_mismatch", f"The payment names fee payer {fee_payer!r}; this node's "
                              f"is {wanted.extra['feePayer']!r}.")


# The most priority fee (compute-unit limit x price) our hot wallet pays for one payment: the x402
# client's own limit (20_000 CU) at x402's own price cap (5 lamports/CU). x402 caps only the price,
# and Solana charges it on the requested limit, so 1_400_000 CU at that price would cost the node
# 0.007 SOL for a payment of any size.
MAX_PRIORITY_FEE_LAMPORTS = 100_000
_COMPUTE_BUDGET = "ComputeBudget111111111111111111111111111111"
_MAX_COMPUTE_UNITS = 1_400_000  # the runtime's ceiling, and what a transaction without a limit may use


def _check_fee_payer_cost(inner: dict, *, fee_payer: str) -> None:
    """Our fee payer's signature must buy one payment's network fee and nothing else. x402's verify
    refuses the fee payer as transfer authority, unknown instructions and a high compute-unit price,
    but not a high compute-unit limit, extra required signatures (5_000 lamports each, ours to pay),
    the fee payer named in another instruction (the x402 spec's fee payer isolation), or address
    lookup tables (their accounts are invisible to its checks, and its verify crashes on them)."""
    from solders.transaction import VersionedTransaction

    try:
        message = VersionedTransaction.from_bytes(base64.b64decode(inner["transaction"], validate=True)).message
        keys = [str(key) for key in message.account_keys]
        programs_and_accounts = [[ix.program_id_index, *ix.accounts] for ix in message.instructions]
        lookups = getattr(message, "address_table_lookups", None)  # legacy messages have none
    except Exception:  # attacker-controlled bytes: any decode failure is a refusal
        raise PaymentRejected("invalid_payload", "The payment's transaction cannot be decoded.") from None
    if lookups:
        raise PaymentRejected("address_lookup_tables_refused", "The payment's transaction loads accounts from "
                              "address lookup tables; a payment lists every account it touches.")
    if not keys or keys[0] != fee_payer:
        raise PaymentRejected("fee_payer_mismatch", f"The transaction's fee payer is "
                              f"{keys[0] if keys else None!r}; this node's is {fee_payer!r}.")
    if any(index >= len(keys) for indices in programs_and_accounts for index in indices):
        raise PaymentRejected("invalid_payload", "The payment's transaction names accounts it does not list.")
    if any(keys[index] == fee_payer for indices in programs_and_accounts for index in indices):
        raise PaymentRejected("fee_payer_not_isolated", "The transaction names this node's fee payer in an "
                              "instruction; its signature pays the network fee and nothing else.")
    if message.header.num_required_signatures != 2:
        raise PaymentRejected("fee_payer_extra_signatures", f"The transaction needs "
                              f"{message.header.num_required_signatures} signatures; a payment needs two (the "
                              "payer's and this node's fee payer's), and each signature is a fee this node pays.")
    if (fee := _priority_fee(message, keys)) > MAX_PRIORITY_FEE_LAMPORTS:
        raise PaymentRejected("fee_payer_priority_fee_too_high", f"The transaction asks this node to pay a "
                              f"priority fee of {fee} lamports (compute-unit limit x price); it pays at most "
                              f"{MAX_PRIORITY_FEE_LAMPORTS}.")


def _priority_fee(message, keys: list[str]) -> int:
    """Lamports the fee payer pays on top of the signature fees: Solana charges the compute-unit
    price (micro-lamports) on the requested limit, not on the units used, rounded up."""
    limit, price = _MAX_COMPUTE_UNITS, 0
    for ix in message.instructions:
        data = bytes(ix.data)
        if keys[ix.program_id_index] != _COMPUTE_BUDGET:
            continue
        if data[:1] == b"\x02" and len(data) >= 5:  # SetComputeUnitLimit(u32)
            limit = int.from_bytes(data[1:5], "little")
        elif data[:1] == b"\x03" and len(data) >= 9:  # SetComputeUnitPrice(u64)
            price = int.from_bytes(data[1:9], "little")
    return -(-min(limit, _MAX_COMPUTE_UNITS) * price // 1_000_000)


def _credit(*, user, signature: str, payer: str, amount: int) -> None:
    from apps.credits.models import X402Payment
    from apps.credits.services import user_account

    external, account = system_account(EXTERNAL_USDC_CODE), user_account(user=user)
    try:
        with transaction.atomic(durable=True):
            txn = ledger_post(kind="x402", idempotency_key=f"x402:{signature}", reference=f"x402:{signature}",
                              memo=f"x402 payment from {payer}"[:200],
                              legs=[Leg(external, -amount), Leg(account, amount)])
            X402Payment.objects.create(signature=signature, user=user, payer=payer, amount=amount,
                                       ledger_transaction=txn)
    except IntegrityError:
        raise PaymentRejected("replayed", "This payment was already used.") from None


def _hot_wallet():
    path = settings.PEER_PAYOUT_KEYPAIR
    if not path:
        return None
    return _load_keypair(path)


@lru_cache(maxsize=4)
def _load_keypair(path: str):
    from solders.keypair import Keypair

    with open(path) as handle:
        return Keypair.from_bytes(bytes(json.load(handle)))


@lru_cache(maxsize=4)
def _http_facilitator(url: str):
    from x402.http import HTTPFacilitatorClientSync

    return HTTPFacilitatorClientSync({"url": url})


@lru_cache(maxsize=1)
def _remote_fee_payer() -> str:
    for kind in _http_facilitator(settings.PEER_X402_FACILITATOR_URL).get_supported().kinds:
        if str(kind.network) == settings.PEER_SOLANA_NETWORK and kind.scheme == "exact":
            return (kind.extra or {}).get("feePayer", "")
    return ""


def _resource_server():
    return _resource_server_for(settings.PEER_X402_FACILITATOR_URL, settings.PEER_PAYOUT_KEYPAIR,
                                settings.PEER_SOLANA_RPC_URL, settings.PEER_SOLANA_NETWORK)


@lru_cache(maxsize=4)
def _resource_server_for(facilitator_url: str, keypair_path: str, rpc_url: str, network: str):
    """A remote facilitator client when a URL is set, else this node as its own facilitator."""
    from x402 import x402FacilitatorSync, x402ResourceServerSync
    from x402.mechanisms.svm.exact import ExactSvmServerScheme
    from x402.mechanisms.svm.exact.register import register_exact_svm_facilitator
    from x402.mechanisms.svm.signers import FacilitatorKeypairSigner

    if facilitator_url:
        facilitator = _http_facilitator(facilitator_url)
    else:
        signer = FacilitatorKeypairSigner(_load_keypair(keypair_path), rpc_url=rpc_url)
        facilitator = register_exact_svm_facilitator(x402FacilitatorSync(), signer, [network])
    server = x402ResourceServerSync(facilitator)
    server.register(network, ExactSvmServerScheme(rpc_url=rpc_url))
    server.initialize()
    return server
