"""A worker that lies: about its usage, with frames after its job.done, or with frames for a job
it was never given. The node counts usage from the text it relayed itself and charges only that."""

import asyncio
import json

import httpx
import openai
import pytest
from django.conf import settings
from websockets.sync.client import connect

from apps.credits.pricing import job_price, split_capture
from apps.credits.selectors import balance_get
from apps.credits.services import worker_account
from apps.marketplace.models import Job
from apps.marketplace.tokens import count_tokens
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker import protocol

from .conftest import ScriptedAgent, wait_for_status
from .faults_support import HELLO, assert_money_sound, usdc_outside_issuers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIE = {"prompt_tokens": 5000, "completion_tokens": 900, "total_tokens": 5900}


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=60)


async def _send(ws, frame):
    await ws.send(json.dumps(frame))


async def _stream(ws, frame, words, pause=0.02):
    await _send(ws, {"type": "job.accepted", "job_id": frame["job_id"]})
    for seq, word in enumerate(words):
        await _send(ws, {"type": "job.delta", "job_id": frame["job_id"], "seq": seq, "text": word})
        await asyncio.sleep(pause)


def _done(frame, **extra):
    return {"type": "job.done", "job_id": frame["job_id"], "finish_reason": "stop",
            "model_digest": frame["model_digest"], **extra}


def _honest_charge(job: Job, text: str, tokenizer: str) -> tuple[int, int]:
    """(completion tokens, price) as the node must count them from the relayed text."""
    tokens = min(count_tokens(text, tokenizer_path=tokenizer, add_bos=False)[0], job.params["max_tokens"])
    return tokens, job_price(base=settings.PEER_TIER_BASE_PRICE[job.tier], per_token=job.price_per_token,
                             prompt_tokens=job.prompt_tokens, completion_tokens=tokens)


def test_a_worker_inflating_its_usage_is_paid_only_for_the_tokens_the_node_counted(
        node_url, catalogue, alice, alice_key, bob_worker):
    async def inflate(ws, frame):
        await _stream(ws, frame, ["Hello", " there", "!"])
        await _send(ws, _done(frame, usage=LIE))

    worker, token = bob_worker
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    with ScriptedAgent(node_url, token, catalogue, inflate):
        wait_for_status(worker.id, Worker.Status.IDLE)
        reply = _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO)
    job = Job.objects.get(user=alice)
    tokens, price = _honest_charge(job, "Hello there!", catalogue["path"])
    assert reply.choices[0].message.content == "Hello there!"
    assert reply.usage.completion_tokens == tokens < LIE["completion_tokens"]
    assert reply.usage.prompt_tokens == job.prompt_tokens < LIE["prompt_tokens"]
    assert reply.model_extra["peer"]["usage_source"] == "tokenizer"
    assert (job.completion_tokens, job.charged_amount, job.hold_state) == (tokens, price, "captured")
    assert before - balance_get(user=alice) == price
    assert worker_account(worker=worker).balance == split_capture(price).worker
    assert_money_sound(usdc)


def test_frames_a_worker_sends_after_its_job_done_are_ignored_and_charge_nothing(
        node_url, catalogue, alice, alice_key, bob_worker):
    async def keep_talking(ws, frame):
        await _stream(ws, frame, ["Hello", " there"])
        await _send(ws, _done(frame))
        for seq, word in enumerate([" and", " more", " words"], start=2):
            await _send(ws, {"type": "job.delta", "job_id": frame["job_id"], "seq": seq, "text": word})
        await _send(ws, _done(frame, finish_reason="length", usage=LIE))
        await _send(ws, {"type": "job.error", "job_id": frame["job_id"], "code": "oom", "message": "late"})

    worker, token = bob_worker
    usdc = usdc_outside_issuers()
    with ScriptedAgent(node_url, token, catalogue, keep_talking) as agent:
        wait_for_status(worker.id, Worker.Status.IDLE)
        client = _client(node_url, alice_key)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="gemma-3-270m", messages=HELLO, stream=True) if chunk.choices)
        first = Job.objects.get(user=alice)
        # The same link serves the next job cleanly: nothing of the late frames leaks into it.
        wait_for_status(worker.id, Worker.Status.IDLE)
        again = client.chat.completions.create(model="gemma-3-270m", messages=HELLO)
        assert agent.closed_with is None  # late frames are ignored, not a reason to drop the link
    assert streamed == again.choices[0].message.content == "Hello there"
    first.refresh_from_db()
    tokens, price = _honest_charge(first, "Hello there", catalogue["path"])
    assert (first.output_text, first.finish_reason, first.status) == ("Hello there", "stop", "completed")
    assert (first.completion_tokens, first.charged_amount) == (tokens, price)
    assert Job.objects.filter(user=alice, status="completed").count() == 2
    assert_money_sound(usdc)


def test_a_worker_cannot_write_into_a_job_another_worker_is_running(
        node_url, catalogue, alice, alice_key, bob_worker, mallory):
    async def slow_honest(ws, frame):
        await _stream(ws, frame, ["The", " real", " answer"], pause=0.4)
        await _send(ws, _done(frame))

    intruder, intruder_token = worker_register(operator=mallory, name="mallory-1", tiers=["verified"])
    bond(intruder)
    worker, token = bob_worker
    usdc = usdc_outside_issuers()
    with ScriptedAgent(node_url, token, catalogue, slow_honest), \
            connect(node_url.replace("http://", "ws://") + "/ws/agent/") as forger:
        forger.send(json.dumps(protocol.hello(
            token=intruder_token, agent_version="forger", backends=["builtin"], hardware={},
            models=[{"id": "not-this-model", "digest": "sha256:" + "0" * 64, "backend": "builtin"}])))
        assert json.loads(forger.recv(timeout=10))["type"] == "welcome"
        wait_for_status(worker.id, Worker.Status.IDLE)
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", f"{node_url}/v1/chat/completions",
                             headers={"authorization": f"Bearer {alice_key}"},
                             json={"model": "gemma-3-270m", "messages": HELLO, "stream": True}) as response:
                job_id = str(wait_until(lambda: Job.objects.filter(user=alice, status="running")
                                        .values_list("id", flat=True).first(), what="the job starting"))
                for seq, text in enumerate([" FORGED", " TEXT"], start=100):
                    forger.send(json.dumps({"type": "job.delta", "job_id": job_id, "seq": seq, "text": text}))
                forger.send(json.dumps({"type": "job.done", "job_id": job_id, "finish_reason": "stop",
                                        "model_digest": catalogue["digest"], "usage": LIE}))
                body = response.read().decode()
    assert "FORGED" not in body and body.rstrip().endswith("data: [DONE]")
    job = Job.objects.get(user=alice)
    assert (job.output_text, job.worker_id, job.status) == ("The real answer", worker.id, "completed")
    assert worker_account(worker=intruder).balance == 0
    assert_money_sound(usdc)


def test_a_worker_streaming_past_max_tokens_is_charged_for_max_tokens_at_most(
        node_url, catalogue, alice, alice_key, bob_worker):
    async def ramble(ws, frame):
        await _stream(ws, frame, [f" word{i}" for i in range(12)], pause=0)
        await _send(ws, _done(frame, finish_reason="length", usage=LIE))

    worker, token = bob_worker
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    with ScriptedAgent(node_url, token, catalogue, ramble):
        wait_for_status(worker.id, Worker.Status.IDLE)
        reply = _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO,
                                                                      max_tokens=3)
    job = Job.objects.get(user=alice)
    price = job_price(base=settings.PEER_TIER_BASE_PRICE[job.tier], per_token=job.price_per_token,
                      prompt_tokens=job.prompt_tokens, completion_tokens=3)
    assert reply.usage.completion_tokens == job.completion_tokens == 3
    assert job.charged_amount == price <= job.hold_amount
    assert before - balance_get(user=alice) == price
    assert_money_sound(usdc)


def test_a_stream_missing_a_delta_ends_with_an_error_and_a_refund_instead_of_a_gap(
        node_url, catalogue, alice, alice_key, bob_worker):
    async def skip_one(ws, frame):
        await _send(ws, {"type": "job.accepted", "job_id": frame["job_id"]})
        for seq, word in [(0, "One"), (1, " two"), (3, " four")]:  # delta 2 never arrives
            await _send(ws, {"type": "job.delta", "job_id": frame["job_id"], "seq": seq, "text": word})
        await _send(ws, _done(frame))

    worker, token = bob_worker
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    received = []
    with ScriptedAgent(node_url, token, catalogue, skip_one):
        wait_for_status(worker.id, Worker.Status.IDLE)
        with pytest.raises(openai.APIError, match="refunded"):
            for chunk in _client(node_url, alice_key).chat.completions.create(
                    model="gemma-3-270m", messages=HELLO, stream=True):
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "One two"
    job = Job.objects.get(user=alice)
    assert (job.status, job.hold_state, job.charged_amount) == ("failed", "released", 0)
    assert balance_get(user=alice) == before
    assert_money_sound(usdc)


def test_a_verified_answer_signed_over_other_output_is_refused_refunded_and_costs_reputation(
        node_url, catalogue, alice, alice_key, bob_worker):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from worker.commitment import commitment_sign

    async def forge(ws, frame):
        await _stream(ws, frame, ["Hello", " there"])
        forged = "ab" * 32  # a commitment to some other answer, signed by some other key
        await _send(ws, _done(frame, commitment=forged, signature=commitment_sign(Ed25519PrivateKey.generate(), forged)))

    worker, token = bob_worker
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    with ScriptedAgent(node_url, token, catalogue, forge):
        wait_for_status(worker.id, Worker.Status.IDLE)
        with pytest.raises(openai.APIStatusError) as refused:
            _client(node_url, alice_key).chat.completions.create(model="gemma-3-270m", messages=HELLO)
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "commitment_rejected" and "signed" in refused.value.body["message"]
    job = Job.objects.get(user=alice)
    assert (job.status, job.hold_state, job.charged_amount) == ("failed", "released", 0)
    assert balance_get(user=alice) == before
    assert Worker.objects.get(id=worker.id).reputation < 0.5  # a failed verification: half the way to 0
    assert_money_sound(usdc)
