"""Which completed verified jobs are re-executed: a random, unpredictable draw per job. Pure.

The draw happens after the job completed, on the node, from the operating system's CSPRNG: the
worker served the job exactly as any other (same route, same timing) and cannot tell whether it
will be checked. Workers with a lower reputation are checked more often: the rate rises linearly
from the tier's rate at reputation 1 to `rate_max` at reputation 0.
"""

import secrets

RESOLUTION = 1_000_000  # rates are drawn to a millionth


def sample_rate(*, tier_rate: float, rate_max: float, reputation: float) -> float:
    tier_rate = min(max(tier_rate, 0.0), 1.0)
    top = min(max(rate_max, tier_rate), 1.0)
    distrust = 1.0 - min(max(reputation, 0.0), 1.0)
    return tier_rate + (top - tier_rate) * distrust


def drawn(rate: float) -> bool:
    return secrets.randbelow(RESOLUTION) < round(rate * RESOLUTION)
