"""The local confidential proxy (client/proxy.py), with the official `openai` SDK as the client
and a fake node (tests/client/fake_confidential_node.py) that runs the node's and the enclaves'
side of docs/confidential.md with real cryptography.

The node is mallory's to run here: it sees what the proxy sends, and its faults are the ways an
enclave listing or an answer can be wrong.
"""

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from client import proxy as proxy_module
from client.confidential import AttestationPolicy, attest
from client.proxy import ProxyConfig, make_server
from tests.client.fake_confidential_node import (
    API_KEY, CODE, MODEL, FakeConfidentialNode, answer_for,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Summarise the medical file of patient 4711, diagnosis: hypertension."
ANSWER = answer_for({"messages": [{"role": "user", "content": PROMPT}]})
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]


@pytest.fixture
def node():
    with FakeConfidentialNode() as node:
        yield node


@pytest.fixture
def start_proxy(node):
    servers = []

    def start(**policy) -> openai.OpenAI:
        policy = {"allow_simulated": True, "allowed_code_measurements": frozenset({CODE}),
                  **policy}
        server = make_server(ProxyConfig(upstream=node.url + "/v1", api_key=API_KEY, port=0,
                                         policy=AttestationPolicy(**policy)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="anything",
                             max_retries=0)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sdk(start_proxy):
    return start_proxy()


@pytest.fixture
def first_listed_enclave_first(monkeypatch):
    """The proxy chooses at random; failover tests need to know which enclave it tries first."""
    monkeypatch.setattr(proxy_module.secrets, "choice", lambda enclaves: enclaves[0])


def chat(sdk, **more):
    return sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **more)


def streamed_text(sdk, **more) -> tuple[str, list]:
    chunks = list(chat(sdk, stream=True, **more))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, chunks


def test_a_chat_comes_back_opened_and_checked(sdk):
    completion = chat(sdk, max_tokens=64)

    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    peer = completion.to_dict()["peer"]
    assert peer["verified"] == {"attestation": True, "signature": True, "simulated": True}
    assert "sealed" not in peer


def test_a_streamed_chat_comes_back_piece_by_piece(sdk):
    text, chunks = streamed_text(sdk, stream_options={"include_usage": True})

    assert text == ANSWER
    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(content_chunks) > 1
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all("peer" not in chunk.to_dict() for chunk in content_chunks)
    closing = next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
    assert closing.to_dict()["peer"]["verified"]["signature"] is True
    assert chunks[-1].usage.completion_tokens == len(content_chunks)


def test_the_node_sees_neither_the_prompt_nor_the_answer(sdk, node):
    chat(sdk, max_tokens=64, temperature=0, seed=7, stop=["\n\n"])
    streamed_text(sdk)

    assert len(node.chat_bodies) == 2
    for raw in node.chat_bodies:
        assert PROMPT.encode() not in raw and ANSWER.encode() not in raw
        assert b"You are terse" not in raw
        body = json.loads(raw)
        assert body["peer_tier"] == "confidential"
        assert "messages" not in body and "stop" not in body
    assert set(json.loads(node.chat_bodies[0])) == {
        "model", "max_tokens", "temperature", "seed", "peer_tier", "peer_sealed"}


def test_it_attests_once_and_uses_the_verified_enclaves_until_they_expire(sdk, node):
    chat(sdk)
    chat(sdk)

    assert len(node.attestation_nonces) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_it_fails_over_when_the_node_says_the_enclave_is_unavailable(
        sdk, node, first_listed_enclave_first, stream):
    node.enclaves[0].faults.unavailable = True

    text = streamed_text(sdk)[0] if stream else chat(sdk).choices[0].message.content

    assert text == ANSWER
    assert node.served_by == ["worker-a", "worker-b"]
    # Re-attested with a fresh nonce, and sealed afresh to the other enclave.
    assert len(set(node.attestation_nonces)) == 2
    first, second = (json.loads(raw)["peer_sealed"] for raw in node.chat_bodies)
    assert first["enclave_key"] != second["enclave_key"]
    assert first["reply_key"] != second["reply_key"]


def test_it_fails_over_when_the_stream_opens_with_enclave_unavailable(
        sdk, node, first_listed_enclave_first):
    node.enclaves[0].faults.unavailable_in_stream = True

    text, chunks = streamed_text(sdk)

    assert text == ANSWER
    assert node.served_by == ["worker-a", "worker-b"]


def test_when_every_enclave_is_unavailable_the_client_gets_the_nodes_error(sdk, node):
    for enclave in node.enclaves:
        enclave.faults.unavailable = True

    with pytest.raises(openai.APIStatusError) as error:
        chat(sdk)

    assert error.value.status_code == 503
    assert error.value.code == "enclave_unavailable"
    assert sorted(node.served_by) == ["worker-a", "worker-b"]


@pytest.mark.parametrize("fault, code", [("wrong_signature", "enclave_signature_invalid"),
                                         ("reordered_chunks", "sealed_answer_invalid")])
def test_an_answer_that_is_not_the_enclaves_is_refused(sdk, node, fault, code):
    for enclave in node.enclaves:
        setattr(enclave.faults, fault, True)

    with pytest.raises(openai.APIStatusError) as error:
        chat(sdk)

    assert error.value.status_code == 502
    assert error.value.code == code
    assert ANSWER not in error.value.response.text


@pytest.mark.parametrize("fault, code", [("wrong_signature", "enclave_signature_invalid"),
                                         ("reordered_chunks", "sealed_answer_invalid")])
def test_a_stream_that_is_not_the_enclaves_ends_in_an_error(sdk, node, fault, code):
    for enclave in node.enclaves:
        setattr(enclave.faults, fault, True)
    received = []

    with pytest.raises(openai.APIError) as error:
        for chunk in chat(sdk, stream=True):
            received.append(chunk)

    assert error.value.code == code
    assert not any(chunk.choices and chunk.choices[0].finish_reason for chunk in received)


@pytest.mark.parametrize("fault, reason", [
    ("stale_nonce", "nonce is not the expected one"),
    ("listed_key_differs", "enclave key is not the listed enclave_key"),
    ("other_measurement", "code measurement"),
])
def test_an_enclave_whose_evidence_does_not_hold_is_never_used(sdk, node, fault, reason):
    for enclave in node.enclaves:
        setattr(enclave.faults, fault, True)

    with pytest.raises(openai.APIStatusError) as error:
        chat(sdk)

    assert error.value.status_code == 503
    assert error.value.code == "no_attested_enclave"
    assert reason in error.value.message
    assert node.chat_bodies == []


def test_only_the_enclave_whose_evidence_holds_is_used(sdk, node):
    node.enclaves[0].faults.stale_nonce = True

    for _ in range(4):
        assert chat(sdk).choices[0].message.content == ANSWER

    assert node.served_by == ["worker-b"] * 4


def test_simulated_enclaves_are_refused_unless_allowed_and_it_says_how(start_proxy, node):
    sdk = start_proxy(allow_simulated=False)

    with pytest.raises(openai.APIStatusError) as error:
        chat(sdk)

    assert error.value.status_code == 503
    assert error.value.code == "no_attested_enclave"
    assert "--allow-simulated" in error.value.message
    assert node.chat_bodies == []


def test_attest_refuses_evidence_it_cannot_read_or_verify_without_raising(node):
    node.enclaves[0].listing = lambda nonce: {"worker": "worker-a", "kind": "simulated",
                                              "evidence": {"kind": "simulated", "version": 1}}
    node.enclaves[1].listing = lambda nonce: {"worker": "worker-b", "kind": "tdx",
                                              "evidence": {"kind": "tdx"}}

    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        enclaves, problems = attest(http, MODEL, policy=AttestationPolicy(allow_simulated=True))

    assert enclaves == []
    assert problems[0].startswith("worker worker-a: unreadable evidence")
    assert problems[1].startswith("worker worker-b: unreadable evidence: tdx evidence has exactly the fields")


def test_the_verified_tier_passes_through_unsealed(sdk, node):
    completion = chat(sdk, extra_body={"peer_tier": "verified"})

    assert completion.choices[0].message.content == "plain: " + PROMPT
    body = json.loads(node.chat_bodies[0])
    assert body["peer_tier"] == "verified" and body["messages"] == MESSAGES
    assert "peer_sealed" not in body and node.attestation_nonces == []


def test_models_are_listed_by_the_node_with_the_proxys_key(sdk):
    assert [model.id for model in sdk.models.list()] == [MODEL]


def test_a_body_that_is_not_json_is_a_400_in_openais_shape(sdk):
    response = httpx.post(f"{sdk.base_url}chat/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_command_explains_itself():
    result = subprocess.run([sys.executable, "-m", "client", "proxy", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0
    assert "--allow-simulated" in result.stdout and "base_url" in result.stdout
