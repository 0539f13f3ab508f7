"""The network workflow page (/network/) in a real browser, on a real node with real agents: an
honest bonded worker, a validator of another operator, a cheater (--cheat truncate) of a third,
and a simulated enclave. "Run workflow" must go through every step to the end, with the numbers
the ledger and the job records hold. Debian's Chromium, headless, driven by Playwright."""

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from apps.credits.ledger import Leg, ledger_post, system_account
from apps.credits.services import PROMO_CODE, TREASURY_CODE, credits_grant
from apps.marketplace.models import Job
from apps.staking.models import Slash
from apps.workers.services import worker_register
from tests.conftest import bond

from .browser_support import browser, in_thread, sign_up  # noqa: F401
from .confidential_support import enclave_agent
from .conftest import OUTPUT, builtin_agent_running, running_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def workflow_node(django_db_setup, django_db_blocker):
    with running_node("workflow-node.log", PEER_ALLOW_SIMULATED_ENCLAVE="1",
                      PEER_WORKFLOW_CHEATER="mallory-cheater") as url:
        yield url


@pytest.fixture
def fleet(workflow_node, catalogue, bob, carol, mallory, db):
    """Validators are paid from the treasury: fund it, as the verified tier's tests do."""
    with transaction.atomic():
        ledger_post(kind="grant", reference="test:treasury", legs=[
            Leg(system_account(PROMO_CODE), -10_000_000), Leg(system_account(TREASURY_CODE), 10_000_000)])
    honest, honest_token = worker_register(operator=bob, name="bob-honest", tiers=["open", "verified"])
    bond(honest)
    validator, validator_token = worker_register(operator=carol, name="carol-validator", tiers=["open"])
    cheater, cheater_token = worker_register(operator=mallory, name="mallory-cheater", tiers=["verified"])
    bond(cheater)
    path = catalogue["path"]
    with builtin_agent_running(workflow_node, honest, honest_token, path, "--threads", "1",
                               "--key-file", str(OUTPUT / "key-wf-honest.pem"), log_name="wf-honest.log"), \
            builtin_agent_running(workflow_node, validator, validator_token, path, "--threads", "1",
                                  "--key-file", str(OUTPUT / "key-wf-validator.pem"), log_name="wf-validator.log"), \
            builtin_agent_running(workflow_node, cheater, cheater_token, path, "--threads", "1", "--cheat", "truncate",
                                  "--key-file", str(OUTPUT / "key-wf-cheater.pem"), log_name="wf-cheater.log"), \
            enclave_agent(workflow_node, carol, path, "carol-enclave"):
        yield {"cheater": cheater}


def test_run_workflow_goes_through_every_tier_and_catches_the_cheater(workflow_node, fleet, browser):
    page = browser.new_page()
    sign_up(page, workflow_node, "grace@example.org")
    user = in_thread(lambda: get_user_model().objects.get(email="grace@example.org"))
    in_thread(credits_grant, user=user, credits=1000)

    page.goto(f"{workflow_node}/network/")
    page.get_by_role("button", name="Run workflow").click()
    page.get_by_text("Done.", exact=True).wait_for(timeout=300_000)
    page.screenshot(path=OUTPUT / "network-workflow.png", full_page=True)

    def card(step):
        return page.locator(f"#step-{step}").inner_text()

    assert "Routed to" in card("open") and "Score" in card("open") and "Charged" in card("open")
    assert "Signature checked on the node\nvalid" in card("verified")
    settled = card("settled")
    assert "Worker (70%)" in settled and "Treasury (6%)" in settled
    assert "Enclave signature checked in this page\nvalid" in card("confidential")
    assert "Messages the node stored\nnone" in card("confidential")
    cheater = card("cheater")
    assert "slashed" in cheater and "Burned" in cheater and "mismatch" in cheater, cheater
    slash = in_thread(lambda: Slash.objects.get(worker=fleet["cheater"]))
    assert f"{slash.burned / 1e9:,g} PEER" in cheater and f"{slash.to_challenger / 1e9:,g} PEER" in cheater
    jobs = in_thread(lambda: list(Job.objects.filter(user=user).values_list("tier", "status")))
    assert sorted(jobs) == sorted([("open", "completed"), ("verified", "completed"), ("confidential", "completed"),
                                   ("verified", "completed")])
