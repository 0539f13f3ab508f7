"""Random sequences of every money movement the node makes, checked after every step.

Hypothesis drives deposits, x402 payments, promo grants, holds, captures, refunds, settling twice,
validator pay, payouts (opened, sent, paid, failed), $PEER grants, stakes, unstakes and claims
before and after the cooldown, bonds, releases, slashes and epochs (money_machine.py). After each
step: the ledger check is empty (every transaction sums to zero per asset, balances equal entries,
no forbidden negative, each hold settled once), every account holds what the model says, USDC in =
credits + earnings + payouts pending and paid + stakers' pool + treasury, and $PEER in
circulation = minted - burned, with burned never shrinking.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from .money_machine import PEER, MoneyMachine

MONEY_RUNS = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    # Every step is a few PostgreSQL round trips plus the whole-ledger check: slow by Hypothesis's
    # measure, and not a sign of a bad strategy.
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.django_db
def test_no_sequence_of_money_movements_creates_loses_or_double_spends_value(settings):
    settings.PEER_INITIAL_SUPPLY = 1_000_000 * PEER
    settings.PEER_UNSTAKE_COOLDOWN_SECONDS = 7 * 24 * 3600
    settings.PEER_SLASH_CHALLENGER_PERCENT = 50
    settings.PEER_EPOCH_SECONDS = 3600

    run_state_machine_as_test(MoneyMachine, settings=MONEY_RUNS)
