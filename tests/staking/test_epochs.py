"""Epochs: the USDC stakers' pool paid pro rata to staked $PEER, once per epoch."""

from datetime import UTC, datetime, timedelta

import pytest

from apps.credits.ledger import STAKERS_POOL_CODE
from apps.credits.models import LedgerTransaction
from apps.credits.selectors import balance_get
from apps.staking.models import Epoch
from apps.staking.selectors import stakers_pool_balance
from apps.staking.services import epoch_close, epoch_number_ended_by, peer_grant, peer_stake, unstake_request
from apps.staking.tasks import epoch_close_task

from .helpers import PEER, a_job_pays_the_stakers_pool, assert_value_is_conserved, balance

TEN_PAST_NOON = datetime(2026, 3, 2, 12, 10, tzinfo=UTC)


@pytest.fixture
def alice_and_carol_stake_3_and_4(alice, carol):
    for user, amount in ((alice, 3 * PEER), (carol, 4 * PEER)):
        peer_grant(user=user, amount=10 * PEER)
        peer_stake(user=user, amount=amount)


def test_the_epoch_pays_the_pool_pro_rata_to_stake_and_keeps_the_remainder(
        alice, carol, bobs_worker, alice_and_carol_stake_3_and_4):
    pool = a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")
    assert pool == 240_000

    epoch = epoch_close(now=TEN_PAST_NOON)

    assert balance_get(user=alice) == 240_000 * 3 // 7 == 102_857
    assert balance_get(user=carol) == 240_000 * 4 // 7 == 137_142
    assert (epoch.pool_amount, epoch.distributed, epoch.remainder) == (240_000, 239_999, 1)
    assert (epoch.total_staked, epoch.stakers) == (7 * PEER, 2)
    assert stakers_pool_balance() == 1  # the remainder waits for the next epoch
    assert (epoch.started_at, epoch.ended_at) == (datetime(2026, 3, 2, 11, tzinfo=UTC),
                                                  datetime(2026, 3, 2, 12, tzinfo=UTC))
    assert_value_is_conserved()


def test_the_remainder_is_paid_out_with_the_next_epoch(alice, carol, bobs_worker, alice_and_carol_stake_3_and_4):
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")
    epoch_close(now=TEN_PAST_NOON)
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e2")

    later = epoch_close(now=TEN_PAST_NOON + timedelta(hours=1))

    assert later.pool_amount == 240_001
    assert balance_get(user=alice) + balance_get(user=carol) + stakers_pool_balance() == 480_000
    assert_value_is_conserved()


def test_a_retried_epoch_close_pays_once(alice, carol, bobs_worker, alice_and_carol_stake_3_and_4):
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")
    first = epoch_close(now=TEN_PAST_NOON)
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e2")

    again = epoch_close(now=TEN_PAST_NOON + timedelta(minutes=20))  # the same epoch (11:00-12:00)

    assert again.id == first.id
    assert LedgerTransaction.objects.filter(kind="peer_epoch").count() == 1
    assert balance_get(user=alice) == 102_857
    assert stakers_pool_balance() == 240_001
    assert_value_is_conserved()


def test_with_nobody_staked_the_pool_is_left_untouched(alice, bobs_worker):
    peer_grant(user=alice, amount=10 * PEER)  # liquid only: earns nothing
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")

    epoch = epoch_close(now=TEN_PAST_NOON)

    assert (epoch.stakers, epoch.distributed, epoch.remainder, epoch.transaction) == (0, 0, 240_000, None)
    assert stakers_pool_balance() == 240_000
    assert balance_get(user=alice) == 0
    assert_value_is_conserved()


def test_peer_in_its_unstaking_cooldown_earns_nothing(alice, carol, bobs_worker, alice_and_carol_stake_3_and_4):
    unstake_request(user=carol, amount=4 * PEER)
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")

    epoch_close(now=TEN_PAST_NOON)

    assert balance_get(user=alice) == 240_000
    assert balance_get(user=carol) == 0
    assert balance(STAKERS_POOL_CODE) == 0
    assert_value_is_conserved()


def test_the_beat_task_closes_the_last_ended_epoch_and_is_safe_to_run_twice(
        alice, bobs_worker, alice_and_carol_stake_3_and_4, monkeypatch):
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:e1")
    monkeypatch.setattr("apps.staking.tasks.timezone.now", lambda: TEN_PAST_NOON)  # never across an hour

    number = epoch_close_task()
    assert epoch_close_task() == number == epoch_number_ended_by(TEN_PAST_NOON)

    assert epoch_close_task.name == "apps.staking.tasks.epoch_close_task"
    assert Epoch.objects.get().number == number
    assert LedgerTransaction.objects.filter(kind="peer_epoch").count() == 1
    assert stakers_pool_balance() == 1
    assert_value_is_conserved()
