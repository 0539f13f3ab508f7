"""Solana Pay transfer requests and USDC amounts as people write them. Pure: no Django, no I/O.

Spec: https://docs.solanapay.com/spec — `solana:<recipient>?amount=<decimal>&spl-token=<mint>
&reference=<key>&label=<text>&message=<text>&memo=<text>`. The recipient is the wallet that owns
the receiving token account; the payer's wallet derives that associated token account itself.
"""

import re
from decimal import Decimal
from urllib.parse import quote

from solders.keypair import Keypair
from solders.pubkey import Pubkey

USDC_DECIMALS = 6
MICRO_PER_USDC = 10**USDC_DECIMALS

# ASCII digits, an optional point and more digits. No sign, exponent, spaces or "NaN".
_DECIMAL_TEXT = re.compile(r"[0-9]{1,16}(\.[0-9]{1,30})?")


class AmountError(ValueError):
    """A USDC amount a person sent us that we will not turn into a purchase (HTTP 400)."""


def usdc_to_micro(value, *, max_micro: int) -> int:
    """A positive USDC amount with at most 6 decimals, as integer micro-USDC (USDC's atomic unit).

    Accepts an int, a Decimal (JSON numbers are parsed as Decimal, never float) or a decimal
    string such as "10" or "2.5". Floats, booleans, exponents, signs and more than six decimals
    are refused, so that what we ask for is exactly what the buyer meant.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise AmountError("usdc must be a decimal number such as 10 or 2.5")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        amount = Decimal(value)
    else:
        raise AmountError("usdc must be a decimal number such as 10 or 2.5")
    if not amount.is_finite():
        raise AmountError("usdc must be a finite number")
    if amount <= 0:
        raise AmountError("usdc must be positive")
    if amount > Decimal(max_micro).scaleb(-USDC_DECIMALS):
        raise AmountError(f"usdc may be at most {micro_to_usdc_text(max_micro)} in one purchase")
    _, digits, exponent = amount.as_tuple()
    beyond = -USDC_DECIMALS - exponent  # digits past the sixth decimal place; they must be zeros
    if beyond > 0 and any(digits[-beyond:]):
        raise AmountError("usdc has at most 6 decimals (1 micro-USDC)")
    micro = amount.scaleb(USDC_DECIMALS)  # exact: at most 13 significant digits are non-zero
    return int(micro)


def micro_to_usdc_text(micro: int) -> str:
    """10_500_000 -> "10.5"; no exponent, no trailing zeros (Solana Pay's amount format)."""
    whole, fraction = divmod(micro, MICRO_PER_USDC)
    fraction_text = f"{fraction:06d}".rstrip("0")
    return f"{whole}.{fraction_text}" if fraction_text else str(whole)


def new_reference() -> Pubkey:
    """A fresh random public key, as Solana Pay recommends for a reference (nobody holds its key)."""
    return Keypair().pubkey()


def transfer_request_url(*, recipient: str, micro: int, mint: str, reference: str, label: str = "",
                         message: str = "", memo: str = "") -> str:
    params = [("amount", micro_to_usdc_text(micro)), ("spl-token", mint), ("reference", reference)]
    params += [(name, text) for name, text in (("label", label), ("message", message), ("memo", memo)) if text]
    query = "&".join(f"{name}={quote(text, safe='')}" for name, text in params)
    return f"solana:{recipient}?{query}"
