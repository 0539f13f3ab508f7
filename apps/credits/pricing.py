"""Pure money arithmetic: quotes, the revenue split, credit conversions. No I/O.

1 credit = $0.01 = 10,000 micro-USDC. All amounts are integers.
"""

from dataclasses import dataclass

MICRO_PER_CREDIT = 10_000
MICRO_PER_USDC = 1_000_000

WORKER_SHARE_PERCENT = 70
STAKERS_SHARE_OF_MARGIN_PERCENT = 80
# A validator re-executing a job earns what the worker earned for the same compute: 70% of
# that job's price, paid from the treasury's share of the margin (see docs/money.md).
VALIDATOR_SHARE_PERCENT = WORKER_SHARE_PERCENT


@dataclass(frozen=True)
class Split:
    worker: int
    stakers_pool: int
    treasury: int

    @property
    def total(self) -> int:
        return self.worker + self.stakers_pool + self.treasury


def job_price(*, base: int, per_token: int, prompt_tokens: int, completion_tokens: int) -> int:
    """Price in micro-USDC. The quote uses max_tokens as completion_tokens, so it bounds the charge."""
    if min(base, per_token, prompt_tokens, completion_tokens) < 0:
        raise ValueError("prices and token counts are never negative")
    return base + per_token * (prompt_tokens + completion_tokens)


def split_capture(amount: int) -> Split:
    """70% to the worker; of the margin 80% to the stakers' pool, 20% and every remainder to
    the treasury (floor division everywhere, so rounding never creates value)."""
    if amount < 0:
        raise ValueError("a capture is never negative")
    worker = amount * WORKER_SHARE_PERCENT // 100
    margin = amount - worker
    stakers = margin * STAKERS_SHARE_OF_MARGIN_PERCENT // 100
    return Split(worker=worker, stakers_pool=stakers, treasury=margin - stakers)


def credits_to_micro(credits: int) -> int:
    return credits * MICRO_PER_CREDIT


def micro_to_credits_ceil(micro: int) -> int:
    """What the paper calls price_credits: a price in whole credits, rounded up."""
    return -(-micro // MICRO_PER_CREDIT)


def validator_pay(job_price: int) -> int:
    """What one re-execution of a job priced `job_price` pays its validator (floor)."""
    if job_price < 0:
        raise ValueError("a price is never negative")
    return job_price * VALIDATOR_SHARE_PERCENT // 100
