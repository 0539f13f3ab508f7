"""The 402 answer: the paper's body, the x402 v2 PaymentRequired object, and its header copy."""

import base64
import json

import pytest

from apps.credits.x402 import payment_required

PAY_TO = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
RESOURCE = "http://testserver/v1/chat/completions"


@pytest.fixture
def x402_settings(settings):
    settings.PEER_PAY_TO = PAY_TO
    settings.PEER_SOLANA_NETWORK = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
    settings.PEER_USDC_MINT = "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU"
    settings.PEER_X402_TIMEOUT_SECONDS = 60
    return settings


def _decode(header: str) -> dict:
    return json.loads(base64.b64decode(header, validate=True))


def test_the_body_names_the_scheme_and_the_price_in_whole_credits(x402_settings):
    body, _ = payment_required(price_micro=106_800, available_micro=5_000, resource_url=RESOURCE)

    assert body["scheme"] == "x402"
    assert body["price_credits"] == 11
    assert body["price_micro_usdc"] == 106_800
    assert body["balance_micro_usdc"] == 5_000


def test_the_body_carries_an_x402_version_2_payment_requirement(x402_settings):
    body, _ = payment_required(price_micro=106_800, available_micro=0, resource_url=RESOURCE)

    assert body["x402Version"] == 2
    assert body["resource"]["url"] == RESOURCE
    assert len(body["accepts"]) == 1
    requirement = body["accepts"][0]
    assert requirement["scheme"] == "exact"
    assert requirement["network"] == "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
    assert requirement["amount"] == "106800"
    assert isinstance(requirement["amount"], str)
    assert requirement["asset"] == "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU"
    assert requirement["payTo"] == PAY_TO
    assert requirement["maxTimeoutSeconds"] == 60


def test_the_amount_is_the_exact_micro_usdc_price_because_usdc_has_six_decimals(x402_settings):
    # 80,001 micro-USDC rounds up to 9 credits for people, but the payment is the exact price.
    body, _ = payment_required(price_micro=80_001, available_micro=0, resource_url=RESOURCE)

    assert body["price_credits"] == 9
    assert body["accepts"][0]["amount"] == "80001"


def test_the_payment_required_header_decodes_to_the_same_x402_object(x402_settings):
    body, headers = payment_required(price_micro=106_800, available_micro=0, resource_url=RESOURCE)

    decoded = _decode(headers["PAYMENT-REQUIRED"])

    assert set(decoded) == {"x402Version", "error", "resource", "accepts"}
    assert decoded["error"] == "Payment required"
    # The body's own "error" is left to OpenAI's error object; the rest is the same object.
    assert {key: value for key, value in decoded.items() if key != "error"} == \
        {key: body[key] for key in ("x402Version", "resource", "accepts")}
    assert decoded["accepts"][0]["amount"] == "106800"


def test_the_header_is_plain_ascii_base64(x402_settings):
    _, headers = payment_required(price_micro=1, available_micro=0, resource_url=RESOURCE + "?q=é")

    header = headers["PAYMENT-REQUIRED"]
    assert header.isascii()
    assert _decode(header)["resource"]["url"] == RESOURCE + "?q=é"


def test_the_network_mint_and_pay_to_come_from_settings(settings):
    settings.PEER_SOLANA_NETWORK = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
    settings.PEER_USDC_MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
    settings.PEER_PAY_TO = PAY_TO
    settings.PEER_X402_TIMEOUT_SECONDS = 90

    body, headers = payment_required(price_micro=10_000, available_micro=0, resource_url=RESOURCE)

    requirement = _decode(headers["PAYMENT-REQUIRED"])["accepts"][0]
    assert requirement["network"] == "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
    assert requirement["asset"] == "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
    assert requirement["maxTimeoutSeconds"] == 90
    assert body["accepts"][0] == requirement
