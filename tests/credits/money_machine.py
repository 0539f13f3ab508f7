"""A model of the node's money, and a Hypothesis state machine that drives the real services
against it (test_money_properties.py runs it).

The model is every ledger account's expected balance, by code, plus the few records a service
decides with (open holds, payouts, unstake requests, closed epochs). Every rule calls one real
service with arguments that include the edges (0, 1, exactly the balance, one more than it,
absurdly large); a refused call must raise the service's own exception and move nothing, which
the balance comparison after every step proves.

Each example runs in its own savepoint, rolled back in teardown, so examples never see each
other's users, workers, payouts or epochs (payouts_open and epoch_close read every row).
"""

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Sum
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from apps.credits.deposits.services import deposit_record, deposit_reference_create
from apps.credits.ledger import (
    EXTERNAL_USDC_CODE, MAX_AMOUNT, PAYOUTS_PENDING_CODE, PEER_BURNED_CODE, PEER_ISSUER_CODE, PROMO_CODE,
    STAKERS_POOL_CODE, TREASURY_CODE, IdempotencyConflict, InsufficientFunds, LedgerError)
from apps.credits.models import (
    AccountKind, Asset, Deposit, DepositStatus, LedgerAccount, LedgerTransaction, X402Payment)
from apps.credits.pricing import (
    MICRO_PER_CREDIT, STAKERS_SHARE_OF_MARGIN_PERCENT, VALIDATOR_SHARE_PERCENT, WORKER_SHARE_PERCENT)
from apps.credits.selectors import ledger_invariant_violations
from apps.credits.services import (
    credits_grant, credits_hold_in_atomic, credits_settle_in_atomic, validator_pay_for_reexecution)
from apps.credits.solana.verify import Verdict
from apps.credits.x402 import PaymentRejected, _credit
from apps.staking.codes import PEER_TREASURY_CODE, bond_code, liquid_code, staked_code, unbonding_code, unstaking_code
from apps.staking.models import UnstakeRequest
from apps.staking.services import (
    AlreadyClaimed, CooldownNotOver, NothingToClaim, SlashExceedsBond, StakingError, bond_lock, bond_release,
    bond_slash, epoch_close, peer_grant, peer_mint_initial_supply, peer_stake, unstake_claim, unstake_request)
from apps.workers.models import WorkerPayout
from apps.workers.payouts import payout_mark_failed, payout_mark_paid, payout_record_sent, payouts_open
from apps.workers.services import worker_register

PEER = 10**9
START = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)

# The cast of one example: u0 buys, u1 and u2 operate workers (u1 two of them), anyone may
# challenge a slash. w1 has no payout address, so payouts must pass it by.
USERS = 3
WORKERS = ((1, True), (1, False), (2, True))   # (operator, has a payout address)

users = st.integers(0, USERS - 1)
workers = st.integers(0, len(WORKERS) - 1)
picks = st.integers(0, 10**6)   # which earlier job / payout / request, modulo how many there are
# An amount is drawn against the balance it takes from: a percentage of it (100: all of it), one
# (or far) more than it, or a number that ignores it: 0, 1, past the ledger's limit, or any.
numbers = st.one_of(st.sampled_from((0, 1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**62)), st.integers(0, 10**13))
amounts = st.one_of(st.tuples(st.just("percent"), st.integers(1, 100)), st.tuples(st.just("above"), numbers),
                    st.tuples(st.just("any"), numbers))
credited_amounts = st.one_of(st.just(1), st.integers(1, 10**12))   # what a verified transfer carries
grants = st.one_of(st.sampled_from((0, 1, 2**60)), st.integers(0, 10**8))
thresholds = st.one_of(st.sampled_from((0, 1, 10**18)), st.integers(0, 10**8))


def amount_of(amount: tuple[str, int], available: int) -> int:
    mode, number = amount
    if mode == "percent":
        return available * number // 100
    if mode == "above":
        return available + 1 + number
    return number


def split(charge: int) -> tuple[int, int, int]:
    """The 70 / 24 / 6 capture split of docs/money.md, computed here independently of pricing.py."""
    worker = charge * WORKER_SHARE_PERCENT // 100
    stakers = (charge - worker) * STAKERS_SHARE_OF_MARGIN_PERCENT // 100
    return worker, stakers, charge - worker - stakers


def refused_as(amount: int):
    """What the ledger answers an amount it cannot take: too large for it, else not enough funds."""
    return pytest.raises(LedgerError) if amount > MAX_AMOUNT else pytest.raises(InsufficientFunds)


class MoneyMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Django's TestCase marks its own atomic blocks like this; a durable block (every service
        # opens one) is allowed only directly inside such a block, so this savepoint must be one.
        self._savepoint = transaction.atomic()
        self._savepoint._from_testcase = True
        self._savepoint.__enter__()
        self.balances = defaultdict(int)          # ledger account code -> expected balance
        self.now = START
        self.minted = False
        self.burned_before = 0
        self.deposits, self.x402s, self.validations, self.slashes = [], [], [], []
        self.jobs = []          # {"user", "reference", "amount", "charge", "worker"}; charge None while held
        self.payouts = {}       # id -> {"worker", "amount", "state", "signature"}
        self.requests = {}      # id -> {"user", "worker", "amount", "slashed", "state", "available_at"}
        self.closed_epochs = set()
        self.users = [get_user_model().objects.create(username=f"money-{i}") for i in range(USERS)]
        self.workers = []
        for operator, has_address in WORKERS:
            worker, _ = worker_register(operator=self.users[operator], name=f"gpu-{len(self.workers)}",
                                        tiers=["open", "verified"])
            if has_address:
                worker.payout_address = f"Payout{len(self.workers)}Wallet"
                worker.save(update_fields=["payout_address"])
            self.workers.append(worker)

    def teardown(self):
        transaction.set_rollback(True)
        self._savepoint.__exit__(None, None, None)

    # --- the model's accounts -------------------------------------------------------------

    def move(self, source: str, destination: str, amount: int) -> None:
        self.balances[source] -= amount
        self.balances[destination] += amount

    def credits(self, who: int) -> str:
        return f"user:{self.users[who].pk}:USDC"

    def held(self, who: int) -> str:
        return f"user:{self.users[who].pk}:held:USDC"

    def earnings(self, which: int) -> str:
        return f"worker:{self.workers[which].pk}:USDC"

    def operator(self, which: int) -> int:
        return WORKERS[which][0]

    def unique(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex}"

    # --- a start with money in it (or none: the amounts may be 0) -----------------------------

    @initialize(amounts=st.lists(st.integers(0, 10**10), min_size=USERS, max_size=USERS))
    def users_bought_credits(self, amounts):
        """Without money to start from, most sequences would only ever be refused."""
        for who, amount in enumerate(amounts):
            if amount:
                self.deposit(who, asked=amount, arrived=amount, credited=True)

    @initialize(amounts=st.lists(st.integers(0, 10**5 * PEER), min_size=USERS, max_size=USERS))
    def users_were_granted_peer(self, amounts):
        for who, amount in enumerate(amounts):
            if amount:
                self.peer_granted(who, ("any", amount))

    # --- USDC entering: deposits, x402 payments, promotional grants -------------------------

    @rule(who=users, asked=credited_amounts, arrived=credited_amounts, credited=st.booleans())
    def deposit(self, who, asked, arrived, credited):
        """A verified transfer is credited what arrived (not what was asked); a refused one nothing."""
        reference = deposit_reference_create(user=self.users[who], micro_usdc=asked, now=self.now)
        verdict = Verdict(credit=credited, amount=arrived if credited else 0,
                          reason="" if credited else "not a TransferChecked to this node", payer="BuyerWallet")
        signature = self.unique("sig")
        deposit, created = deposit_record(reference=reference, signature=signature, verdict=verdict, slot=1)
        assert created and deposit.status == (DepositStatus.CREDITED if credited else DepositStatus.REJECTED)
        if credited:
            self.move(EXTERNAL_USDC_CODE, self.credits(who), arrived)
        self.deposits.append((reference, signature, verdict))

    @precondition(lambda self: self.deposits)
    @rule(pick=picks)
    def deposit_seen_again(self, pick):
        reference, signature, verdict = self.deposits[pick % len(self.deposits)]
        _, created = deposit_record(reference=reference, signature=signature, verdict=verdict, slot=2)
        assert not created

    @rule(who=users, amount=credited_amounts)
    def x402_payment(self, who, amount):
        signature = self.unique("x402sig")
        _credit(user=self.users[who], signature=signature, payer="PayerWallet", amount=amount)
        self.move(EXTERNAL_USDC_CODE, self.credits(who), amount)
        self.x402s.append((who, signature, amount))

    @precondition(lambda self: self.x402s)
    @rule(pick=picks)
    def x402_payment_replayed(self, pick):
        who, signature, amount = self.x402s[pick % len(self.x402s)]
        with pytest.raises(PaymentRejected):
            _credit(user=self.users[who], signature=signature, payer="PayerWallet", amount=amount)

    @rule(who=users, credits=grants)
    def promo_grant(self, who, credits):
        amount = credits * MICRO_PER_CREDIT
        if credits <= 0:
            with pytest.raises(ValueError):
                credits_grant(user=self.users[who], credits=credits)
            return
        if amount > MAX_AMOUNT:
            with pytest.raises(LedgerError):
                credits_grant(user=self.users[who], credits=credits)
            return
        credits_grant(user=self.users[who], credits=credits)
        self.move(PROMO_CODE, self.credits(who), amount)

    # --- jobs: hold, capture or refund, exactly once -----------------------------------------

    @rule(who=users, amount=amounts)
    def hold(self, who, amount):
        amount = amount_of(amount, self.balances[self.credits(who)]) or 1
        reference = f"job:{uuid.uuid4()}"
        if amount > self.balances[self.credits(who)]:
            with refused_as(amount), transaction.atomic(durable=True):
                credits_hold_in_atomic(user=self.users[who], amount=amount, reference=reference)
            return
        with transaction.atomic(durable=True):
            credits_hold_in_atomic(user=self.users[who], amount=amount, reference=reference)
        self.move(self.credits(who), self.held(who), amount)
        self.jobs.append({"user": who, "reference": reference, "amount": amount, "charge": None, "worker": None})

    @precondition(lambda self: self.jobs)
    @rule(pick=picks)
    def hold_replayed(self, pick):
        job = self.jobs[pick % len(self.jobs)]
        with transaction.atomic(durable=True):
            credits_hold_in_atomic(user=self.users[job["user"]], amount=job["amount"], reference=job["reference"])

    @precondition(lambda self: any(job["charge"] is None for job in self.jobs))
    @rule(pick=picks, amount=amounts, which=workers)
    def settle(self, pick, amount, which):
        """Capture `charge` of the hold (0 is a refund); more than the hold is refused."""
        open_jobs = [job for job in self.jobs if job["charge"] is None]
        job = open_jobs[pick % len(open_jobs)]
        charge = amount_of(amount, job["amount"])
        worker = self.workers[which] if charge else None
        call = dict(user=self.users[job["user"]], held_amount=job["amount"], charge=charge, worker=worker,
                    reference=job["reference"])
        if charge > job["amount"]:
            with pytest.raises(LedgerError), transaction.atomic(durable=True):
                credits_settle_in_atomic(**call)
            return
        event(f"settled charge>0={charge>0}")
        with transaction.atomic(durable=True):
            credits_settle_in_atomic(**call)
        self.move(self.held(job["user"]), self.credits(job["user"]), job["amount"] - charge)
        to_worker, to_stakers, to_treasury = split(charge)
        self.move(self.held(job["user"]), self.earnings(which), to_worker)
        self.move(self.held(job["user"]), STAKERS_POOL_CODE, to_stakers)
        self.move(self.held(job["user"]), TREASURY_CODE, to_treasury)
        job["charge"], job["worker"] = charge, which

    @precondition(lambda self: any(job["charge"] is not None for job in self.jobs))
    @rule(pick=picks, same=st.booleans())
    def settle_again(self, pick, same):
        """The relay and the reaper may both settle a job: the second is the first's answer, or a
        conflict when it asks for another charge; never a second movement."""
        settled = [job for job in self.jobs if job["charge"] is not None]
        job = settled[pick % len(settled)]
        charge = job["charge"] if same else (job["charge"] + 1) % (job["amount"] + 1)
        worker = self.workers[job["worker"]] if charge else None
        call = dict(user=self.users[job["user"]], held_amount=job["amount"], charge=charge, worker=worker,
                    reference=job["reference"])
        if charge == job["charge"]:
            with transaction.atomic(durable=True):
                txn = credits_settle_in_atomic(**call)
            assert txn.kind == ("capture" if charge else "refund")
        else:
            with pytest.raises(IdempotencyConflict), transaction.atomic(durable=True):
                credits_settle_in_atomic(**call)

    @rule(which=workers, price=numbers)
    def validator_paid(self, which, price):
        """A validator's re-execution is paid from the treasury, or refused while it cannot."""
        pay = price * VALIDATOR_SHARE_PERCENT // 100
        reference = self.unique("validation:")
        if pay > self.balances[TREASURY_CODE]:
            with refused_as(pay):
                validator_pay_for_reexecution(validator=self.workers[which], job_price=price, reference=reference)
            return
        validator_pay_for_reexecution(validator=self.workers[which], job_price=price, reference=reference)
        self.move(TREASURY_CODE, self.earnings(which), pay)
        self.validations.append((which, price, reference))

    @precondition(lambda self: self.validations)
    @rule(pick=picks)
    def validator_paid_again(self, pick):
        which, price, reference = self.validations[pick % len(self.validations)]
        validator_pay_for_reexecution(validator=self.workers[which], job_price=price, reference=reference)

    # --- payouts: open, sent, paid or failed ------------------------------------------------

    @rule(threshold=thresholds)
    def payouts_opened(self, threshold):
        """One payout per worker with an address, none in flight, and earnings (never zero) at
        or above the threshold; it takes all of the earnings."""
        in_flight = {p["worker"] for p in self.payouts.values() if p["state"] in ("pending", "sent")}
        expected = {which: self.balances[self.earnings(which)] for which, (_, has_address) in enumerate(WORKERS)
                    if has_address and which not in in_flight
                    and self.balances[self.earnings(which)] >= max(threshold, 1)}
        opened = payouts_open(threshold=threshold)
        index = {worker.pk: which for which, worker in enumerate(self.workers)}
        assert {index[p.worker_id]: p.amount for p in opened} == expected
        event(f"payouts opened {len(opened)}")
        for payout in opened:
            which = index[payout.worker_id]
            self.move(self.earnings(which), PAYOUTS_PENDING_CODE, payout.amount)
            self.payouts[payout.id] = {"worker": which, "amount": payout.amount, "state": "pending", "signature": ""}

    def _payout(self, pick):
        ids = sorted(self.payouts)
        return ids[pick % len(ids)]

    @precondition(lambda self: self.payouts)
    @rule(pick=picks, stale=st.booleans())
    def payout_sent(self, pick, stale):
        """Recording a transaction needs the signature the caller last saw; a payout that is paid
        or failed is over, and no new transaction may be recorded (and sent) for it."""
        payout_id = self._payout(pick)
        payout = self.payouts[payout_id]
        previous = "a-stale-signature" if stale else payout["signature"]
        signature = self.unique("payoutsig")
        recorded = payout_record_sent(payout_id=payout_id, previous_signature=previous, signature=signature,
                                      raw_transaction="AQID", last_valid_block_height=1_000)
        expected = not stale and payout["state"] in ("pending", "sent")
        event(f"record_sent on {payout['state']} stale={stale}")
        assert recorded == expected, f"payout {payout['state']}, stale={stale}: recorded={recorded}"
        if recorded:
            payout["state"], payout["signature"] = "sent", signature

    @precondition(lambda self: self.payouts)
    @rule(pick=picks)
    def payout_finalized(self, pick):
        payout_id = self._payout(pick)
        payout = self.payouts[payout_id]
        assert payout_mark_paid(payout_id=payout_id) == (payout["state"] == "sent")
        if payout["state"] == "sent":
            self.move(PAYOUTS_PENDING_CODE, EXTERNAL_USDC_CODE, payout["amount"])
            payout["state"] = "paid"

    @precondition(lambda self: self.payouts)
    @rule(pick=picks)
    def payout_failed(self, pick):
        payout_id = self._payout(pick)
        payout = self.payouts[payout_id]
        in_flight = payout["state"] in ("pending", "sent")
        assert payout_mark_failed(payout_id=payout_id, error="InstructionError") == in_flight
        if in_flight:
            self.move(PAYOUTS_PENDING_CODE, self.earnings(payout["worker"]), payout["amount"])
            payout["state"] = "failed"

    # --- $PEER: supply, grants, stakes, bonds, slashes ----------------------------------------

    def _mint(self) -> None:
        if not self.minted:
            self.move(PEER_ISSUER_CODE, PEER_TREASURY_CODE, settings.PEER_INITIAL_SUPPLY)
            self.minted = True

    @rule()
    def peer_minted(self):
        peer_mint_initial_supply()
        self._mint()

    @rule(who=users, amount=amounts)
    def peer_granted(self, who, amount):
        treasury = self.balances[PEER_TREASURY_CODE] if self.minted else settings.PEER_INITIAL_SUPPLY
        amount = amount_of(amount, treasury)
        if amount <= 0:
            with pytest.raises(ValueError):
                peer_grant(user=self.users[who], amount=amount)
            return
        if amount > treasury:
            with refused_as(amount):   # and the genesis it would have minted first is undone too
                peer_grant(user=self.users[who], amount=amount)
            return
        peer_grant(user=self.users[who], amount=amount)
        self._mint()
        self.move(PEER_TREASURY_CODE, liquid_code(self.users[who].pk), amount)

    def _peer_move(self, call, source: str, destination: str, amount: tuple[str, int]):
        """Run a $PEER movement of an amount drawn against `source`; returns its result or None."""
        amount = amount_of(amount, self.balances[source])
        if amount <= 0:
            with pytest.raises(ValueError):
                call(amount)
            return None, amount
        if amount > self.balances[source]:
            with refused_as(amount):
                call(amount)
            return None, amount
        result = call(amount)
        self.move(source, destination, amount)
        return result, amount

    @rule(who=users, amount=amounts)
    def staked(self, who, amount):
        user = self.users[who]
        self._peer_move(lambda amount: peer_stake(user=user, amount=amount),
                        liquid_code(user.pk), staked_code(user.pk), amount)

    @rule(who=users, amount=amounts)
    def unstake_requested(self, who, amount):
        user = self.users[who]
        request, amount = self._peer_move(lambda amount: unstake_request(user=user, amount=amount, now=self.now),
                                          staked_code(user.pk), unstaking_code(user.pk), amount)
        if request is not None:
            self._track_request(request, who, None, amount)

    @rule(which=workers, amount=amounts)
    def bond_locked(self, which, amount):
        worker = self.workers[which]
        self._peer_move(lambda amount: bond_lock(worker=worker, amount=amount),
                        liquid_code(worker.operator_id), bond_code(worker.pk), amount)

    @rule(which=workers, amount=amounts)
    def bond_released(self, which, amount):
        worker = self.workers[which]
        request, amount = self._peer_move(lambda amount: bond_release(worker=worker, amount=amount, now=self.now),
                                          bond_code(worker.pk), unbonding_code(worker.pk), amount)
        if request is not None:
            self._track_request(request, self.operator(which), which, amount)

    def _track_request(self, request, who: int, which: int | None, amount: int) -> None:
        available_at = self.now + timedelta(seconds=settings.PEER_UNSTAKE_COOLDOWN_SECONDS)
        assert (request.amount, request.available_at, request.state) == (amount, available_at, "pending")
        self.requests[request.id] = {"user": who, "worker": which, "amount": amount, "slashed": 0,
                                     "state": "pending", "available_at": available_at}

    @precondition(lambda self: self.requests)
    @rule(pick=picks, by_owner=st.booleans())
    def unstake_claimed(self, pick, by_owner):
        """Paid once, after the cooldown, to its owner only, of what slashes left of it."""
        request_id = sorted(self.requests)[pick % len(self.requests)]
        request = self.requests[request_id]
        who = request["user"] if by_owner else (request["user"] + 1) % USERS
        claim = dict(user=self.users[who], request_id=request_id, now=self.now)
        refusal = (UnstakeRequest.DoesNotExist if not by_owner else AlreadyClaimed if request["state"] == "claimed"
                   else NothingToClaim if request["state"] == "slashed"
                   else CooldownNotOver if self.now < request["available_at"] else None)
        if refusal is not None:
            with pytest.raises(refusal):
                unstake_claim(**claim)
            return
        event(f"claim paid {request['worker'] is None} slashed={request['slashed']>0}")
        unstake_claim(**claim)
        user_pk = self.users[who].pk
        source = unstaking_code(user_pk) if request["worker"] is None else unbonding_code(self.workers[request["worker"]].pk)
        self.move(source, liquid_code(user_pk), request["amount"] - request["slashed"])
        request["state"] = "claimed"

    @rule(which=workers, amount=amounts, challenger=st.none() | users)
    def slashed(self, which, amount, challenger):
        """A fault takes the locked bond first, then releases still cooling down (newest first);
        half to a challenger who is not the operator, the rest burned. Never more than there is."""
        worker = self.workers[which]
        bond, unbonding = bond_code(worker.pk), unbonding_code(worker.pk)
        amount = amount_of(amount, self.balances[bond] + self.balances[unbonding])
        key = self.unique("fault:")
        call = dict(worker=worker, amount=amount, reason="wrong output",
                    challenger=None if challenger is None else self.users[challenger], idempotency_key=key)
        refusal = (ValueError if amount <= 0 else StakingError if challenger == self.operator(which)
                   else SlashExceedsBond if amount > self.balances[bond] + self.balances[unbonding] else None)
        if refusal is not None:
            with pytest.raises(refusal):
                bond_slash(**call)
            return
        event(f"slash ok from_unbonding={amount > self.balances[bond]}")
        bond_slash(**call)
        self._take_from_bond(which, amount)
        to_challenger = amount * settings.PEER_SLASH_CHALLENGER_PERCENT // 100 if challenger is not None else 0
        if to_challenger:
            self.move(PEER_BURNED_CODE, liquid_code(self.users[challenger].pk), to_challenger)
        self.slashes.append(call)

    def _take_from_bond(self, which: int, amount: int) -> None:
        worker = self.workers[which]
        from_bond = min(amount, self.balances[bond_code(worker.pk)])
        self.move(bond_code(worker.pk), PEER_BURNED_CODE, from_bond)
        self.move(unbonding_code(worker.pk), PEER_BURNED_CODE, amount - from_bond)
        rest = amount - from_bond
        for request_id in sorted(self.requests, reverse=True):
            request = self.requests[request_id]
            if rest <= 0:
                break
            if request["worker"] == which and request["state"] == "pending":
                take = min(request["amount"] - request["slashed"], rest)
                request["slashed"] += take
                rest -= take
                if request["slashed"] == request["amount"]:
                    request["state"] = "slashed"

    @precondition(lambda self: self.slashes)
    @rule(pick=picks)
    def slash_replayed(self, pick):
        call = self.slashes[pick % len(self.slashes)]
        assert bond_slash(**call).idempotency_key == call["idempotency_key"]

    # --- time and epochs ----------------------------------------------------------------------

    @rule(seconds=st.sampled_from((1, 59, 3599, 3600, 7 * 24 * 3600 - 1, 7 * 24 * 3600, 3 * 86400)))
    def time_passes(self, seconds):
        self.now += timedelta(seconds=seconds)

    @rule()
    def epoch_closed(self):
        """The pool is paid to stakers pro rata to their stake, each share floored, once an epoch."""
        number = int(self.now.timestamp()) // settings.PEER_EPOCH_SECONDS - 1
        epoch = epoch_close(now=self.now)
        assert epoch.number == number
        if number in self.closed_epochs:
            return
        self.closed_epochs.add(number)
        stakes = {who: self.balances[staked_code(user.pk)] for who, user in enumerate(self.users)
                  if self.balances[staked_code(user.pk)] > 0}
        pool, total = self.balances[STAKERS_POOL_CODE], sum(stakes.values())
        shares = {who: pool * stake // total for who, stake in stakes.items()} if total else {}
        event(f"epoch stakers={len(shares)} pool>0={pool>0}")
        for who, share in shares.items():
            self.move(STAKERS_POOL_CODE, self.credits(who), share)
        assert (epoch.pool_amount, epoch.distributed) == (pool, sum(shares.values()))

    # --- after every step ---------------------------------------------------------------------

    @invariant()
    def the_ledger_is_sound(self):
        assert ledger_invariant_violations() == []

    @invariant()
    def every_balance_is_what_the_model_expects(self):
        actual = dict(LedgerAccount.objects.values_list("code", "balance"))
        codes = set(actual) | {code for code, balance in self.balances.items() if balance}
        assert {c: actual.get(c, 0) for c in codes} == {c: self.balances[c] for c in codes}
        negative = LedgerAccount.objects.filter(allow_negative=False, balance__lt=0)
        assert not negative.exists(), list(negative.values_list("code", "balance"))

    @invariant()
    def every_usdc_that_entered_is_somewhere(self):
        """USDC in (deposits + x402 + promo grants) = credits (spendable + held) + worker earnings
        + payouts pending + payouts paid + stakers' pool + treasury."""
        usdc = dict(LedgerAccount.objects.filter(asset=Asset.USDC).values_list("kind").annotate(total=Sum("balance")))
        deposited = Deposit.objects.filter(status=DepositStatus.CREDITED).aggregate(t=Sum("micro_usdc"))["t"] or 0
        x402 = X402Payment.objects.aggregate(t=Sum("amount"))["t"] or 0
        payouts = dict(WorkerPayout.objects.values_list("state").annotate(total=Sum("amount")))
        pending, paid = payouts.get("pending", 0) + payouts.get("sent", 0), payouts.get("paid", 0)
        granted = -usdc.get(AccountKind.PROMO, 0)
        assert -usdc.get(AccountKind.EXTERNAL, 0) == deposited + x402 - paid
        assert usdc.get(AccountKind.PAYOUT_PENDING, 0) == pending
        assert deposited + x402 + granted == (
            usdc.get(AccountKind.USER, 0) + usdc.get(AccountKind.HELD, 0) + usdc.get(AccountKind.WORKER, 0)
            + pending + paid + usdc.get(AccountKind.STAKERS_POOL, 0) + usdc.get(AccountKind.TREASURY, 0))

    @invariant()
    def peer_supply_is_minted_less_burned(self):
        peer = dict(LedgerAccount.objects.filter(asset=Asset.PEER).values_list("code", "balance"))
        minted, burned = -peer.pop(PEER_ISSUER_CODE, 0), peer.pop(PEER_BURNED_CODE, 0)
        assert minted in (0, settings.PEER_INITIAL_SUPPLY)
        assert minted - burned == sum(peer.values())
        assert burned >= self.burned_before
        self.burned_before = burned

    @invariant()
    def what_is_cooling_down_is_what_pending_requests_will_pay(self):
        owed = defaultdict(int)
        for request in UnstakeRequest.objects.filter(state="pending"):
            code = unstaking_code(request.user_id) if request.worker_id is None else unbonding_code(request.worker_id)
            owed[code] += request.payable
        cooling = dict(LedgerAccount.objects.filter(kind=AccountKind.UNSTAKING).values_list("code", "balance"))
        assert {c: b for c, b in cooling.items() if b} == {c: b for c, b in owed.items() if b}
        assert LedgerTransaction.objects.filter(kind="peer_genesis").count() == int(self.minted)
