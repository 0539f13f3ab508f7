"""Bad input and faults: each gets a clear OpenAI-shaped error, never a 5xx crash, and the ledger
balances afterwards (checked for every test by tests/conftest.py)."""

import asyncio
import base64
import json
import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from apps.accounts.services import api_key_issue, api_key_revoke
from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register

from tests.conftest import bond

from .conftest import ScriptedAgent, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
HELLO = [{"role": "user", "content": "hello"}]


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=60)


def _post(node_url, key, body, **kwargs):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{node_url}/v1/chat/completions", headers=headers,
                      timeout=60, **({"content": body} if isinstance(body, (str, bytes)) else {"json": body}),
                      **kwargs)


def _assert_refunded(user, before):
    assert balance_get(user=user) == before and held_get(user=user) == 0
    job = Job.objects.get(user=user)
    assert (job.status, job.hold_state, job.charged_amount) == ("failed", "released", 0)
    return job


async def _stream_words(ws, frame, words, then=None):
    await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))
    for seq, word in enumerate(words):
        await ws.send(json.dumps({"type": "job.delta", "job_id": frame["job_id"], "seq": seq, "text": word}))
        await asyncio.sleep(0.05)
    if then is not None:
        return await then(ws, frame)
    await ws.send(json.dumps({"type": "job.done", "job_id": frame["job_id"], "finish_reason": "stop",
                              "model_digest": frame["model_digest"]}))


@pytest.mark.parametrize("body, param", [
    ("{not json", None), ('{"model": "gemma-3-270m"}', "messages"),
    ('{"model": "gemma-3-270m", "messages": []}', "messages"),
    ('{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "peer_tier": "gold"}', "peer_tier"),
    ('{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    ('{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999999}', "max_tokens"),
])
def test_bad_requests_get_a_400_in_openais_error_shape_and_nothing_is_held(node_url, catalogue, alice, alice_key,
                                                                             body, param):
    before = balance_get(user=alice)
    response = _post(node_url, alice_key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
    assert balance_get(user=alice) == before and not Job.objects.exists()


def test_an_unknown_model_is_a_404(node_url, catalogue, alice_key):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(node_url, alice_key).chat.completions.create(model="gpt-9", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("key", ["", "pc_unknown", "not even a key"])
def test_a_bad_key_is_a_401(node_url, catalogue, key):
    response = _post(node_url, key, {"model": "gemma-3-270m", "messages": HELLO})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_a_revoked_key_is_a_401(node_url, catalogue, alice):
    api_key, raw = api_key_issue(user=alice)
    api_key_revoke(user=alice, key_id=api_key.id)
    with pytest.raises(openai.AuthenticationError):
        _client(node_url, raw).models.list()


def test_out_of_credits_answers_402_with_the_x402_body_and_header(node_url, catalogue, bob):
    _, key = api_key_issue(user=bob)
    response = _post(node_url, key, {"model": "peer-mixtral", "messages": HELLO, "peer_tier": "verified"})
    assert response.status_code == 402
    body = response.json()
    assert body["scheme"] == "x402" and body["price_credits"] > 0 and body["error"]["code"] == "insufficient_credits"
    assert body["x402Version"] == 2 and body["accepts"][0]["scheme"] == "exact"
    assert int(body["accepts"][0]["amount"]) == body["price_micro_usdc"]
    header = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    assert header["accepts"] == body["accepts"] and not Job.objects.exists()


def test_a_tier_nobody_serves_fails_at_once_with_a_503_and_a_full_refund(node_url, catalogue, alice, alice_key):
    before = balance_get(user=alice)
    response = _post(node_url, alice_key, {"model": "gemma-3-270m", "messages": HELLO, "peer_tier": "open"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_workers"
    _assert_refunded(alice, before)


def test_when_every_worker_is_offline_the_job_waits_its_bounded_time_then_refunds(
        node_url, catalogue, alice, alice_key, bob_worker):
    before, started = balance_get(user=alice), time.monotonic()
    response = _post(node_url, alice_key, {"model": "gemma-3-270m", "messages": HELLO})
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker_available"
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started >= 3.5  # PEER_QUEUE_TIMEOUT is 4s in the test node
    _assert_refunded(alice, before)


def test_an_agent_that_drops_mid_stream_ends_the_stream_with_an_error_and_a_full_refund(
        node_url, catalogue, alice, alice_key, bob_worker):
    async def drop(ws, frame):
        return "hang up"

    async def on_job(ws, frame):
        return await _stream_words(ws, frame, ["Once", " upon"], then=drop)

    before = balance_get(user=alice)
    with ScriptedAgent(node_url, bob_worker[1], catalogue, on_job):
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        stream = _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO,
                                                                       stream=True)
        received = []
        with pytest.raises(openai.APIError, match="refunded"):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Once upon"
    _assert_refunded(alice, before)


def test_an_agent_sending_garbage_is_dropped_and_the_job_refunded(node_url, catalogue, alice, alice_key, bob_worker):
    async def garbage(ws, frame):
        await ws.send("this is not a frame")
        await asyncio.sleep(1)

    async def on_job(ws, frame):
        return await _stream_words(ws, frame, ["Hi"], then=garbage)

    before = balance_get(user=alice)
    with ScriptedAgent(node_url, bob_worker[1], catalogue, on_job) as agent:
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        response = _post(node_url, alice_key, {"model": "gemma-3-270m", "messages": HELLO})
        assert response.status_code == 502 and response.json()["error"]["code"] == "worker_failed"
        deadline = time.monotonic() + 10
        while agent.closed_with is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert agent.received[-1]["type"] == "error" and agent.closed_with == 4002
    _assert_refunded(alice, before)
    assert Worker.objects.get(id=bob_worker[0].id).status == Worker.Status.OFFLINE


def test_a_worker_failing_before_its_first_token_is_replaced_transparently(
        node_url, catalogue, alice, alice_key, bob, bob_worker):
    async def refuse(ws, frame):
        await ws.send(json.dumps({"type": "job.error", "job_id": frame["job_id"], "code": "oom",
                                  "message": "out of memory"}))

    async def serve(ws, frame):
        await _stream_words(ws, frame, ["Hello", " there"])

    second, second_token = worker_register(operator=bob, name="bob-cpu-2", tiers=["verified"])
    bond(second)
    with ScriptedAgent(node_url, bob_worker[1], catalogue, refuse), \
            ScriptedAgent(node_url, second_token, catalogue, serve):
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        wait_for_status(second.id, Worker.Status.IDLE)
        # The least recently used worker goes first: make the refusing one that.
        Worker.objects.filter(id=second.id).update(last_job_at="2000-01-01T00:00:00Z")
        Worker.objects.filter(id=bob_worker[0].id).update(last_job_at=None)
        reply = _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO)
    assert reply.choices[0].message.content == "Hello there"
    job = Job.objects.get(user=alice)
    assert job.worker_id == second.id and job.status == "completed"


def test_a_client_leaving_a_stream_cancels_the_job_on_the_worker(node_url, catalogue, alice, alice_key, bob_worker):
    async def slow(ws, frame):
        words = [f" w{i}" for i in range(200)]
        await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))
        for seq, word in enumerate(words):
            await ws.send(json.dumps({"type": "job.delta", "job_id": frame["job_id"], "seq": seq, "text": word}))
            await asyncio.sleep(0.05)
            if any(f["type"] == "job.cancel" for f in agent.received):
                break
        await ws.send(json.dumps({"type": "job.done", "job_id": frame["job_id"], "finish_reason": "cancelled",
                                  "model_digest": frame["model_digest"]}))

    agent = ScriptedAgent(node_url, bob_worker[1], catalogue, slow)
    with agent:
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        with httpx.stream("POST", f"{node_url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {alice_key}"},
                          json={"model": "gemma-3-270m", "messages": HELLO, "stream": True}) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not Job.objects.filter(user=alice).exclude(hold_state="held").exists():
            time.sleep(0.1)
    job = Job.objects.get(user=alice)
    assert job.hold_state != "held" and job.charged_amount < job.hold_amount


def test_a_full_queue_answers_429_with_retry_after_and_holds_nothing(node_url, catalogue, alice, alice_key, bob_worker,
                                                                     settings):
    from django.utils import timezone

    from apps.marketplace.requests import parse_chat_request
    from apps.marketplace.services import job_create
    from apps.workers.models import CatalogueModel

    from apps.credits.services import credits_grant

    credits_grant(user=alice, credits=100_000)
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    chat = parse_chat_request(json.dumps({"model": "gemma-3-270m", "messages": HELLO}).encode(),
                              default_tier="verified", default_max_tokens=16, max_tokens_limit=1024)
    for _ in range(settings.PEER_QUEUE_LIMIT):  # the node's default limit: the queue is now full
        job_create(user=alice, chat=chat, entry=entry)
    held = held_get(user=alice)
    response = _post(node_url, alice_key, {"model": "gemma-3-270m", "messages": HELLO})
    assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) > 0 and held_get(user=alice) == held
    # Release the queued holds (their relay never ran) as the reaper would, for the ledger check.
    from apps.marketplace.models import Job
    from apps.marketplace.services import jobs_reap_stale

    Job.objects.filter(user=alice).update(deadline_at=timezone.now())
    assert jobs_reap_stale() == settings.PEER_QUEUE_LIMIT


def test_a_worker_gone_silent_is_reaped_and_the_waiting_client_hears_at_once(
        node_url, catalogue, alice, alice_key, bob_worker, settings):
    """The reaper may run in any process (Celery beat, another node): it refunds the job and tells
    the relay over the channel layer, so the client is not left waiting for the job's timeout."""
    from apps.workers.tasks import workers_reap_silent_task

    async def go_silent(ws, frame):
        await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))

    before = balance_get(user=alice)
    with ScriptedAgent(node_url, bob_worker[1], catalogue, go_silent):
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        outcome = {}

        def call():
            try:
                _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO)
            except openai.APIStatusError as exc:
                outcome.update(status=exc.status_code, code=exc.body.get("code"))

        import threading

        client = threading.Thread(target=call)
        client.start()
        wait_for_status(bob_worker[0].id, Worker.Status.BUSY)
        # Silent by the reaper's limit here, not yet by the node's own (45 s): the reaper acts first.
        settings.PEER_WORKER_SILENCE_LIMIT = 10
        Worker.objects.filter(id=bob_worker[0].id).update(last_seen_at=timezone.now() - timedelta(seconds=20))
        workers_reap_silent_task.apply()
        client.join(timeout=30)  # the job's own timeout is 300 s: only the reaper's word ends it sooner
        assert not client.is_alive(), "the client was left waiting after the reaper refunded its job"
    assert (outcome["status"], outcome["code"]) == (504, "worker_lost")
    job = _assert_refunded(alice, before)
    assert job.error_code == "worker_lost"


def test_a_body_over_the_size_cap_is_a_413_in_openais_shape_and_nothing_is_held(node_url, catalogue, alice,
                                                                               alice_key):
    before = balance_get(user=alice)
    huge = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
    response = _post(node_url, alice_key, huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert balance_get(user=alice) == before and not Job.objects.exists()


def test_a_worker_whose_link_died_unseen_is_left_for_the_next_one_after_the_silence_limit(
        catalogue, alice, alice_key, bob, bob_worker):
    """The node process holding a worker's link can die without a word (SIGKILL, a lost host):
    the worker still looks busy with the job. The relay notices the silence (no frame, no
    heartbeat) and moves the job on before its first token, as for any failed worker."""
    from .conftest import running_node

    async def accept_then_vanish(ws, frame):
        await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))
        # ScriptedAgent sends no heartbeats: from here on it is silent, and stays connected.

    async def serve(ws, frame):
        await _stream_words(ws, frame, ["still", " here"])

    second, second_token = worker_register(operator=bob, name="bob-cpu-2", tiers=["verified"])
    bond(second)
    with running_node("node-silence.log", PEER_WORKER_SILENCE_LIMIT="3") as url, \
            ScriptedAgent(url, bob_worker[1], catalogue, accept_then_vanish), \
            ScriptedAgent(url, second_token, catalogue, serve):
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        wait_for_status(second.id, Worker.Status.IDLE)
        Worker.objects.filter(id=second.id).update(last_job_at="2000-01-01T00:00:00Z")
        Worker.objects.filter(id=bob_worker[0].id).update(last_job_at=None)  # the silent one goes first
        reply = _client(url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO)
    assert reply.choices[0].message.content == "still here"
    job = Job.objects.get(user=alice)
    assert job.worker_id == second.id and job.status == "completed"
