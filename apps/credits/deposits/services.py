"""Buying credits with USDC: purchase references, the chain watcher, crediting once per signature.

POST /credits/buy -> deposit_reference_create: a fresh Solana Pay reference key. The buyer's
wallet sends a TransferChecked carrying it to the node's USDC account. deposits_scan (Celery, every
few seconds) asks the RPC for each watched reference's signatures, fetches each new one at the
configured commitment, checks it (solana/verify.py) and deposit_record credits it exactly once.
"""

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from solders.pubkey import Pubkey
from solders.signature import Signature

from ..ledger import EXTERNAL_USDC_CODE, Leg, ledger_post, system_account
from ..models import Deposit, DepositReference, DepositStatus
from ..services import user_account
from ..solana.pay import USDC_DECIMALS, new_reference
from ..solana.rpc import RpcError, SolanaRpc, rpc_client, status_reaches
from ..solana.tokens import TOKEN_PROGRAM_ID, associated_token_address
from ..solana.verify import Verdict, deposit_verdict
from .selectors import deposit_references_watched

log = logging.getLogger(__name__)

MEMO_PREFIX = "peercycles:"


class DepositsUnavailable(Exception):
    """This node takes no USDC deposits: no receiving wallet (PEER_PAY_TO) or a malformed address."""


@dataclass(frozen=True)
class DepositConfig:
    recipient: Pubkey        # PEER_PAY_TO, the wallet
    mint: Pubkey             # PEER_USDC_MINT
    token_account: Pubkey    # the wallet's associated USDC account: where deposits land
    commitment: str          # PEER_DEPOSIT_COMMITMENT


def deposit_config() -> DepositConfig:
    if not settings.PEER_PAY_TO:
        raise DepositsUnavailable("This node has no receiving wallet (PEER_PAY_TO): buying credits with USDC is off.")
    try:
        recipient, mint = Pubkey.from_string(settings.PEER_PAY_TO), Pubkey.from_string(settings.PEER_USDC_MINT)
        token_program = Pubkey.from_string(getattr(settings, "PEER_USDC_TOKEN_PROGRAM", str(TOKEN_PROGRAM_ID)))
        token_account = associated_token_address(owner=recipient, mint=mint, token_program=token_program)
    except ValueError as exc:
        raise DepositsUnavailable(f"This node's Solana addresses are malformed: {exc}") from exc
    return DepositConfig(recipient=recipient, mint=mint, token_account=token_account,
                         commitment=settings.PEER_DEPOSIT_COMMITMENT)


def deposit_reference_create(*, user, micro_usdc: int, now: datetime | None = None) -> DepositReference:
    """A new purchase of `micro_usdc` for `user`: its reference key, memo and expiry."""
    if micro_usdc <= 0:
        raise ValueError("a purchase is positive")
    key = str(new_reference())
    now = now or timezone.now()
    ttl = getattr(settings, "PEER_DEPOSIT_TTL_SECONDS", 3600)
    return DepositReference.objects.create(key=key, user=user, micro_usdc=micro_usdc, memo=MEMO_PREFIX + key,
                                           expires_at=now + timedelta(seconds=ttl))


def deposit_record(*, reference: DepositReference, signature: str, verdict: Verdict,
                   slot: int | None = None) -> tuple[Deposit, bool]:
    """Record what one signature found under `reference` is, and credit it if it is a deposit.

    Opens its own durable transaction. The Deposit row is inserted first, as the claim: a
    concurrent caller with the same signature blocks on the unique index until this commits, then
    gets the committed row back (created False) and credits nothing. The credit is one ledger
    transaction external:solana:USDC -> user, idempotency key `deposit:<signature>`; it locks
    those two ledger accounts (ascending id).
    """
    external, account = system_account(EXTERNAL_USDC_CODE), user_account(user=reference.user)
    status = DepositStatus.CREDITED if verdict.credit else DepositStatus.REJECTED
    with transaction.atomic(durable=True):
        try:
            with transaction.atomic():
                deposit = Deposit.objects.create(
                    signature=signature, reference=reference, status=status, micro_usdc=verdict.amount,
                    reason=verdict.reason[:300], payer=verdict.payer[:44], memo=verdict.memo[:200], slot=slot)
        except IntegrityError:
            return Deposit.objects.get(signature=signature), False
        if verdict.credit:
            deposit.ledger_transaction = ledger_post(
                kind="deposit", idempotency_key=f"deposit:{signature}", reference=f"deposit:{reference.key}",
                memo=f"USDC deposit {signature}", legs=[Leg(external, -verdict.amount), Leg(account, verdict.amount)])
            deposit.save(update_fields=["ledger_transaction"])
    if verdict.credit:
        log.info("deposit %s credited %s micro-USDC to user %s", signature, verdict.amount, reference.user_id)
    else:
        log.info("deposit %s under %s rejected: %s", signature, reference.key, verdict.reason)
    return deposit, True


@dataclass
class ScanReport:
    credited: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)   # seen, not yet at the commitment: next scan
    errors: list[str] = field(default_factory=list)


def deposits_scan(*, rpc: SolanaRpc | None = None, now: datetime | None = None) -> ScanReport:
    """Look for new transfers under every watched reference and record each new signature once.

    Safe to run twice, and at once: every outcome goes through deposit_record's claim. RPC calls
    happen outside database transactions. An RPC failure for one reference is logged and the
    scan goes on with the next; that reference is looked at again next time.
    """
    report = ScanReport()
    try:
        config = deposit_config()
    except DepositsUnavailable as exc:
        report.errors.append(str(exc))
        return report
    references = list(deposit_references_watched(now=now or timezone.now()))
    with contextlib.ExitStack() as stack:
        client = rpc or stack.enter_context(rpc_client(commitment=config.commitment))
        for reference in references:
            try:
                _scan_reference(client, config, reference, report)
            except RpcError as exc:
                log.warning("deposit scan of %s failed: %s", reference.key, exc)
                report.errors.append(f"{reference.key}: {exc}")
    return report


def _scan_reference(client: SolanaRpc, config: DepositConfig, reference: DepositReference,
                    report: ScanReport) -> None:
    entries = client.history(Pubkey.from_string(reference.key))
    signatures = [str(entry.signature) for entry in entries]
    known = set(Deposit.objects.filter(signature__in=signatures).values_list("signature", flat=True))
    for entry, signature in reversed(list(zip(entries, signatures))):  # oldest first
        if signature in known:
            continue
        landed = None
        if status_reaches(entry, config.commitment):
            landed = client.transaction(Signature.from_string(signature))
        if landed is None or landed.transaction.meta is None:  # not final yet, or this RPC node lags: next scan
            report.waiting.append(signature)
            continue
        verdict = deposit_verdict(tx=landed.transaction.transaction, meta=landed.transaction.meta,
                                  mint=config.mint, destination=config.token_account,
                                  reference=Pubkey.from_string(reference.key), requested=reference.micro_usdc,
                                  decimals=USDC_DECIMALS)
        deposit, created = deposit_record(reference=reference, signature=signature, verdict=verdict,
                                          slot=landed.slot)
        if created:
            (report.credited if deposit.status == DepositStatus.CREDITED else report.rejected).append(signature)
