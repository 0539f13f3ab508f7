"""The draw that picks verified answers for re-execution (apps/verification/sampling.py)."""

import pytest

from apps.verification.sampling import drawn, sample_rate


@pytest.mark.parametrize(("reputation", "rate"), [(1.0, 0.05), (0.0, 0.25), (0.5, 0.15), (1.7, 0.05), (-1, 0.25)])
def test_the_rate_rises_linearly_as_reputation_falls(reputation, rate):
    assert sample_rate(tier_rate=0.05, rate_max=0.25, reputation=reputation) == pytest.approx(rate)


def test_a_max_below_the_tier_rate_never_lowers_it():
    assert sample_rate(tier_rate=0.2, rate_max=0.1, reputation=0.0) == pytest.approx(0.2)


def test_rates_zero_and_one_are_never_and_always():
    assert not any(drawn(0.0) for _ in range(2000))
    assert all(drawn(1.0) for _ in range(2000))


def test_the_draw_follows_its_rate():
    # 40,000 draws at 10%: the count's standard deviation is 60, so 3,700..4,300 is five of them.
    hits = sum(drawn(0.10) for _ in range(40_000))
    assert 3_700 <= hits <= 4_300
