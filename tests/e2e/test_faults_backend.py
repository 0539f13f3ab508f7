"""The inference server behind an agent is down, fails, or dies mid-stream (the agent's `openai`
backend against tests/support/mock_backends.py): a clear error, a refund, or a failover."""

import re

import httpx
import openai
import pytest

from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from tests.support.mock_backends import DEFAULT_TEXT, MockOpenAI

from .conftest import OUTPUT, _free_port, wait_for_status
from .faults_support import (HELLO, PUBLIC_NAME, assert_money_sound, http_agent, mock_catalogue,
                             usdc_outside_issuers)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _client(node_url, key):
    return openai.OpenAI(base_url=f"{node_url}/v1", api_key=key, max_retries=0, timeout=60)


def _worker(operator, name):
    worker, token = worker_register(operator=operator, name=name, tiers=["open", "verified"])
    return bond(worker), token


def _first_words(count: int) -> str:
    return "".join(re.findall(r"\s*\S+", DEFAULT_TEXT)[:count])


def _assert_refunded(user, before, code):
    job = Job.objects.get(user=user)
    assert (job.status, job.hold_state, job.charged_amount, job.error_code) == ("failed", "released", 0, code)
    assert balance_get(user=user) == before and held_get(user=user) == 0
    return job


def test_an_agent_whose_backend_server_is_down_exits_with_a_clear_error_and_stays_offline(node_url, bob):
    mock_catalogue()
    worker, token = _worker(bob, "bob-no-backend")
    dead = f"http://127.0.0.1:{_free_port()}"
    (OUTPUT / "agent-dead-backend.log").unlink(missing_ok=True)
    with http_agent(node_url, token, dead, log_name="agent-dead-backend.log") as agent:
        assert agent.wait(timeout=30) == 1
    log = (OUTPUT / "agent-dead-backend.log").read_text()
    assert f"cannot reach the OpenAI-compatible server at {dead}" in log
    assert Worker.objects.get(id=worker.id).status == Worker.Status.OFFLINE


@pytest.mark.parametrize("fault", ["server stopped", "server answers 500"])
def test_a_backend_failing_before_the_first_token_fails_over_to_another_worker(node_url, alice, alice_key, bob,
                                                                              fault):
    mock_catalogue()
    broken, broken_token = _worker(bob, "bob-broken")
    spare, spare_token = _worker(bob, "bob-spare")
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    with MockOpenAI() as failing, MockOpenAI() as healthy, \
            http_agent(node_url, broken_token, failing.url), http_agent(node_url, spare_token, healthy.url):
        wait_for_status(broken.id, Worker.Status.IDLE)
        wait_for_status(spare.id, Worker.Status.IDLE)
        if fault == "server stopped":
            failing.stop()  # after the agent connected: its next job finds nothing listening
        else:
            failing.status = 500
        reply = _client(node_url, alice_key).chat.completions.create(
            model=PUBLIC_NAME, messages=HELLO, max_tokens=5, extra_body={"peer_route": {"order": ["bob-broken"]}})
        # The failed worker's agent is still connected, and idle again.
        wait_for_status(broken.id, Worker.Status.IDLE)
    assert reply.choices[0].message.content == _first_words(5)
    job = Job.objects.get(user=alice)
    assert (job.worker_id, job.status, job.hold_state) == (spare.id, "completed", "captured")
    assert before - balance_get(user=alice) == job.charged_amount
    assert Worker.objects.get(id=broken.id).jobs_failed == 1
    assert_money_sound(usdc)


def test_a_backend_down_on_the_only_worker_answers_503_naming_the_failure_and_refunds(
        node_url, alice, alice_key, bob):
    mock_catalogue()
    broken, token = _worker(bob, "bob-broken")
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    with MockOpenAI() as failing, http_agent(node_url, token, failing.url):
        wait_for_status(broken.id, Worker.Status.IDLE)
        failing.stop()
        response = httpx.post(f"{node_url}/v1/chat/completions", timeout=60,
                              headers={"authorization": f"Bearer {alice_key}"},
                              json={"model": PUBLIC_NAME, "messages": HELLO, "max_tokens": 5})
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "no_worker_available"
    assert "backend_unavailable" in error["message"] and "not charged" in error["message"]
    _assert_refunded(alice, before, "no_worker_available")
    assert_money_sound(usdc)


def test_a_backend_dying_mid_stream_ends_the_stream_with_an_error_and_the_worker_serves_the_next_job(
        node_url, alice, alice_key, bob):
    mock_catalogue()
    worker, token = _worker(bob, "bob-flaky")
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    client = _client(node_url, alice_key)
    received = []
    with MockOpenAI(tokens_per_second=50) as backend, http_agent(node_url, token, backend.url):
        wait_for_status(worker.id, Worker.Status.IDLE)
        backend.drop_after = 4  # the server closes the connection after four tokens
        with pytest.raises(openai.APIError, match="refunded"):
            for chunk in client.chat.completions.create(model=PUBLIC_NAME, messages=HELLO, stream=True,
                                                        max_tokens=20):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        assert "".join(received) == _first_words(4)
        failed = _assert_refunded(alice, before, "worker_failed")
        assert "backend_unavailable" in failed.error_message
        backend.drop_after = None
        wait_for_status(worker.id, Worker.Status.IDLE)
        reply = client.chat.completions.create(model=PUBLIC_NAME, messages=HELLO, max_tokens=3)
    assert reply.choices[0].message.content == _first_words(3)
    assert reply.model_extra["peer"]["worker_id"] == str(worker.id)
    assert_money_sound(usdc)
