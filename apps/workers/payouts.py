"""Worker payouts: earnings above a threshold leave the ledger as SPL USDC transfers signed by
the node's hot wallet (PEER_PAYOUT_KEYPAIR) and sent through Solana RPC.

Ledger: open   worker:<id>:USDC -> system:payouts_pending:USDC
        paid   system:payouts_pending:USDC -> external:solana:USDC   (only once finalized)
        failed system:payouts_pending:USDC -> worker:<id>:USDC        (a reversal)

Crash safety: a payout's signed transaction and signature are recorded *before* it is sent. A
retry first asks the chain about that signature: landed -> confirm; failed -> reverse; unknown
and its blockhash still valid -> resend the same bytes (the chain drops a duplicate); unknown and
expired -> it can never land, so a new transaction is built. Nothing is ever paid twice.
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.credits.ledger import EXTERNAL_USDC_CODE, PAYOUTS_PENDING_CODE, Leg, ledger_post, system_account
from apps.credits.models import LedgerAccount
from apps.credits.services import worker_account

from .models import Worker, WorkerPayout

logger = logging.getLogger(__name__)
CLAIM_SECONDS = 60
USDC_DECIMALS = 6


@dataclass(frozen=True)
class ChainStatus:
    found: bool
    finalized: bool = False
    error: str = ""


def payouts_open(*, threshold: int) -> list[WorkerPayout]:
    """Open one payout per worker whose unpaid earnings reach `threshold` and who has no payout
    in flight. Locks the worker row, then its ledger accounts."""
    opened = []
    floor = max(threshold, 1)  # a payout of nothing is no payout, whatever the threshold says
    candidates = LedgerAccount.objects.filter(code__startswith="worker:", kind="worker", balance__gte=floor)
    for account in candidates:
        worker_id = account.code.split(":")[1]
        with transaction.atomic(durable=True):
            worker = Worker.objects.select_for_update().filter(id=worker_id).exclude(payout_address="").first()
            if worker is None or worker.payouts.filter(state__in=["pending", "sent"]).exists():
                continue
            balance = LedgerAccount.objects.get(id=account.id).balance
            if balance < floor:
                continue
            payout = WorkerPayout.objects.create(worker=worker, address=worker.payout_address, amount=balance)
            ledger_post(kind="payout", reference=f"payout:{payout.id}", idempotency_key=f"payout:{payout.id}:open",
                        legs=[Leg(worker_account(worker=worker), -balance),
                              Leg(system_account(PAYOUTS_PENDING_CODE), balance)])
        opened.append(payout)
    return opened


def payout_claim(*, payout_id) -> bool:
    """Claim a payout for one task run (a conditional update: concurrent runs skip it)."""
    now = timezone.now()
    return WorkerPayout.objects.filter(id=payout_id, state__in=["pending", "sent"]).exclude(
        claimed_until__gt=now).update(claimed_until=now + timezone.timedelta(seconds=CLAIM_SECONDS),
                                      attempts=F("attempts") + 1) == 1


def payout_release_claim(*, payout_id) -> None:
    WorkerPayout.objects.filter(id=payout_id).update(claimed_until=None)


def payout_record_sent(*, payout_id, previous_signature: str, signature: str, raw_transaction: str,
                       last_valid_block_height: int) -> bool:
    """Record the signed transaction before it is sent; a conditional update on the signature
    the caller saw, so two runs can never both record (and send) a transaction."""
    return WorkerPayout.objects.filter(id=payout_id, signature=previous_signature).update(
        state=WorkerPayout.State.SENT, signature=signature, raw_transaction=raw_transaction,
        last_valid_block_height=last_valid_block_height) == 1


def payout_mark_paid(*, payout_id) -> bool:
    """Finalized on chain: the USDC has left the ledger. Exactly once (conditional update)."""
    with transaction.atomic(durable=True):
        payout = WorkerPayout.objects.select_for_update().get(id=payout_id)
        if payout.state != WorkerPayout.State.SENT:
            return False
        ledger_post(kind="payout_confirm", reference=f"payout:{payout.id}", idempotency_key=f"payout:{payout.id}:paid",
                    legs=[Leg(system_account(PAYOUTS_PENDING_CODE), -payout.amount),
                          Leg(system_account(EXTERNAL_USDC_CODE), payout.amount)])
        payout.state, payout.claimed_until = WorkerPayout.State.PAID, None
        payout.save(update_fields=["state", "claimed_until", "updated_at"])
    return True


def payout_mark_failed(*, payout_id, error: str) -> bool:
    """The transfer failed on chain: give the earnings back to the worker (a reversal)."""
    with transaction.atomic(durable=True):
        payout = WorkerPayout.objects.select_for_update().select_related("worker").get(id=payout_id)
        if payout.state not in (WorkerPayout.State.PENDING, WorkerPayout.State.SENT):
            return False
        ledger_post(kind="payout_reversal", reference=f"payout:{payout.id}",
                    idempotency_key=f"payout:{payout.id}:reversal",
                    legs=[Leg(system_account(PAYOUTS_PENDING_CODE), -payout.amount),
                          Leg(worker_account(worker=payout.worker), payout.amount)])
        payout.state, payout.error, payout.claimed_until = WorkerPayout.State.FAILED, error[:300], None
        payout.save(update_fields=["state", "error", "claimed_until", "updated_at"])
    return True


def payout_progress(*, payout_id, chain) -> str:
    """Move one payout forward by one step; safe to run any number of times, concurrently.

    `chain` is a PayoutChain (apps.workers.solana_payouts): status, block height, build, send.
    Returns what happened, for logs and tests.
    """
    if not payout_claim(payout_id=payout_id):
        return "claimed elsewhere"
    try:
        payout = WorkerPayout.objects.get(id=payout_id)
        if payout.signature:
            status = chain.status(payout.signature)
            if status.found and status.error:
                payout_mark_failed(payout_id=payout.id, error=status.error)
                return "failed"
            if status.found:
                return "paid" if status.finalized and payout_mark_paid(payout_id=payout.id) else "waiting"
            if chain.block_height() <= (payout.last_valid_block_height or 0):
                chain.send(payout.raw_transaction)
                return "resent"
        signed = chain.build_transfer(destination_owner=payout.address, amount=payout.amount,
                                      memo=f"peer-cycles payout {payout.id}")
        if not payout_record_sent(payout_id=payout.id, previous_signature=payout.signature,
                                  signature=signed.signature, raw_transaction=signed.raw_base64,
                                  last_valid_block_height=signed.last_valid_block_height):
            return "raced"
        chain.send(signed.raw_base64)
        return "sent"
    finally:
        payout_release_claim(payout_id=payout_id)


def payouts_run(*, chain, threshold: int | None = None) -> dict[str, int]:
    """The Celery beat step: open payouts, then move every open one forward."""
    payouts_open(threshold=settings.PEER_PAYOUT_THRESHOLD if threshold is None else threshold)
    outcomes: dict[str, int] = {}
    for payout_id in WorkerPayout.objects.filter(state__in=["pending", "sent"]).values_list("id", flat=True):
        try:
            outcome = payout_progress(payout_id=payout_id, chain=chain)
        except Exception as exc:  # one payout's RPC trouble must not stop the others
            logger.exception("payout %s: %s", payout_id, exc)
            WorkerPayout.objects.filter(id=payout_id).update(error=str(exc)[:300])  # for the treasury console
            outcome = "error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes

