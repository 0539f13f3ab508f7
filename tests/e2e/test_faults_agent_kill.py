"""A worker agent process killed with SIGKILL (no close frame, no job.error: the OS just drops
its socket). Mid-stream the client gets an error event and a full refund; before the first token
the job moves to another worker and the client never notices."""

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from tests.support.mock_backends import DEFAULT_TEXT, MockOpenAI

from .conftest import wait_for_status
from .faults_support import (HELLO, PUBLIC_NAME, assert_money_sound, http_agent, mock_catalogue,
                             usdc_outside_issuers, wait_until)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=60)


def _worker(operator, name):
    worker, token = worker_register(operator=operator, name=name, tiers=["open", "verified"])
    return bond(worker), token


def _first_words(count: int) -> str:
    """What the mock model says in `count` tokens (a word with the space before it is a token)."""
    return "".join(re.findall(r"\s*\S+", DEFAULT_TEXT)[:count])


def test_an_agent_killed_mid_stream_ends_the_stream_with_an_error_a_full_refund_and_an_offline_worker(
        node_url, alice, alice_key, bob):
    mock_catalogue()
    worker, token = _worker(bob, "bob-http-1")
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    received = []
    with MockOpenAI(tokens_per_second=8) as backend, http_agent(node_url, token, backend.url) as agent:
        wait_for_status(worker.id, Worker.Status.IDLE)
        stream = _client(node_url, alice_key).chat.completions.create(
            model=PUBLIC_NAME, messages=HELLO, stream=True, max_tokens=25)
        with pytest.raises(openai.APIError, match="refunded"):
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    if len(received) == 3:
                        os.kill(agent.pid, signal.SIGKILL)
        assert agent.wait(timeout=10) == -signal.SIGKILL
    assert 3 <= len(received) < 25 and DEFAULT_TEXT.startswith("".join(received))
    job = Job.objects.get(user=alice)
    assert (job.status, job.hold_state, job.charged_amount, job.error_code) == \
           ("failed", "released", 0, "worker_failed")
    assert balance_get(user=alice) == before and held_get(user=alice) == 0
    worker.refresh_from_db()
    assert (worker.status, worker.current_job_id, worker.channel_name) == ("offline", None, "")
    assert_money_sound(usdc)


def test_a_restarted_agent_serves_again_after_being_killed(node_url, alice, alice_key, bob):
    mock_catalogue()
    worker, token = _worker(bob, "bob-http-1")
    usdc = usdc_outside_issuers()
    with MockOpenAI() as backend:
        with http_agent(node_url, token, backend.url) as agent:
            wait_for_status(worker.id, Worker.Status.IDLE)
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)
            wait_for_status(worker.id, Worker.Status.OFFLINE)
        with http_agent(node_url, token, backend.url):
            wait_for_status(worker.id, Worker.Status.IDLE)
            reply = _client(node_url, alice_key).chat.completions.create(model=PUBLIC_NAME, messages=HELLO,
                                                                          max_tokens=4)
    assert reply.choices[0].message.content == _first_words(4)
    assert_money_sound(usdc)


def test_an_agent_killed_before_its_first_token_is_replaced_by_another_worker_transparently(
        node_url, alice, alice_key, bob):
    mock_catalogue()
    doomed, doomed_token = _worker(bob, "bob-doomed")
    spare, spare_token = _worker(bob, "bob-spare")
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    # The doomed worker's server is slow to start (10 s before its first token): killed meanwhile.
    with MockOpenAI(tokens_per_second=0.1) as slow, MockOpenAI() as fast, \
            http_agent(node_url, doomed_token, slow.url) as doomed_agent, \
            http_agent(node_url, spare_token, fast.url), ThreadPoolExecutor(1) as pool:
        wait_for_status(doomed.id, Worker.Status.IDLE)
        wait_for_status(spare.id, Worker.Status.IDLE)
        reply = pool.submit(_client(node_url, alice_key).chat.completions.create, model=PUBLIC_NAME,
                            messages=HELLO, max_tokens=6, extra_body={"peer_route": {"order": ["bob-doomed"]}})
        wait_until(lambda: slow.bodies("/v1/chat/completions"), what="the doomed worker's backend call")
        assert Job.objects.get(user=alice).worker_id == doomed.id
        os.kill(doomed_agent.pid, signal.SIGKILL)
        reply = reply.result(timeout=60)
    assert reply.choices[0].message.content == _first_words(6)
    assert reply.choices[0].finish_reason == "length"
    job = Job.objects.get(user=alice)
    assert (job.worker_id, job.status, job.hold_state) == (spare.id, "completed", "captured")
    assert before - balance_get(user=alice) == job.charged_amount > 0
    assert Worker.objects.get(id=doomed.id).status == Worker.Status.OFFLINE
    assert_money_sound(usdc)
