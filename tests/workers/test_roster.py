"""The cached routing roster and the one-statement claim, on PostgreSQL."""

import threading
import uuid

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from apps.marketplace.demo import catalogue_seed_builtin
from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import price_ceiling, roster_get, tier_has_workers, workers_ranked
from apps.workers.services import worker_claim_first, worker_register, worker_revoke, worker_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _served(entry, digest=None):
    return {"id": entry.served_model, "digest": digest or entry.digests[0], "backend": "builtin"}


def _online(operator, entry, name, status="idle", tiers=("open",)):
    worker = worker_register(operator=operator, name=name, tiers=list(tiers))[0]
    Worker.objects.filter(id=worker.id).update(status=status, channel_name=f"chan-{name}",
                                               models_served=[_served(entry)])
    return worker


def _ranked_names(entry, tier="open", route=None, ceiling=10**6):
    names = dict(Worker.objects.values_list("id", "name"))
    return [names[uuid.UUID(worker_id)] for worker_id, _, _ in
            workers_ranked(entry=entry, tier=tier, route=route, price_ceiling=ceiling)]


@pytest.mark.parametrize("batch", [32, 2], ids=["one batch", "past the first batch"])
def test_the_claim_takes_the_first_ranked_worker_that_is_idle_and_still_serves_the_model(bob, entry, batch,
                                                                                        monkeypatch):
    monkeypatch.setattr("apps.workers.services.CLAIM_BATCH", batch)
    busy = _online(bob, entry, "busy", status="busy")
    revoked = _online(bob, entry, "revoked")
    worker_revoke(worker_id=revoked.id)
    reloaded = _online(bob, entry, "reloaded")  # its agent said hello again with other weights
    Worker.objects.filter(id=reloaded.id).update(models_served=[_served(entry, digest="sha256:" + "0" * 64)])
    free = _online(bob, entry, "free")
    model = _served(entry)
    ranked = [(str(w.id), model) for w in (busy, revoked, reloaded, free)]
    job = uuid.uuid4()
    assert worker_claim_first(ranked=ranked, job_id=job) == (free.id, "chan-free")
    assert Worker.objects.values_list("status", "current_job_id").get(id=free.id) == ("busy", job)
    assert worker_claim_first(ranked=ranked, job_id=uuid.uuid4()) is None
    assert worker_claim_first(ranked=[], job_id=job) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_take_distinct_workers_and_never_one_twice(bob, entry):
    workers = [_online(bob, entry, f"w{i}") for i in range(4)]
    ranked = [(str(w.id), _served(entry)) for w in workers]
    results, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        try:
            results.append(worker_claim_first(ranked=ranked, job_id=uuid.uuid4()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [r[0] for r in results if r is not None]
    assert sorted(claimed) == sorted(w.id for w in workers)  # each worker exactly once
    assert results.count(None) == 4
    assert Worker.objects.filter(status="busy").count() == 4


def test_a_cached_roster_costs_no_query_and_a_change_through_the_services_is_seen_at_once(bob, entry, settings):
    settings.PEER_ROUTING_CACHE_SECONDS = 600
    _online(bob, entry, "first")
    assert _ranked_names(entry) == ["first"]
    with CaptureQueriesContext(connection) as queries:
        assert len(workers_ranked(entry=entry, tier="open", route=None, price_ceiling=10**6)) == 1
        assert tier_has_workers(entry=entry, tier="open")
        assert price_ceiling(entry=entry, tier="open", max_price=None) == settings.PEER_PRICE_PER_TOKEN
    assert queries.captured_queries == []
    second = _online(bob, entry, "second")  # registered through the services: the roster is renewed
    assert sorted(_ranked_names(entry)) == ["first", "second"]
    worker_update(worker=second, offers={"gemma-3-270m": {"price_per_token": 900}})
    assert price_ceiling(entry=entry, tier="open", max_price=None) == 900
    assert price_ceiling(entry=entry, tier="open", max_price=300) == 300
    assert _ranked_names(entry, ceiling=300) == ["first"]  # never routed above what the hold covers


def test_a_change_made_elsewhere_is_seen_once_the_roster_ages_out(bob, entry, settings):
    settings.PEER_ROUTING_CACHE_SECONDS = 600
    worker = _online(bob, entry, "elsewhere")
    assert _ranked_names(entry) == ["elsewhere"]
    # As another node process would: straight to the database, no service call in this one.
    Worker.objects.filter(id=worker.id).update(status="offline")
    assert _ranked_names(entry) == ["elsewhere"]  # cached; the claim checks status itself
    assert worker_claim_first(ranked=[(str(worker.id), _served(entry))], job_id=uuid.uuid4()) is None
    settings.PEER_ROUTING_CACHE_SECONDS = 0
    assert _ranked_names(entry) == []


def test_busy_workers_stay_in_the_roster_so_scores_do_not_jump_with_who_is_free(bob, entry):
    _online(bob, entry, "busy", status="busy")
    _online(bob, entry, "idle")
    _online(bob, entry, "offline", status="offline")
    assert sorted(_ranked_names(entry)) == ["busy", "idle"]
    roster = roster_get(entry=entry, tier="open")
    assert roster.tier_registered and not roster_get(entry=entry, tier="confidential").tier_registered


@pytest.mark.django_db(transaction=True)
def test_an_expired_roster_is_rebuilt_by_one_thread_while_the_others_go_on_with_it(bob, entry, settings,
                                                                                 monkeypatch):
    from apps.workers import roster as roster_module

    _online(bob, entry, "first")
    settings.PEER_ROUTING_CACHE_SECONDS = 600
    old = roster_get(entry=entry, tier="open")
    settings.PEER_ROUTING_CACHE_SECONDS = 0  # expired for everyone from now on
    building, release, builds = threading.Event(), threading.Event(), []
    real_build = roster_module._roster_build

    def slow_build(**kwargs):
        builds.append(threading.current_thread().name)
        building.set()
        release.wait(10)
        return real_build(**kwargs)

    monkeypatch.setattr(roster_module, "_roster_build", slow_build)
    rebuilt = []

    def rebuild():
        try:
            rebuilt.append(roster_get(entry=entry, tier="open"))
        finally:
            connection.close()  # this thread's own

    rebuilder = threading.Thread(target=rebuild, name="rebuilder")
    rebuilder.start()
    assert building.wait(10)
    try:
        with CaptureQueriesContext(connection) as queries:
            assert [roster_get(entry=entry, tier="open") for _ in range(5)] == [old] * 5  # no wait, no build
        assert queries.captured_queries == []
    finally:
        release.set()
        rebuilder.join(10)
    assert builds == ["rebuilder"] and rebuilt[0] is not old and rebuilt[0].built_at > old.built_at
