"""Pure money arithmetic: quotes, the 70/24/6 split, credit conversions. No database."""

import pytest

from apps.credits.pricing import (
    MICRO_PER_CREDIT,
    Split,
    credits_to_micro,
    job_price,
    micro_to_credits_ceil,
    split_capture,
)

HUGE_AMOUNTS = [2**31 - 1, 2**31, 10**12 + 7, 2**53 + 1, 2**63 - 1, 10**30 + 3]


def test_the_split_sums_exactly_to_the_amount_for_every_small_amount():
    for amount in range(0, 10_001):
        split = split_capture(amount)
        assert split.total == amount, amount
        assert min(split.worker, split.stakers_pool, split.treasury) >= 0, amount


@pytest.mark.parametrize("amount", HUGE_AMOUNTS)
def test_the_split_sums_exactly_to_the_amount_for_huge_amounts(amount):
    split = split_capture(amount)

    assert split.total == amount
    assert split.worker == amount * 70 // 100


def test_it_splits_a_round_amount_seventy_twenty_four_six():
    assert split_capture(100_000) == Split(worker=70_000, stakers_pool=24_000, treasury=6_000)


def test_it_gives_nothing_to_anyone_when_the_capture_is_zero():
    assert split_capture(0) == Split(worker=0, stakers_pool=0, treasury=0)


def test_every_rounding_remainder_goes_to_the_treasury():
    # 1 micro-USDC: 70% and 80% of the margin both floor to 0, so the treasury takes it.
    assert split_capture(1) == Split(worker=0, stakers_pool=0, treasury=1)
    # 7: worker 4 (4.9 floored), margin 3, stakers 2 (2.4 floored), treasury the other 1.
    assert split_capture(7) == Split(worker=4, stakers_pool=2, treasury=1)
    for amount in range(0, 10_001):
        split = split_capture(amount)
        # Floors never round the worker or the stakers up, so the treasury never gets under 6%.
        assert split.worker * 100 <= amount * 70, amount
        assert split.stakers_pool * 100 <= (amount - split.worker) * 80, amount
        assert split.treasury * 100 >= amount * 6, amount


def test_the_worker_and_stakers_shares_are_floors_of_their_percentages():
    for amount in [1, 3, 9, 99, 101, 333, 9_999, 123_456_789]:
        split = split_capture(amount)
        assert split.worker == (amount * 70) // 100
        assert split.stakers_pool == ((amount - split.worker) * 80) // 100
        assert split.treasury == amount - split.worker - split.stakers_pool


def test_it_rejects_a_negative_capture():
    with pytest.raises(ValueError):
        split_capture(-1)


def test_a_job_costs_its_base_plus_the_per_token_price_of_every_token():
    assert job_price(base=80_000, per_token=100, prompt_tokens=12, completion_tokens=256) == 80_000 + 100 * 268


def test_a_job_with_no_tokens_costs_its_base_price():
    assert job_price(base=120_000, per_token=100, prompt_tokens=0, completion_tokens=0) == 120_000


def test_the_quote_with_max_tokens_bounds_every_charge_with_fewer_completion_tokens():
    quote = job_price(base=80_000, per_token=100, prompt_tokens=30, completion_tokens=256)
    for used in range(0, 257):
        assert job_price(base=80_000, per_token=100, prompt_tokens=30, completion_tokens=used) <= quote


@pytest.mark.parametrize("field", ["base", "per_token", "prompt_tokens", "completion_tokens"])
def test_a_job_price_rejects_any_negative_input(field):
    arguments = {"base": 80_000, "per_token": 100, "prompt_tokens": 10, "completion_tokens": 10}
    arguments[field] = -1

    with pytest.raises(ValueError):
        job_price(**arguments)


@pytest.mark.parametrize(("micro", "credits"), [
    (0, 0), (1, 1), (MICRO_PER_CREDIT - 1, 1), (MICRO_PER_CREDIT, 1), (MICRO_PER_CREDIT + 1, 2),
    (80_000, 8), (80_001, 9), (106_800, 11), (10**15, 10**11),
])
def test_a_price_in_credits_is_rounded_up_to_a_whole_credit(micro, credits):
    assert micro_to_credits_ceil(micro) == credits


def test_a_credit_is_ten_thousand_micro_usdc():
    assert credits_to_micro(1) == 10_000
    assert credits_to_micro(5) == 50_000
    for credits in range(0, 1_000):
        assert micro_to_credits_ceil(credits_to_micro(credits)) == credits
