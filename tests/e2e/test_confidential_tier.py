"""The confidential tier end to end: the official `openai` SDK -> the local proxy (python -m client
proxy's server) -> the node (daphne) -> the bundled agent's host process -> its enclave process
(SIMULATED, allowed on this test node) running the built-in model, and back.

The property: a prompt's plaintext appears in no database table, no log line of the node (at
DEBUG), and no frame or enclave line the agent's host process saw (its wire log at DEBUG). The
same searches find a verified-tier prompt, so they can fail.
"""

import json
import threading
import time
import uuid
from contextlib import contextmanager

import httpx
import openai
import pytest

from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from client.confidential import AttestationPolicy
from client.proxy import ProxyConfig, make_server

from .confidential_support import database_holds, enclave_agent
from .conftest import OUTPUT, running_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def confidential_node(django_db_setup, django_db_blocker):
    with running_node("confidential-node.log", PEER_ALLOW_SIMULATED_ENCLAVE="1", PEER_LOG_LEVEL="DEBUG") as url:
        yield url


@contextmanager
def proxy(node_url, api_key):
    server = make_server(ProxyConfig(upstream=node_url, api_key=api_key,
                                     policy=AttestationPolicy(allow_simulated=True)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_confidential_chat_through_the_proxy_leaves_no_plaintext_on_the_node_or_the_agents_host(
        confidential_node, catalogue, alice_key, bob):
    secret = f"ZEBRA-PLUM-{uuid.uuid4().hex[:8]}"
    prompt = f"Repeat after me exactly: {secret}"
    with enclave_agent(confidential_node, bob, catalogue["path"], "bob-enclave") as (_, worker, agent_log), \
            proxy(confidential_node, alice_key) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused-by-the-proxy", max_retries=0)
        answer = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, seed=3,
                                                messages=[{"role": "user", "content": prompt}])
        stream = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, seed=3, stream=True,
                                                messages=[{"role": "user", "content": prompt}])
        chunks = list(stream)
        # A control: a verified-tier prompt, which the node must read to route and verify.
        control = f"CONTROL-{uuid.uuid4().hex[:8]}"
        verified = _verified_worker_answers(confidential_node, alice_key, bob, catalogue, control)

    text = answer.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and streamed == text  # greedy, same seed: the same answer both ways
    peer = answer.model_extra["peer"]
    assert peer["verified"] == {"attestation": True, "signature": True, "simulated": True}
    assert peer["tier"] == "confidential" and peer["worker_id"] == str(worker.id)
    assert peer["attestation"]["simulated"] is True and peer["attestation"]["ok"] is True
    closing = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert closing.model_extra["peer"]["verified"]["signature"] is True

    jobs = list(Job.objects.filter(tier="confidential").order_by("created_at"))
    assert [j.status for j in jobs] == ["completed", "completed"] and all(j.messages == [] for j in jobs)
    assert all(j.charged_amount > 0 and j.completion_tokens >= 1 for j in jobs)

    node_log = (OUTPUT / "confidential-node.log").read_text()
    host_log = agent_log.read_text()
    assert "job.delta" in host_log and '"sealed"' in host_log  # the wire log did capture the jobs
    assert database_holds(secret) == [] and secret not in node_log and secret not in host_log
    if len(text) >= 12:  # a short answer could occur by chance in a log; a long one could not
        assert database_holds(text) == [] and text not in node_log and text not in host_log
    # The same searches find what the node does see: the verified prompt is in its jobs table.
    assert verified and "marketplace_job" in database_holds(control)


def _verified_worker_answers(node_url, api_key, operator, catalogue, control):
    from tests.conftest import bond

    from .conftest import builtin_agent_running

    worker, token = worker_register(operator=operator, name="bob-verified", tiers=["verified"])
    bond(worker)
    with builtin_agent_running(node_url, worker, token, catalogue["path"], "--threads", "2"):
        response = httpx.post(f"{node_url}/v1/chat/completions", timeout=120,
                              headers={"authorization": f"Bearer {api_key}"},
                              json={"model": MODEL, "max_tokens": 4, "peer_tier": "verified",
                                    "messages": [{"role": "user", "content": control}]})
    return response.status_code == 200


def test_the_proxy_reattests_and_reseals_when_its_enclave_is_gone(confidential_node, catalogue, alice_key, bob):
    with proxy(confidential_node, alice_key) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        ask = dict(model=MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi"}])
        with enclave_agent(confidential_node, bob, catalogue["path"], "bob-enclave-a") as (first, first_worker, _):
            client.chat.completions.create(**ask)  # the proxy now holds only this enclave's verdict
            with enclave_agent(confidential_node, bob, catalogue["path"], "bob-enclave-b") as (_, second_worker, _):
                first.terminate()
                first.wait(timeout=15)
                _wait_offline(first_worker)

                answer = client.chat.completions.create(**ask)

    assert answer.model_extra["peer"]["worker_id"] == str(second_worker.id)
    assert answer.model_extra["peer"]["verified"]["signature"] is True
    refused = Job.objects.get(tier="confidential", error_code="enclave_unavailable")
    assert refused.charged_amount == 0 and refused.status == "failed"


def _wait_offline(worker):
    deadline = time.monotonic() + 30
    while Worker.objects.filter(id=worker.id).exclude(status=Worker.Status.OFFLINE).exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_node_refuses_a_confidential_request_that_carries_its_prompt_in_the_clear(confidential_node, alice_key):
    client = openai.OpenAI(base_url=f"{confidential_node}/v1", api_key=alice_key, max_retries=0)

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"peer_tier": "confidential"})

    assert refused.value.body["code"] == "plaintext_in_confidential_request"
    assert not Job.objects.exists()


def test_attestation_needs_an_enclave_and_a_well_formed_nonce(confidential_node, catalogue, alice_key):
    headers = {"authorization": f"Bearer {alice_key}"}

    none = httpx.get(f"{confidential_node}/v1/attestation", params={"model": MODEL}, headers=headers, timeout=30)
    bad = httpx.get(f"{confidential_node}/v1/attestation", params={"model": MODEL, "nonce": "short"},
                    headers=headers, timeout=30)
    unknown = httpx.get(f"{confidential_node}/v1/attestation", params={"model": "nope"}, headers=headers, timeout=30)

    assert none.status_code == 503 and none.json()["error"]["code"] == "no_attested_enclave"
    assert none.headers["retry-after"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "nonce"
    assert unknown.status_code == 404 and json.loads(unknown.text)["error"]["code"] == "model_not_found"
