"""A posting that carries its transaction's COMMIT (ledger_post_committing), on real transactions:
it commits everything of the block in the same round trip, refuses with nothing written when it
would not go through, and inside an outer block leaves the commit to that block. Then the job's
hold and settlement that use it, run again the plain way when it refuses. Every test checks that
value was neither created nor lost."""

import json

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Sum

from apps.credits.ledger import PROMO_CODE, PostingRefused, ledger_post, ledger_post_committing, system_account
from apps.credits.models import LedgerAccount, LedgerEntry, LedgerTransaction
from apps.credits.pricing import credits_to_micro, split_capture
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import Leg, credits_grant, user_account, worker_account
from apps.marketplace import services as marketplace
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import InsufficientCredits, job_complete, job_create
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db(transaction=True)


def _snapshot():
    return (LedgerTransaction.objects.count(), LedgerEntry.objects.count(),
            sorted(LedgerAccount.objects.values_list("code", "balance")))


def _assert_value_is_conserved():
    by_asset = dict(LedgerAccount.objects.values_list("asset").annotate(total=Sum("balance")))
    assert all(total == 0 for total in by_asset.values()), by_asset


def _balance_seen_elsewhere(code: str) -> int:
    """The balance as another connection reads it: only what is committed."""
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
                         dbname=connection.settings_dict["NAME"]) as other:
        return other.execute("SELECT balance FROM credits_ledgeraccount WHERE code = %s", [code]).fetchone()[0]


def _grant_in_block(user, amount: int) -> None:
    ledger_post(kind="grant", legs=[Leg(system_account(PROMO_CODE), -amount), Leg(user_account(user=user), amount)])


def test_the_posting_commits_its_transaction_in_the_same_round_trip(alice, bob):
    credits_grant(user=alice, credits=1_000)  # 10_000_000 µUSDC
    alice_account, bob_account = user_account(user=alice), user_account(user=bob)

    with transaction.atomic(durable=True):
        _grant_in_block(bob, 1_000_000)  # another write of the same transaction
        txn = ledger_post_committing(kind="transfer", idempotency_key="t-1",
                                     legs=[Leg(alice_account, -4_000_000), Leg(bob_account, 4_000_000)])
        # Committed already, before the block ends: another connection sees both writes.
        assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert _balance_seen_elsewhere(bob_account.code) == 5_000_000
        assert _balance_seen_elsewhere(alice_account.code) == 6_000_000

    assert txn.id is not None and txn.entries.count() == 2
    assert (balance_get(user=alice), balance_get(user=bob)) == (6_000_000, 5_000_000)
    _assert_value_is_conserved()


def test_a_posting_that_cannot_go_through_aborts_its_transaction_and_writes_nothing(alice, bob):
    credits_grant(user=alice, credits=100)  # 1_000_000 µUSDC
    alice_account, bob_account = user_account(user=alice), user_account(user=bob)
    before = _snapshot()

    with pytest.raises(PostingRefused), transaction.atomic(durable=True):
        _grant_in_block(bob, 5_000_000)  # rolled back with the refused posting
        ledger_post_committing(kind="transfer", legs=[Leg(alice_account, -1_000_001), Leg(bob_account, 1_000_001)])

    assert _snapshot() == before
    _assert_value_is_conserved()


def test_a_key_used_already_is_refused_rather_than_posted_twice(alice, bob):
    credits_grant(user=alice, credits=1)
    legs = [Leg(user_account(user=alice), -1_000), Leg(user_account(user=bob), 1_000)]
    with transaction.atomic(durable=True):
        ledger_post_committing(kind="transfer", idempotency_key="once", legs=legs)
    before = _snapshot()

    with pytest.raises(PostingRefused), transaction.atomic(durable=True):
        ledger_post_committing(kind="transfer", idempotency_key="once", legs=legs)

    assert _snapshot() == before
    assert balance_get(user=bob) == 1_000
    _assert_value_is_conserved()


def test_a_database_error_on_the_way_comes_out_as_djangos_and_writes_nothing(alice, bob):
    # Another connection holds alice's account row; the posting gives up waiting for it.
    credits_grant(user=alice, credits=1)
    alice_account, bob_account = user_account(user=alice), user_account(user=bob)
    before = _snapshot()
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
                         dbname=connection.settings_dict["NAME"]) as other:
        other.execute("SELECT 1 FROM credits_ledgeraccount WHERE code = %s FOR UPDATE", [alice_account.code])

        with pytest.raises(OperationalError), transaction.atomic(durable=True):
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '100ms'")
            _grant_in_block(bob, 1_000)
            ledger_post_committing(kind="transfer", legs=[Leg(alice_account, -1_000), Leg(bob_account, 1_000)])
        other.rollback()

    assert _snapshot() == before
    _assert_value_is_conserved()


def test_inside_an_outer_block_it_posts_and_leaves_the_commit_to_that_block(alice, bob):
    credits_grant(user=alice, credits=1)
    before = _snapshot()

    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic():
            ledger_post_committing(kind="transfer", legs=[Leg(user_account(user=alice), -1_000),
                                                          Leg(user_account(user=bob), 1_000)])
        assert connection.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        raise RuntimeError("the outer block rolls back")

    assert _snapshot() == before
    _assert_value_is_conserved()


# --- the job's hold and settlement -----------------------------------------------------------

def _chat():
    return parse_chat_request(json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                              default_tier="open", default_max_tokens=32, max_tokens_limit=1024)


@pytest.fixture
def tries(monkeypatch):
    """The `commits` of each run of a job's creation and settlement transactions."""
    seen = {"create": [], "capture": []}
    create, capture = marketplace._job_create_held_once, marketplace._job_capture_once

    def create_spy(**kwargs):
        seen["create"].append(kwargs["commits"])
        return create(**kwargs)

    def capture_spy(**kwargs):
        seen["capture"].append(kwargs["commits"])
        return capture(**kwargs)

    monkeypatch.setattr(marketplace, "_job_create_held_once", create_spy)
    monkeypatch.setattr(marketplace, "_job_capture_once", capture_spy)
    return seen


def test_a_users_first_hold_and_a_workers_first_earnings_go_through_on_the_second_run(alice, bob, tries):
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    credits_grant(user=alice, credits=1_000)

    first = job_create(user=alice, chat=_chat(), entry=entry)  # alice has no held account yet
    second = job_create(user=alice, chat=_chat(), entry=entry)  # now she has: one run
    assert tries["create"] == [True, False, True]
    assert held_get(user=alice) == first.hold_amount + second.hold_amount
    assert Job.objects.filter(user=alice).count() == 2

    for job in (first, second):
        Job.objects.filter(id=job.id).update(worker=worker, model_digest="sha256:x", price_per_token=10)
    done = job_complete(job_id=first.id, output_text="hello there", finish_reason="stop", model_digest="sha256:x")
    job_complete(job_id=second.id, output_text="hello there", finish_reason="stop", model_digest="sha256:x")
    assert tries["capture"] == [True, False, True]  # bob's worker had no earnings account at first

    assert done.hold_state == Job.HoldState.CAPTURED and done.charged_amount > 0
    assert worker_account(worker=worker).balance == 2 * split_capture(done.charged_amount).worker
    assert held_get(user=alice) == 0
    assert balance_get(user=alice) == credits_to_micro(1_000) - 2 * done.charged_amount
    _assert_value_is_conserved()


def test_a_job_beyond_the_credits_is_refused_with_nothing_written(alice, bob, tries):
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    credits_grant(user=alice, credits=10)
    job_create(user=alice, chat=_chat(), entry=entry)  # her accounts exist: the refusal is about funds
    with transaction.atomic(durable=True):  # the rest of her credits go to bob
        ledger_post(kind="transfer", legs=[Leg(user_account(user=alice), -balance_get(user=alice)),
                                           Leg(user_account(user=bob), balance_get(user=alice))])
    tries["create"].clear()
    before, jobs = _snapshot(), Job.objects.count()

    with pytest.raises(InsufficientCredits) as refused:
        job_create(user=alice, chat=_chat(), entry=entry)

    assert refused.value.available == 0
    assert tries["create"] == [True, False]
    assert (_snapshot(), Job.objects.count()) == (before, jobs)
    _assert_value_is_conserved()
