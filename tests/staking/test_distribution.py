"""The epoch's pro rata arithmetic, without a database."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.staking.distribution import pro_rata


def test_it_splits_in_proportion_to_stake():
    assert pro_rata(900, {"alice": 1, "bob": 2}) == {"alice": 300, "bob": 600}


def test_it_floors_each_share_and_leaves_the_remainder_undistributed():
    shares = pro_rata(240_000, {"alice": 3, "bob": 4})

    assert shares == {"alice": 102_857, "bob": 137_142}
    assert 240_000 - sum(shares.values()) == 1


def test_nobody_staked_gets_nothing_and_an_empty_pool_pays_nothing():
    assert pro_rata(1_000, {}) == {}
    assert pro_rata(0, {"alice": 5}) == {}


def test_a_negative_pool_or_stake_is_refused():
    with pytest.raises(ValueError):
        pro_rata(-1, {"alice": 1})
    with pytest.raises(ValueError):
        pro_rata(10, {"alice": 2, "bob": -1})


@given(pool=st.integers(min_value=0, max_value=10**15),
       stakes=st.dictionaries(st.integers(), st.integers(min_value=1, max_value=10**18), max_size=50))
def test_shares_never_exceed_the_pool_and_leave_less_than_one_unit_per_staker(pool, stakes):
    shares = pro_rata(pool, stakes)
    remainder = pool - sum(shares.values())

    assert 0 <= remainder
    if stakes:
        assert remainder < len(stakes)
    assert all(share >= 0 for share in shares.values())
