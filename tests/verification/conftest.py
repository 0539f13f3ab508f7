import pytest
from django.db import transaction

from apps.credits.ledger import Leg, ledger_post, system_account
from apps.credits.services import PROMO_CODE, TREASURY_CODE
from apps.marketplace.demo import catalogue_seed_builtin
from apps.workers.models import CatalogueModel


@pytest.fixture
def entry(db):
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


@pytest.fixture
def funded_treasury(db):
    """Validators are paid from the treasury, which jobs fill 6% at a time: a running node's."""
    with transaction.atomic():
        ledger_post(kind="grant", reference="test:treasury", legs=[
            Leg(system_account(PROMO_CODE), -10_000_000), Leg(system_account(TREASURY_CODE), 10_000_000)])
