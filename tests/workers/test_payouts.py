"""Worker payouts: real SPL transfers signed by the node's hot wallet, sent through the local
Solana JSON-RPC (LiteSVM), confirmed before the ledger calls them paid, never sent twice."""

import json

import pytest
from django.db import transaction

from apps.credits.ledger import EXTERNAL_USDC_CODE, PAYOUTS_PENDING_CODE
from apps.credits.models import LedgerAccount
from apps.credits.services import credits_grant, credits_hold_in_atomic, credits_settle_in_atomic
from apps.workers.models import WorkerPayout
from apps.workers.payouts import payout_progress, payouts_open, payouts_run
from apps.workers.solana_payouts import PayoutChain
from apps.workers.services import worker_register
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401

pytestmark = pytest.mark.django_db
THRESHOLD = 1 * USDC


def _balance(code):
    return LedgerAccount.objects.filter(code=code).values_list("balance", flat=True).first() or 0


@pytest.fixture
def hot_wallet(usdc, settings, tmp_path):
    """The node's hot wallet: SOL for fees and 50 USDC to pay workers from."""
    wallet = usdc.wallet(50 * USDC)
    path = tmp_path / "hot-wallet.json"
    path.write_text(json.dumps(list(bytes(wallet.keypair))))
    settings.PEER_PAYOUT_KEYPAIR = str(path)
    return wallet


@pytest.fixture
def chain(usdc, hot_wallet):
    return PayoutChain(rpc_url=usdc.chain.url, hot_wallet=hot_wallet.keypair, mint=str(usdc.mint))


@pytest.fixture
def earning_worker(alice, bob):
    """bob's worker with 2.1 USDC of earnings from alice's jobs, and a payout wallet."""
    from solders.keypair import Keypair

    worker, _ = worker_register(operator=bob, name="earner", tiers=["open"])
    worker.payout_address = str(Keypair().pubkey())
    worker.save(update_fields=["payout_address"])
    credits_grant(user=alice, credits=1000)
    for index in range(3):
        with transaction.atomic():
            credits_hold_in_atomic(user=alice, amount=1_000_000, reference=f"job:{index}")
            credits_settle_in_atomic(user=alice, held_amount=1_000_000, charge=1_000_000, worker=worker,
                                     reference=f"job:{index}")
    assert _balance(f"worker:{worker.id}:USDC") == 2_100_000
    return worker


def _received(usdc, worker) -> int:
    from solders.pubkey import Pubkey
    from spl.token.instructions import get_associated_token_address

    return usdc.chain.token_balance(get_associated_token_address(Pubkey.from_string(worker.payout_address), usdc.mint))


def test_earnings_above_the_threshold_are_paid_on_chain_and_leave_the_ledger_once_finalized(
        usdc, chain, earning_worker):
    external_before = _balance(EXTERNAL_USDC_CODE)
    assert payouts_run(chain=chain, threshold=THRESHOLD) == {"sent": 1}
    payout = WorkerPayout.objects.get()
    assert payout.state == "sent" and payout.amount == 2_100_000 and payout.signature
    assert _balance(f"worker:{earning_worker.id}:USDC") == 0 and _balance(PAYOUTS_PENDING_CODE) == 2_100_000
    assert _received(usdc, earning_worker) == 2_100_000
    assert payouts_run(chain=chain, threshold=THRESHOLD) == {"paid": 1}
    payout.refresh_from_db()
    assert payout.state == "paid"
    assert _balance(PAYOUTS_PENDING_CODE) == 0 and _balance(EXTERNAL_USDC_CODE) == external_before + 2_100_000
    assert payouts_run(chain=chain, threshold=THRESHOLD) == {}  # nothing left to do, nothing paid twice
    assert _received(usdc, earning_worker) == 2_100_000


def test_a_payout_waits_for_finality_before_the_ledger_calls_it_paid(usdc, chain, earning_worker):
    payouts_run(chain=chain, threshold=THRESHOLD)
    payout = WorkerPayout.objects.get()
    usdc.chain.hold_unfinalized(payout.signature)
    assert payout_progress(payout_id=payout.id, chain=chain) == "waiting"
    assert WorkerPayout.objects.get().state == "sent" and _balance(PAYOUTS_PENDING_CODE) == 2_100_000
    usdc.chain.finalize(payout.signature)
    assert payout_progress(payout_id=payout.id, chain=chain) == "paid"


def test_earnings_below_the_threshold_or_without_a_wallet_stay_in_the_ledger(usdc, chain, earning_worker):
    assert payouts_open(threshold=3 * USDC) == []
    earning_worker.payout_address = ""
    earning_worker.save(update_fields=["payout_address"])
    assert payouts_open(threshold=THRESHOLD) == []
    assert not WorkerPayout.objects.exists() and _balance(f"worker:{earning_worker.id}:USDC") == 2_100_000


def test_a_threshold_of_zero_never_opens_an_empty_payout(bob):
    """Found by the money property test: a worker with nothing earned got a payout of 0."""
    from solders.keypair import Keypair

    worker, _ = worker_register(operator=bob, name="idle", tiers=["open"])
    worker.payout_address = str(Keypair().pubkey())
    worker.save(update_fields=["payout_address"])
    LedgerAccount.objects.get_or_create(code=f"worker:{worker.id}:USDC",
                                        defaults={"kind": "worker", "asset": "USDC"})
    assert payouts_open(threshold=0) == [] and not WorkerPayout.objects.exists()


class CrashAfterRecording(PayoutChain):
    """The process dies after the signed transfer was recorded and before (or while) sending."""

    def __init__(self, chain, *, reaches_the_chain: bool):
        self.__dict__.update(chain.__dict__)
        self.reaches_the_chain = reaches_the_chain

    def send(self, raw_base64):
        if self.reaches_the_chain:
            super().send(raw_base64)
        raise ConnectionError("node crashed")


@pytest.mark.parametrize("reaches_the_chain", [True, False])
def test_a_payout_retried_after_a_crash_between_send_and_record_pays_exactly_once(
        usdc, chain, earning_worker, reaches_the_chain):
    payouts_open(threshold=THRESHOLD)
    payout = WorkerPayout.objects.get()
    with pytest.raises(ConnectionError):
        payout_progress(payout_id=payout.id, chain=CrashAfterRecording(chain, reaches_the_chain=reaches_the_chain))
    recorded = WorkerPayout.objects.get().signature
    assert recorded
    outcome = payout_progress(payout_id=payout.id, chain=chain)
    assert outcome == ("paid" if reaches_the_chain else "resent")
    if not reaches_the_chain:
        assert payout_progress(payout_id=payout.id, chain=chain) == "paid"
    assert WorkerPayout.objects.get().signature == recorded  # the same transaction, never a second one
    assert _received(usdc, earning_worker) == 2_100_000


def test_a_transfer_that_fails_on_chain_is_reversed_to_the_worker(usdc, chain, earning_worker, hot_wallet):
    # Empty the hot wallet's USDC: the transfer lands but fails.
    hot_wallet.pay(50 * USDC)
    assert payouts_run(chain=chain, threshold=THRESHOLD) == {"sent": 1}
    assert payouts_run(chain=chain, threshold=THRESHOLD) == {"failed": 1}
    payout = WorkerPayout.objects.get()
    assert payout.state == "failed" and payout.error
    assert _balance(f"worker:{earning_worker.id}:USDC") == 2_100_000 and _balance(PAYOUTS_PENDING_CODE) == 0
    assert _received(usdc, earning_worker) == 0


def test_two_runs_racing_for_one_payout_send_it_once(usdc, chain, earning_worker):
    payouts_open(threshold=THRESHOLD)
    payout = WorkerPayout.objects.get()
    from apps.workers.payouts import payout_claim

    assert payout_claim(payout_id=payout.id)  # another run holds it
    assert payout_progress(payout_id=payout.id, chain=chain) == "claimed elsewhere"
    assert not WorkerPayout.objects.get().signature


def test_a_payout_whose_transaction_expired_unsent_is_rebuilt_and_the_old_one_can_never_land(
        usdc, chain, earning_worker):
    import base64

    from solders.transaction import Transaction

    payouts_open(threshold=THRESHOLD)
    payout = WorkerPayout.objects.get()
    with pytest.raises(ConnectionError):
        payout_progress(payout_id=payout.id, chain=CrashAfterRecording(chain, reaches_the_chain=False))
    stale = WorkerPayout.objects.get()
    usdc.chain.expire_blockhashes()
    assert payout_progress(payout_id=payout.id, chain=chain) == "sent"
    fresh = WorkerPayout.objects.get()
    assert fresh.signature != stale.signature
    with usdc.rpc() as rpc, pytest.raises(Exception, match="(?i)blockhash"):
        rpc.send_transaction(Transaction.from_bytes(base64.b64decode(stale.raw_transaction)))
    assert payout_progress(payout_id=payout.id, chain=chain) == "paid"
    assert _received(usdc, earning_worker) == 2_100_000
