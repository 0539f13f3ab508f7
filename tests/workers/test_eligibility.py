"""Which connected workers may take a job: model digest, tier, and for verified a bond."""

import pytest

from apps.marketplace.demo import catalogue_seed_builtin
from apps.workers.models import CatalogueModel, Worker
from apps.workers.selectors import workers_eligible
from apps.workers.services import worker_register
from tests.conftest import bond

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


KEY = "A" * 43 + "="  # a public key's shape; eligibility only asks whether there is one


def _online(worker, entry, digest=None, signing_key=KEY):
    Worker.objects.filter(id=worker.id).update(status="idle", signing_key=signing_key, models_served=[
        {"id": entry.served_model, "digest": digest or entry.digests[0], "backend": "builtin"}])
    return worker


def _eligible(entry, tier):
    return [worker.name for worker, _ in workers_eligible(entry=entry, tier=tier)]


def test_the_verified_tier_routes_only_to_bonded_workers(bob, entry, settings):
    unbonded = _online(worker_register(operator=bob, name="unbonded", tiers=["open", "verified"])[0], entry)
    bonded = _online(worker_register(operator=bob, name="bonded", tiers=["open", "verified"])[0], entry)
    bond(bonded)
    assert _eligible(entry, "verified") == ["bonded"]
    assert sorted(_eligible(entry, "open")) == ["bonded", "unbonded"]
    bond(unbonded, amount=settings.PEER_VERIFIED_BOND - 1)  # one base unit short
    assert _eligible(entry, "verified") == ["bonded"]


def test_a_worker_with_other_weights_or_tiers_is_not_eligible(bob, entry):
    _online(worker_register(operator=bob, name="other-weights", tiers=["open"])[0], entry, digest="sha256:" + "0" * 64)
    _online(worker_register(operator=bob, name="open-only", tiers=["open"])[0], entry)
    assert _eligible(entry, "open") == ["open-only"]
    assert _eligible(entry, "verified") == []


def test_the_verified_tier_needs_an_agent_that_signs_its_commitments(bob, entry):
    keyless = _online(worker_register(operator=bob, name="keyless", tiers=["open", "verified"])[0], entry,
                      signing_key="")
    bond(keyless)
    assert _eligible(entry, "verified") == []
    assert _eligible(entry, "open") == ["keyless"]
