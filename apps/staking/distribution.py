"""Pure arithmetic of an epoch's distribution (no I/O, unit-tested without a database)."""


def pro_rata(pool: int, stakes: dict) -> dict:
    """Split `pool` over `stakes` (key -> positive stake) in proportion, each share floored.

    The shares sum to at most `pool`; what is left (fewer units than there are stakers) is
    the caller's to keep. An empty or zero total stake gets nothing.
    """
    if pool < 0:
        raise ValueError("a pool cannot be negative")
    total = sum(stakes.values())
    if pool == 0 or total <= 0:
        return {}
    if any(stake < 0 for stake in stakes.values()):
        raise ValueError("a stake cannot be negative")
    return {key: pool * stake // total for key, stake in stakes.items()}
