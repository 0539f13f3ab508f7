"""Ledger account codes of $PEER holdings, shared by services (which create the accounts) and
selectors (which only read them)."""

PEER_TREASURY_CODE = "system:peer_treasury:PEER"


def liquid_code(user_id) -> str:
    return f"user:{user_id}:PEER"


def staked_code(user_id) -> str:
    return f"user:{user_id}:staked:PEER"


def unstaking_code(user_id) -> str:
    return f"user:{user_id}:unstaking:PEER"


def bond_code(worker_id) -> str:
    return f"worker:{worker_id}:bond:PEER"


def unbonding_code(worker_id) -> str:
    return f"worker:{worker_id}:unbonding:PEER"
