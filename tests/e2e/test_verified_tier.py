"""The verified tier end to end: real agents with the built-in model, a real node, the openai
SDK; the sampled job is re-executed by real validator agents of other operators over the agent
protocol (the runner runs here, as a Celery worker would: any process on the node's Redis)."""

from contextlib import contextmanager

import openai
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction

from apps.credits.ledger import Leg, ledger_post, system_account
from apps.credits.services import PROMO_CODE, TREASURY_CODE, worker_account
from apps.marketplace.models import Job
from apps.staking.models import Slash
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.verification.models import Validation
from apps.verification.runner import validation_run
from apps.verification.services import jobs_sample
from apps.workers.models import CatalogueModel, Worker
from apps.workers.selectors import workers_eligible
from apps.workers.services import worker_register
from tests.conftest import bond

from .conftest import OUTPUT, ScriptedAgent, builtin_agent_running, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


@pytest.fixture(autouse=True)
def _treasury_and_sampling(settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    settings.PEER_VERIFY_TIMEOUT = 60.0
    with transaction.atomic():
        ledger_post(kind="grant", reference="test:treasury", legs=[
            Leg(system_account(PROMO_CODE), -10_000_000), Leg(system_account(TREASURY_CODE), 10_000_000)])


@contextmanager
def builtin_agent(node_url, operator, catalogue, name, *extra, bonded=False):
    worker, token = worker_register(operator=operator, name=name, tiers=["open", "verified"])
    if bonded:
        bond(worker)
    with builtin_agent_running(node_url, worker, token, catalogue["path"], "--threads", "1",
                               "--key-file", str(OUTPUT / f"key-{name}.pem"), *extra, log_name=f"agent-{name}.log"):
        yield worker


def _ask(node_url, key, worker, n=1):
    client = openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=120)
    answers = [client.chat.completions.create(
        model="gemma-3-270m", messages=MESSAGES, temperature=0, max_tokens=12,
        extra_body={"peer_tier": "verified", "peer_route": {"only": [str(worker.id)]}}) for _ in range(n)]
    return [Job.objects.get(id=a.model_extra["peer"]["job_id"]) for a in answers]


def job_entry(job):
    return CatalogueModel.objects.get(name=job.public_model)


def _run_sampled():
    for validation_id in jobs_sample():
        async_to_sync(validation_run)(validation_id)


def test_an_honest_workers_sampled_answers_pass_re_execution_by_another_operator(
        node_url, catalogue, alice_key, bob, carol):
    with builtin_agent(node_url, bob, catalogue, "bob-honest", bonded=True) as honest, \
            builtin_agent(node_url, carol, catalogue, "carol-validator") as validator:
        jobs = _ask(node_url, alice_key, honest, n=3)
        _run_sampled()
    for job in jobs:
        job.refresh_from_db()
        assert job.verification_status == "passed", job.validations.values()
        [validation] = job.validations.all()
        assert validation.validator_id == validator.id and validation.outcome in ("match", "plausible")
    assert not Slash.objects.exists() and worker_bond_get(worker=honest) > 0
    assert worker_account(worker=validator).balance == sum(j.charged_amount for j in jobs) * 70 // 100


def test_a_cheater_is_caught_by_two_validators_and_slashed_once(node_url, catalogue, alice, alice_key, bob, carol,
                                                                mallory):
    with builtin_agent(node_url, mallory, catalogue, "mallory-cheater", "--cheat", "cached",
                       bonded=True) as cheater, \
            builtin_agent(node_url, bob, catalogue, "bob-validator"), \
            builtin_agent(node_url, carol, catalogue, "carol-validator"):
        supply = peer_supply()
        [job] = _ask(node_url, alice_key, cheater)
        _run_sampled()
        job.refresh_from_db()
        assert job.verification_status == "failed", list(job.validations.values("round", "outcome", "detail"))
        rounds = list(job.validations.order_by("round"))
        assert [v.outcome for v in rounds] == ["mismatch", "mismatch"]
        assert len({Worker.objects.get(id=v.validator_id).operator_id for v in rounds} | {mallory.id}) == 3
        slash = Slash.objects.get(worker=cheater)
        assert peer_supply()["burned"] - supply["burned"] == slash.burned == slash.amount - slash.to_challenger
        # The proof tells it all; and the cheater is off the verified tier.
        client = openai.OpenAI(base_url=f"{node_url}/v1", api_key=alice_key, max_retries=0, timeout=60)
        proof = client.get(f"/jobs/{job.id}/proof", cast_to=object)
        assert proof["verification"]["status"] == "failed"
        assert proof["verification"]["slash"]["amount"] == slash.amount
        assert cheater.id not in [w.id for w, _ in workers_eligible(entry=job_entry(job), tier="verified")]


def test_a_validator_that_drops_mid_validation_is_replaced_without_loss(node_url, catalogue, alice_key, bob, carol,
                                                                       mallory):
    dropped = worker_register(operator=mallory, name="mallory-drops", tiers=["open"])

    async def hang_up(ws, frame):
        return "hang up" if frame["type"] == "validate.assign" else None

    with builtin_agent(node_url, bob, catalogue, "bob-honest", bonded=True) as honest, \
            ScriptedAgent(node_url, dropped[1], catalogue, hang_up, validates=True):
        wait_for_status(dropped[0].id, Worker.Status.IDLE)
        [job] = _ask(node_url, alice_key, honest)
        [validation_id] = jobs_sample()
        async_to_sync(validation_run)(validation_id)  # the only validator drops: back in line
        validation = Validation.objects.get(id=validation_id)
        assert validation.state == "pending" and validation.validators_tried == [str(dropped[0].id)]
        with builtin_agent(node_url, carol, catalogue, "carol-validator") as validator:
            async_to_sync(validation_run)(validation_id)
    validation.refresh_from_db()
    assert validation.state == "done" and validation.validator_id == validator.id
    job.refresh_from_db()
    assert job.verification_status == "passed" and not Slash.objects.exists()
    assert worker_account(worker=dropped[0]).balance == 0  # no answer, no pay
