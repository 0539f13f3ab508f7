import pytest

from apps.workers.services import worker_register

from .helpers import PEER, assert_value_is_conserved


@pytest.fixture(autouse=True)
def _peer_settings(settings):
    """The numbers these tests reason about, whatever the environment sets."""
    settings.PEER_INITIAL_SUPPLY = 1_000_000 * PEER
    settings.PEER_UNSTAKE_COOLDOWN_SECONDS = 7 * 24 * 3600
    settings.PEER_VERIFIED_BOND = 1_000 * PEER
    settings.PEER_SLASH_CHALLENGER_PERCENT = 50
    settings.PEER_EPOCH_SECONDS = 3600


@pytest.fixture(autouse=True)
def _value_is_conserved_after_each_test(request):
    yield
    if request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(request.fixturenames):
        assert_value_is_conserved()


@pytest.fixture
def bobs_worker(bob):
    worker, _ = worker_register(operator=bob, name="bob-gpu-1", tiers=["open", "verified"])
    return worker


@pytest.fixture
def bobs_other_worker(bob):
    worker, _ = worker_register(operator=bob, name="bob-gpu-2", tiers=["open", "verified"])
    return worker
