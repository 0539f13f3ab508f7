"""End to end: the official openai SDK's `embeddings.create` -> the node -> a real
`python -m worker` serving the real all-MiniLM-L6-v2 -> vectors back, settled in the ledger.

Faults come from `EmbeddingAgent`, a test double speaking the agent protocol over a real
WebSocket (erring, hanging up mid-job, sending broken vectors), beside the real agent.
"""

import asyncio
import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy
import openai
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import pytest
import websockets
from django.conf import settings
from tokenizers import Tokenizer

from apps.accounts.services import api_key_issue
from apps.credits.pricing import split_capture
from apps.credits.selectors import balance_get, held_get, transactions_for_reference
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_embeddings
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker import protocol
from worker.backends import minilm
from worker.commitment import public_key_text

from .conftest import OUTPUT, SigningLink, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
RELATED = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awful.",
           "Interest rates were raised by the central bank."]


@pytest.fixture
def minilm_model(catalogue):
    name, model_id, digest = catalogue_seed_embeddings()
    return {"name": name, "id": model_id, "digest": digest}


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=120)


def _cosine(a, b) -> float:
    a, b = numpy.asarray(a), numpy.asarray(b)
    return float(a @ b / (numpy.linalg.norm(a) * numpy.linalg.norm(b)))


def _node_count(texts) -> int:
    tokenizer = Tokenizer.from_file(str(minilm.model_files()[1]))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts)


def _assert_captured(job: Job):
    hold, capture = transactions_for_reference(reference=job.reference)
    assert (hold.kind, capture.kind) == ("hold", "capture")
    legs = {entry.account.code: entry.amount for entry in capture.entries.all()}
    split = split_capture(job.charged_amount)
    assert legs[f"worker:{job.worker_id}:USDC"] == split.worker
    assert legs["system:stakers_pool:USDC"] == split.stakers_pool
    assert legs["system:treasury:USDC"] == split.treasury


def _assert_refunded(user, before):
    assert balance_get(user=user) == before and held_get(user=user) == 0
    job = Job.objects.get(user=user)
    assert (job.status, job.hold_state, job.charged_amount) == ("failed", "released", 0)
    return job


def _unit(dimensions: int, axis: int) -> list[float]:
    return [1.0 if i == axis else 0.0 for i in range(dimensions)]


class EmbeddingAgent:
    """Announces the MiniLM model like a real agent; `on_embed(ws, frame, n)` answers the n-th
    embed.assign (from 0), and may return "hang up" to drop the link. Like a real agent it signs
    each embed.done it sends (unless the script put a signature in it) with the key it announced."""

    def __init__(self, node_url: str, token: str, model: dict, on_embed, validates: bool = False):
        self.url = node_url.replace("http://", "ws://") + "/ws/agent/"
        self.token, self.model, self.on_embed, self.validates = token, model, on_embed, validates
        self.key = Ed25519PrivateKey.generate()
        self.assigned: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self):
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps(protocol.hello(
                token=self.token, agent_version="scripted", backends=["minilm"], hardware={},
                models=[{"id": self.model["id"], "digest": self.model["digest"], "backend": "minilm",
                         "kind": "embedding", "validates": self.validates}],
                # Like a real agent (verified-tier workers must announce a signing key).
                signing_key=public_key_text(self.key))))
            link = SigningLink(ws, self.key)
            while not self._stop.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.2))
                except TimeoutError:
                    continue
                except websockets.ConnectionClosed:
                    return
                if frame["type"] == "embed.assign":
                    self.assigned.append(frame)
                    link.jobs[frame["job_id"]] = frame
                    if await self.on_embed(link, frame, len(self.assigned) - 1) == "hang up":
                        return


async def _refuse(ws, frame, n):
    await ws.send(json.dumps({"type": "job.error", "job_id": frame["job_id"], "code": "oom",
                              "message": "out of memory"}))


async def _first_chunk_then_hang_up(ws, frame, n):
    if n > 0:
        return "hang up"
    await ws.send(protocol.encode(protocol.embed_done(
        job_id=frame["job_id"], model_digest=frame["model_digest"], prompt_tokens=1,
        data=[_unit(384, 0) for _ in frame["input"]])))


async def _short_vectors(ws, frame, n):
    await ws.send(protocol.encode(protocol.embed_done(
        job_id=frame["job_id"], model_digest=frame["model_digest"], prompt_tokens=1,
        data=[_unit(383, 0) for _ in frame["input"]])))


@pytest.fixture
def second_worker(bob):
    worker, token = worker_register(operator=bob, name="bob-scripted", tiers=["open", "verified"])
    return bond(worker), token


# --- the real agent and the real model ----------------------------------------------------------

def test_related_sentences_are_closer_than_unrelated_ones_and_every_vector_is_a_unit_vector(
        node_url, alice, alice_key, agent_process, minilm_model):
    client = _client(node_url, alice_key)
    before = balance_get(user=alice)

    # No encoding_format: the SDK asks for base64 and decodes the float32 bytes itself.
    reply = client.embeddings.create(model=minilm_model["name"], input=RELATED)
    plain = client.embeddings.create(model=minilm_model["name"], input=RELATED, encoding_format="float")

    vectors = [item.embedding for item in reply.data]
    assert [item.index for item in reply.data] == [0, 1, 2, 3] and reply.model == minilm_model["name"]
    assert all(len(v) == 384 and abs(numpy.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    # Both encodings carry the same float32s (JSON prints each with the digits that name it).
    assert (numpy.array([item.embedding for item in plain.data], dtype="float32") ==
            numpy.array(vectors, dtype="float32")).all()
    food, bread, movie, rates = vectors
    assert _cosine(food, bread) > 0.5 > max(_cosine(food, movie), _cosine(food, rates))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == _node_count(RELATED)
    peer = reply.model_extra["peer"]
    assert peer["worker_id"] == str(agent_process.id) and peer["tier"] == "verified"
    assert peer["served_model"] == minilm_model["id"] and peer["usage_source"] == "tokenizer"
    assert peer["commitment"]["inputs"]["model_digest"] == minilm_model["digest"]

    jobs = list(Job.objects.filter(user=alice))
    assert [(j.kind, j.status) for j in jobs] == [("embedding", "completed")] * 2
    for job in jobs:
        assert job.charged_amount == settings.PEER_EMBEDDING_BASE_PRICE["verified"] + \
            settings.PEER_PRICE_PER_TOKEN * job.prompt_tokens
        _assert_captured(job)
    assert balance_get(user=alice) == before - sum(j.charged_amount for j in jobs) and held_get(user=alice) == 0
    assert Worker.objects.get(id=agent_process.id).status == Worker.Status.IDLE


def test_more_than_32_inputs_are_split_across_assignments_and_come_back_in_order(
        node_url, alice, alice_key, agent_process, minilm_model):
    client = _client(node_url, alice_key)
    topics = ["cooking pasta", "the orbit of Mars", "tax law", "jazz piano", "mountain hiking",
              "database indexes", "medieval castles"]
    texts = [f"Note {i}: a few words about {topics[i % len(topics)]}." for i in range(70)]

    batch = client.embeddings.create(model=minilm_model["name"], input=texts)

    assert [item.index for item in batch.data] == list(range(70))
    job = Job.objects.get(user=alice)
    log = (OUTPUT / "agent.log").read_text()
    assert [int(n) for n in re.findall(rf"job {job.id}: (\d+) embeddings", log)] == [32, 32, 6]
    for k in (0, 33, 69):  # each vector is its own input's, wherever its chunk fell
        alone = client.embeddings.create(model=minilm_model["name"], input=texts[k], encoding_format="float")
        assert _cosine(alone.data[0].embedding, batch.data[k].embedding) > 0.9999
        assert _cosine(alone.data[0].embedding, batch.data[k - 1 if k else 1].embedding) < 0.999


def test_models_lists_the_embedding_model_with_its_kind_and_dimensions(node_url, alice_key, agent_process,
                                                                        minilm_model):
    models = {m.id: m.model_extra["peer"] for m in _client(node_url, alice_key).models.list()}

    assert models[minilm_model["name"]]["kind"] == "embedding" and models[minilm_model["name"]]["dimensions"] == 384
    assert models[minilm_model["name"]]["workers_online"] == 1
    assert models["peer-mixtral"]["kind"] == "chat"


# --- failover and refunds -----------------------------------------------------------------------

@pytest.mark.parametrize("scripted", [_refuse, _first_chunk_then_hang_up, _short_vectors],
                         ids=["error", "hang-up-mid-job", "wrong-dimensions"])
def test_a_failing_worker_is_replaced_and_the_next_one_embeds_every_input(
        node_url, alice, alice_key, agent_process, minilm_model, second_worker, scripted):
    worker, token = second_worker
    texts = [f"Sentence {i} about rivers and lakes." for i in range(40)]
    with EmbeddingAgent(node_url, token, minilm_model, scripted) as agent:
        wait_for_status(worker.id, Worker.Status.IDLE)
        reply = _client(node_url, alice_key).embeddings.create(
            model=minilm_model["name"], input=texts, extra_body={"peer_route": {"order": ["bob-scripted"]}})
    assert agent.assigned, "the route preference sends the job to the scripted worker first"
    vectors = [item.embedding for item in reply.data]
    assert len(vectors) == 40 and all(abs(numpy.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    assert max(abs(x) for x in vectors[0]) < 0.9  # not the scripted agent's axis vector: all recomputed
    assert reply.model_extra["peer"]["worker_id"] == str(agent_process.id)
    job = Job.objects.get(user=alice)
    assert job.worker_id == agent_process.id and job.status == "completed"
    _assert_captured(job)
    assert Worker.objects.get(id=worker.id).jobs_failed == 1


def test_a_worker_lost_without_word_is_noticed_and_replaced(node_url, alice, alice_key, agent_process,
                                                           minilm_model, second_worker):
    worker, token = second_worker

    async def vanish(ws, frame, n):
        # As if its link died on a node process that could not tell the relay: the database says
        # the worker is offline, and no job.error ever comes.
        await asyncio.to_thread(lambda: Worker.objects.filter(id=worker.id).update(
            status=Worker.Status.OFFLINE, current_job_id=None, channel_name=""))

    with EmbeddingAgent(node_url, token, minilm_model, vanish) as agent:
        wait_for_status(worker.id, Worker.Status.IDLE)
        reply = _client(node_url, alice_key).embeddings.create(
            model=minilm_model["name"], input=RELATED, extra_body={"peer_route": {"order": ["bob-scripted"]}})
    assert len(agent.assigned) == 1
    assert reply.model_extra["peer"]["worker_id"] == str(agent_process.id) and len(reply.data) == 4
    assert Worker.objects.get(id=worker.id).jobs_failed == 1


@pytest.mark.parametrize("scripted", [_refuse, _first_chunk_then_hang_up], ids=["error", "hang-up-mid-job"])
def test_when_no_worker_can_finish_the_job_the_whole_hold_is_refunded(
        node_url, catalogue, alice, alice_key, minilm_model, second_worker, scripted):
    worker, token = second_worker
    before = balance_get(user=alice)
    with EmbeddingAgent(node_url, token, minilm_model, scripted):
        wait_for_status(worker.id, Worker.Status.IDLE)
        with pytest.raises(openai.APIStatusError) as caught:
            _client(node_url, alice_key).embeddings.create(model=minilm_model["name"],
                                                           input=[f"text {i}" for i in range(40)])
    assert caught.value.status_code == 503 and caught.value.body["code"] == "no_worker_available"
    _assert_refunded(alice, before)


def test_a_client_that_leaves_mid_job_is_refunded_and_the_worker_is_free_again(
        node_url, alice, alice_key, agent_process, minilm_model):
    credits_grant(user=alice, credits=5_000)
    before = balance_get(user=alice)
    # 2,048 inputs of ~100 tokens: seconds of work on two CPU threads; the client leaves at once.
    texts = [f"Report {i}: " + "the quarterly figures for the northern region were revised again " * 8
             for i in range(2048)]
    body = json.dumps({"model": minilm_model["name"], "input": texts}).encode()
    url = urlsplit(node_url)
    with socket.create_connection((url.hostname, url.port)) as client:
        client.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {alice_key}"
                       f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while not Job.objects.filter(user=alice, status="running").exists():
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
    # The client has hung up while the worker embeds.
    deadline = time.monotonic() + 30
    while Job.objects.filter(user=alice, hold_state="held").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    job = _assert_refunded(alice, before)
    assert job.error_code == "client_closed"
    wait_for_status(agent_process.id, Worker.Status.IDLE, timeout=10)
    # The agent stopped (it refuses nothing as busy): the next request is served at once.
    reply = _client(node_url, alice_key).embeddings.create(model=minilm_model["name"], input="still here")
    assert reply.model_extra["peer"]["worker_id"] == str(agent_process.id)
    assert "cancelled" in (OUTPUT / "agent.log").read_text().split(str(job.id), 1)[1]


def test_a_body_over_djangos_cap_is_a_413_in_openais_shape(node_url, alice, alice_key, minilm_model):
    with pytest.raises(openai.APIStatusError) as caught:
        _client(node_url, alice_key).embeddings.create(model=minilm_model["name"], input=["word " * 260] * 2048)
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    assert not Job.objects.exists()


def test_out_of_credits_answers_402_with_the_x402_body(node_url, bob, minilm_model):
    _, key = api_key_issue(user=bob)
    with pytest.raises(openai.APIStatusError) as caught:
        _client(node_url, key).embeddings.create(model=minilm_model["name"], input="hello")
    assert caught.value.status_code == 402
    body = caught.value.response.json()
    assert body["error"]["code"] == "insufficient_credits" and body["price_credits"] > 0
    assert body["accepts"][0]["scheme"] == "exact" and not Job.objects.exists()


@pytest.mark.parametrize("call, param, code", [
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}]),
     "model", "unsupported_model"),
    (lambda c, m: c.embeddings.create(model="peer-mixtral", input="hi"), "model", "unsupported_model"),
    (lambda c, m: c.embeddings.create(model=m, input="hi", dimensions=256), "dimensions", "unsupported_dimensions"),
    (lambda c, m: c.embeddings.create(model=m, input=[[101, 7592]]), "input", "unsupported_input"),
    (lambda c, m: c.embeddings.create(model=m, input="word " * 300), "input", "context_length_exceeded"),
    (lambda c, m: c.embeddings.create(model=m, input=""), "input", "invalid_value"),
])
def test_what_the_model_cannot_do_is_a_clear_400_and_nothing_is_held(node_url, alice, alice_key, minilm_model,
                                                                     call, param, code):
    before = balance_get(user=alice)
    with pytest.raises(openai.BadRequestError) as caught:
        call(_client(node_url, alice_key), minilm_model["name"])
    assert (caught.value.body["param"], caught.value.body["code"]) == (param, code)
    assert balance_get(user=alice) == before and not Job.objects.exists()

