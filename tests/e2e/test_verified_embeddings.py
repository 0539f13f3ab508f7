"""Verified embeddings end to end: real agents (`python -m worker`) with the real MiniLM, a real
node, the openai SDK. Every chunk is signed by its worker and checked by the node; sampled jobs are
re-embedded by validator agents of other operators over the agent protocol (the runner runs
here, as a Celery worker would); a `--cheat cached` embedder is slashed once, an honest one never;
a validator that drops between chunks is replaced."""

import json
import subprocess
import sys
from contextlib import contextmanager

import openai
import pytest
from asgiref.sync import async_to_sync
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db.models import Sum

from apps.credits.models import LedgerAccount
from apps.credits.services import worker_account
from apps.marketplace.demo import catalogue_seed_embeddings
from apps.marketplace.models import Job
from apps.staking.models import Slash
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.verification.models import Validation
from apps.verification.runner import validation_run
from apps.verification.services import jobs_sample
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker import protocol
from worker.commitment import commitment_sign
from worker.embedding_commitment import chunk_commitment

from .conftest import OUTPUT, ROOT, builtin_agent_running, wait_for_status
from .test_embeddings import EmbeddingAgent
from .test_verified_tier import _treasury_and_sampling  # noqa: F401 (autouse: a funded treasury, all sampled)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TEXTS = [f"Note {i}: the river floods the valley every spring." for i in range(36)]  # two chunks


@pytest.fixture
def minilm(catalogue):
    name, model_id, digest = catalogue_seed_embeddings()
    return {"name": name, "id": model_id, "digest": digest}


@contextmanager
def agent(node_url, operator, catalogue, name, *extra, bonded=False):
    worker, token = worker_register(operator=operator, name=name, tiers=["open", "verified"])
    if bonded:
        bond(worker)
    with builtin_agent_running(node_url, worker, token, catalogue["path"], "--threads", "1", "--embeddings",
                               "minilm", "--key-file", str(OUTPUT / f"key-{name}.pem"), *extra,
                               log_name=f"agent-{name}.log"):
        yield worker


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=120)


def _embed(node_url, key, minilm, worker, n=1):
    client = _client(node_url, key)
    return [client.embeddings.create(model=minilm["name"], input=TEXTS,
                                     extra_body={"peer_tier": "verified", "peer_route": {"only": [str(worker.id)]}})
            for _ in range(n)]


def _run_sampled():
    for validation_id in jobs_sample():
        async_to_sync(validation_run)(validation_id)


def _usdc_held_by_accounts() -> int:
    """All USDC in accounts that cannot go negative: only deposits and grants change it."""
    return LedgerAccount.objects.filter(asset="USDC", allow_negative=False).aggregate(total=Sum("balance"))["total"]


def test_an_honest_embedders_sampled_jobs_pass_re_execution_by_another_operator_and_the_proof_checks_offline(
        node_url, catalogue, minilm, alice_key, bob, carol, tmp_path):
    with agent(node_url, bob, catalogue, "bob-embedder", bonded=True) as honest, \
            agent(node_url, bob, catalogue, "bob-second"), \
            agent(node_url, carol, catalogue, "carol-validator") as validator:
        replies = _embed(node_url, alice_key, minilm, honest, n=3)
        money = _usdc_held_by_accounts()
        _run_sampled()
    jobs = [Job.objects.get(id=reply.model_extra["peer"]["job_id"]) for reply in replies]
    for job in jobs:
        assert job.verification_status == "passed", list(job.validations.values("outcome", "detail"))
        [validation] = job.validations.all()
        # Never bob's second worker (same operator): carol's, which re-embedded the very same float32s.
        assert validation.validator_id == validator.id and validation.outcome == "match"
    assert not Slash.objects.exists() and worker_bond_get(worker=honest) > 0
    assert worker_account(worker=validator).balance == sum(j.charged_amount for j in jobs) * 70 // 100
    assert _usdc_held_by_accounts() == money  # the validators' pay moved from the treasury, nothing made

    # The response's peer object and the proof carry every chunk, signed by the worker's key.
    peer = replies[0].model_extra["peer"]
    assert [c["inputs"]["count"] for c in peer["commitment"]["chunks"]] == [protocol.MAX_EMBED_INPUTS, 4]
    proof = _client(node_url, alice_key).get(f"/jobs/{jobs[0].id}/proof", cast_to=object)
    assert proof["worker_public_key"] == Worker.objects.get(id=honest.id).signing_key
    assert proof["commitment"]["chunks"] == peer["commitment"]["chunks"]
    assert proof["verification"]["status"] == "passed"
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "reply.json").write_text(replies[0].model_dump_json())
    (tmp_path / "inputs.json").write_text(json.dumps(TEXTS))
    check = subprocess.run([sys.executable, "-m", "worker.commitment", str(tmp_path / "proof.json"), "--vectors",
                            str(tmp_path / "reply.json"), "--inputs", str(tmp_path / "inputs.json")],
                           cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("OK: 2 chunk(s)"), check.stdout


def test_a_cheating_embedder_is_caught_by_two_validators_and_slashed_once(
        node_url, catalogue, minilm, alice_key, bob, carol, mallory):
    with agent(node_url, mallory, catalogue, "mallory-cheater", "--cheat", "cached", bonded=True) as cheater, \
            agent(node_url, bob, catalogue, "bob-validator"), \
            agent(node_url, carol, catalogue, "carol-validator"):
        supply, bond_before = peer_supply(), worker_bond_get(worker=cheater)
        [reply] = _embed(node_url, alice_key, minilm, cheater)  # signed like honest vectors: accepted
        money = _usdc_held_by_accounts()
        _run_sampled()
    job = Job.objects.get(id=reply.model_extra["peer"]["job_id"])
    assert job.verification_status == "failed", list(job.validations.values("round", "outcome", "detail"))
    rounds = list(job.validations.order_by("round"))
    assert [v.outcome for v in rounds] == ["mismatch", "mismatch"]
    assert len({Worker.objects.get(id=v.validator_id).operator_id for v in rounds} | {mallory.id}) == 3
    slash = Slash.objects.get()
    assert slash.worker_id == cheater.id and worker_bond_get(worker=cheater) == bond_before - slash.amount
    assert peer_supply()["burned"] - supply["burned"] == slash.burned == slash.amount - slash.to_challenger
    assert _usdc_held_by_accounts() == money
    # Applying it all again slashes nothing more.
    _run_sampled()
    assert Slash.objects.count() == 1


@pytest.mark.parametrize("forge", ["another key", "no signature", "other vectors"])
def test_a_chunk_without_the_workers_valid_signature_is_refused_and_the_next_worker_redoes_everything(
        node_url, catalogue, minilm, alice, alice_key, bob, mallory, forge):
    forger, token = worker_register(operator=mallory, name="mallory-forger", tiers=["open", "verified"])
    bond(forger)

    async def answer(ws, frame, n):
        vectors = [[1.0 if i == k % 384 else 0.0 for i in range(384)] for k in range(len(frame["input"]))]
        done = protocol.embed_done(job_id=frame["job_id"], model_digest=frame["model_digest"], data=vectors,
                                   prompt_tokens=1)
        if forge == "another key":
            done.update(commitment="0" * 64, signature=commitment_sign(Ed25519PrivateKey.generate(), "0" * 64))
        elif forge == "no signature":
            done.update(signature=None)
        else:  # signed with the announced key over these vectors, then one number changed on the way
            _, commitment = chunk_commitment(model_id=frame["model"], model_digest=frame["model_digest"],
                                             texts=frame["input"], vectors=vectors)
            done.update(commitment=commitment, signature=commitment_sign(ws.key, commitment),
                        data=[[0.5, *vectors[0][1:]], *vectors[1:]])
        await ws.send(json.dumps(done))

    with agent(node_url, bob, catalogue, "bob-embedder", bonded=True) as honest, \
            EmbeddingAgent(node_url, token, minilm, answer):
        wait_for_status(forger.id, Worker.Status.IDLE)
        reputation = Worker.objects.get(id=forger.id).reputation
        reply = _client(node_url, alice_key).embeddings.create(
            model=minilm["name"], input=TEXTS, extra_body={"peer_route": {"order": ["mallory-forger"]}})
    assert reply.model_extra["peer"]["worker_id"] == str(honest.id)
    # A failed verification's cut (half the way to 0), as for a chat answer it did not sign.
    assert Worker.objects.get(id=forger.id).reputation < reputation * 0.55
    job = Job.objects.get(user=alice)
    assert job.worker_id == honest.id and len(job.commitment["chunks"]) == 2


def test_a_validator_that_drops_mid_job_is_replaced_and_paid_nothing(
        node_url, catalogue, minilm, alice_key, bob, carol, mallory):
    dropper, token = worker_register(operator=mallory, name="mallory-drops", tiers=["open"])

    async def first_chunk_then_hang_up(ws, frame, n):
        if n > 0:
            return "hang up"
        await ws.send(json.dumps(protocol.embed_done(
            job_id=frame["job_id"], model_digest=frame["model_digest"], prompt_tokens=1,
            data=[[1.0] + [0.0] * 383 for _ in frame["input"]])))

    with agent(node_url, bob, catalogue, "bob-embedder", bonded=True) as honest, \
            EmbeddingAgent(node_url, token, minilm, first_chunk_then_hang_up, validates=True) as scripted:
        wait_for_status(dropper.id, Worker.Status.IDLE)
        [reply] = _embed(node_url, alice_key, minilm, honest)
        [validation_id] = jobs_sample()
        async_to_sync(validation_run)(validation_id)  # the only validator drops: back in line
        validation = Validation.objects.get(id=validation_id)
        assert len(scripted.assigned) == 2 and validation.state == "pending"
        assert validation.validators_tried == [str(dropper.id)]
        with agent(node_url, carol, catalogue, "carol-validator") as validator:
            async_to_sync(validation_run)(validation_id)
    validation.refresh_from_db()
    assert (validation.state, validation.outcome, validation.validator_id) == ("done", "match", validator.id)
    assert Job.objects.get(id=reply.model_extra["peer"]["job_id"]).verification_status == "passed"
    assert worker_account(worker=dropper).balance == 0 and not Slash.objects.exists()
