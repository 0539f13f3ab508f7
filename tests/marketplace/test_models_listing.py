"""/v1/models shows, per tier, the range of prices the connected workers ask for a model."""

import pytest

from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.selectors import models_listing
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _worker(operator, entry, name, tiers, price=None, status="idle"):
    worker = worker_register(operator=operator, name=name, tiers=tiers)[0]
    offers = {entry.name: {"price_per_token": price}} if price is not None else {}
    Worker.objects.filter(id=worker.id).update(status=status, offers=offers, models_served=[
        {"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    return worker


def _pricing(entry):
    return next(m for m in models_listing() if m["id"] == entry.name)["peer"]["pricing"]


def test_price_ranges_per_tier_come_from_the_connected_workers_offers(bob, entry, settings):
    _worker(bob, entry, "cheap", ["open"], price=40)
    _worker(bob, entry, "dear", ["open", "verified"], price=250, status="busy")
    _worker(bob, entry, "default", ["verified"])  # no offer: the node's default price
    _worker(bob, entry, "gone", ["open"], price=1, status="offline")  # not online: not a price anyone gets
    assert _pricing(entry) == {
        "open": {"min_price_per_token": 40, "max_price_per_token": 250, "workers": 2,
                 "base_price": settings.PEER_TIER_BASE_PRICE["open"]},
        "verified": {"min_price_per_token": min(250, settings.PEER_PRICE_PER_TOKEN),
                     "max_price_per_token": max(250, settings.PEER_PRICE_PER_TOKEN), "workers": 2,
                     "base_price": settings.PEER_TIER_BASE_PRICE["verified"]},
    }


def test_a_model_nobody_serves_has_no_prices(entry):
    assert _pricing(entry) == {}
