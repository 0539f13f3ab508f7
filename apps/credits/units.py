"""Ledger amounts as text people read: integer base units to exact decimals (never a float)."""

USDC_DECIMALS = 6  # the ledger counts micro-USDC
PEER_DECIMALS = 9  # and $PEER base units


def units_text(amount: int, decimals: int) -> str:
    """`amount` base units as a grouped decimal, exact: units_text(1_234_500_000, 6) == "1,234.5"."""
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    whole, fraction = divmod(amount, 10**decimals)
    return f"{sign}{whole:,}" + (f".{fraction:0{decimals}d}".rstrip("0") if fraction else "")


def usdc_text(micro_usdc: int) -> str:
    return f"{units_text(micro_usdc, USDC_DECIMALS)} USDC"


def peer_text(base_units: int) -> str:
    return f"{units_text(base_units, PEER_DECIMALS)} PEER"
