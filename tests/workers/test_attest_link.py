"""Attestation over the agent link (apps/workers/attest_link.py, apps/verification/attestation.py):
the node challenges an enclave with its own nonce, verifies the evidence with its policy, and
routes confidential jobs only while the verdict holds. A simulated enclave (real cryptography,
labelled simulated) answers; every forgery below must leave the worker unroutable."""

import base64
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.utils import timezone

from apps.workers.consumers import AgentConsumer
from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import roster_forget
from apps.workers.selectors import workers_eligible
from apps.workers.services import worker_register
from client.attestation.simulated import SimulatedEnclave, signed_message
from worker import protocol
from worker.measurement import code_measurement

pytestmark = pytest.mark.django_db(transaction=True)
DIGEST = "sha256:" + "cd" * 32
CONFIDENTIAL_MODEL = {"id": "gemma-3-270m-q4_k_m", "digest": DIGEST, "backend": "builtin", "confidential": True}


@pytest.fixture(autouse=True)
async def _fresh_layer_and_closed_connections():
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def _simulated_allowed(settings):
    settings.PEER_ALLOW_SIMULATED_ENCLAVE = True
    settings.PEER_ATTESTATION_CODE_MEASUREMENTS = []  # the default: the agent code this node ships


@pytest.fixture
def entry(db):
    return CatalogueModel.objects.create(name="gemma-3-270m", served_model=CONFIDENTIAL_MODEL["id"],
                                         digests=[DIGEST], context_length=2048)


@pytest.fixture
def registered(bob, entry):
    return worker_register(operator=bob, name="bob-enclave", tiers=["confidential", "open"])


async def _online(token):
    communicator = WebsocketCommunicator(AgentConsumer.as_asgi(), "/ws/agent/")
    assert (await communicator.connect())[0]
    await communicator.send_json_to(protocol.hello(
        token=token, agent_version="test", models=[CONFIDENTIAL_MODEL], backends=["builtin"], hardware={}))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    challenge = await communicator.receive_json_from(timeout=5)
    assert challenge["type"] == "attest.request" and challenge["model_digest"] == DIGEST
    assert len(base64.b64decode(challenge["nonce"])) == 32
    return communicator, challenge


def _evidence(enclave, nonce_b64, *, measurement=None):
    return enclave.evidence(model_digest=DIGEST, code_measurement=measurement or code_measurement(),
                            nonce=base64.b64decode(nonce_b64))


async def _answer(communicator, challenge, evidence):
    await communicator.send_json_to({"type": "attest.evidence", "request_id": challenge["request_id"],
                                     "evidence": evidence})
    # One more round trip: the consumer has handled the evidence once it answers the heartbeat.
    await communicator.send_json_to({"type": "heartbeat"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat"


@database_sync_to_async
def _state(worker_id):
    roster_forget()
    worker = Worker.objects.get(id=worker_id)
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    eligible = [str(w.id) for w, _ in workers_eligible(entry=entry, tier="confidential",
                                                       statuses=(Worker.Status.IDLE,))]
    record = (worker.attestation.get("models") or {}).get(DIGEST) or {}
    return worker, record, str(worker_id) in eligible


async def test_good_evidence_over_the_nodes_nonce_makes_the_worker_routable_for_confidential_jobs(registered):
    worker, token = registered
    enclave = SimulatedEnclave()
    communicator, challenge = await _online(token)

    await _answer(communicator, challenge, _evidence(enclave, challenge["nonce"]))

    refreshed, record, routable = await _state(worker.id)
    assert record["ok"] and record["problems"] == [] and record["simulated"] is True
    assert refreshed.enclave_key == enclave.public_key and record["signing_key"] == enclave.signing_key
    assert refreshed.attested_until > timezone.now() and routable
    # The enclave's model is for sealed jobs only: the open tier never gets it.
    entry = await CatalogueModel.objects.aget(name="gemma-3-270m")
    assert await database_sync_to_async(workers_eligible)(entry=entry, tier="open") == []
    await communicator.disconnect()


def _flipped(text):
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def _resigned_by_mallory(evidence):
    mallory = ed25519.Ed25519PrivateKey.generate()
    forged = {**evidence, "platform_key": base64.b64encode(mallory.public_key().public_bytes_raw()).decode()}
    return {**forged, "signature": base64.b64encode(mallory.sign(signed_message(forged))).decode()}


def _other_key(evidence):
    return {**evidence, "enclave_public_key": SimulatedEnclave().public_key}


@pytest.mark.parametrize("forge, problem", [
    (lambda e, enclave: {**e, "signature": _flipped(e["signature"])}, "signature does not verify"),
    (lambda e, enclave: {**e, "report_data": _flipped(e["report_data"])}, "signature does not verify"),
    (lambda e, enclave: _resigned_by_mallory(_other_key(e)), "report_data does not bind"),
    (lambda e, enclave: _evidence(enclave, base64.b64encode(bytes(32)).decode()), "nonce is not the expected one"),
    (lambda e, enclave: {"kind": "sgx", "quote": "AAAA"}, "not one this verifier knows"),
    (lambda e, enclave: {"kind": "tdx", "quote": "AAAA"}, "unreadable evidence"),
    (lambda e, enclave: {"kind": "simulated"}, "unreadable evidence"),
], ids=["flipped signature", "flipped report data", "key not bound", "another nonce", "unknown kind",
        "unreadable tdx", "unreadable"])
async def test_forged_or_stale_evidence_is_refused_and_the_worker_stays_unroutable(registered, forge, problem):
    worker, token = registered
    enclave = SimulatedEnclave()
    communicator, challenge = await _online(token)

    await _answer(communicator, challenge, forge(_evidence(enclave, challenge["nonce"]), enclave))

    refreshed, record, routable = await _state(worker.id)
    assert not record["ok"] and any(problem in p for p in record["problems"]), record["problems"]
    assert not routable and refreshed.attested_until is None
    await communicator.disconnect()


async def test_a_measurement_not_on_the_allowlist_is_refused(registered):
    worker, token = registered
    communicator, challenge = await _online(token)

    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"],
                                                     measurement="sha256:" + "00" * 32))

    _, record, routable = await _state(worker.id)
    assert not routable and any("code measurement" in p for p in record["problems"])
    await communicator.disconnect()


async def test_a_simulated_enclave_is_refused_unless_the_node_allows_it(registered, settings):
    settings.PEER_ALLOW_SIMULATED_ENCLAVE = False
    worker, token = registered
    communicator, challenge = await _online(token)

    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"]))

    _, record, routable = await _state(worker.id)
    assert not routable and record["problems"] == ["simulated enclave: refused unless allowed"]
    await communicator.disconnect()


async def test_a_nonce_is_answered_once_and_only_the_one_this_link_sent(registered):
    worker, token = registered
    enclave = SimulatedEnclave()
    communicator, challenge = await _online(token)
    await _answer(communicator, challenge, _evidence(enclave, challenge["nonce"]))
    _, first, _ = await _state(worker.id)

    # The same answer again (a replay), and evidence for a request this link never sent.
    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"]))
    await _answer(communicator, {**challenge, "request_id": "never-sent"},
                  _evidence(SimulatedEnclave(), challenge["nonce"]))

    refreshed, record, routable = await _state(worker.id)
    assert record == first and refreshed.enclave_key == enclave.public_key and routable
    await communicator.disconnect()


async def test_an_expired_verdict_takes_the_worker_off_the_confidential_tier(registered):
    worker, token = registered
    communicator, challenge = await _online(token)
    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"]))
    assert (await _state(worker.id))[2]

    refreshed = await Worker.objects.aget(id=worker.id)
    attestation = refreshed.attestation
    attestation["models"][DIGEST]["expires_at"] = (timezone.now() - timedelta(seconds=1)).isoformat()
    await Worker.objects.filter(id=worker.id).aupdate(attestation=attestation)

    assert not (await _state(worker.id))[2]
    await communicator.disconnect()


async def test_a_reconnect_forgets_the_verdict_until_the_new_enclave_answers(registered):
    worker, token = registered
    communicator, challenge = await _online(token)
    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"]))
    await communicator.disconnect()

    communicator, _ = await _online(token)

    refreshed, record, routable = await _state(worker.id)
    assert record == {} and refreshed.enclave_key == "" and not routable
    await communicator.disconnect()


async def test_a_clients_challenge_is_relayed_to_the_enclave_and_its_answer_back_unjudged(registered):
    worker, token = registered
    enclave = SimulatedEnclave()
    communicator, challenge = await _online(token)
    await _answer(communicator, challenge, _evidence(enclave, challenge["nonce"]))
    _, before, _ = await _state(worker.id)
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    client_nonce = base64.b64encode(bytes(range(32))).decode()
    channel = (await Worker.objects.aget(id=worker.id)).channel_name

    await layer.send(channel, {"type": "agent.attest", "nonce": client_nonce, "model_digest": DIGEST,
                               "reply_to": reply_to})
    relayed = await communicator.receive_json_from(timeout=5)
    assert relayed["type"] == "attest.request" and relayed["nonce"] == client_nonce
    evidence = _evidence(enclave, client_nonce)
    await communicator.send_json_to({"type": "attest.evidence", "request_id": relayed["request_id"],
                                     "evidence": evidence})

    reply = await layer.receive(reply_to)
    assert reply["worker_id"] == str(worker.id) and reply["frame"]["evidence"] == evidence
    assert (await _state(worker.id))[1] == before  # the node's own verdict is not touched
    await communicator.disconnect()


async def test_a_models_own_allowlist_replaces_the_node_wide_one(registered):
    worker, token = registered
    await CatalogueModel.objects.filter(name="gemma-3-270m").aupdate(
        attestation_policy={"code_measurements": ["sha256:" + "77" * 32]})
    communicator, challenge = await _online(token)

    # The code this node ships is allowed node-wide, but not for this model any more.
    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"]))

    _, record, routable = await _state(worker.id)
    assert not routable and any("code measurement" in p for p in record["problems"])
    await communicator.disconnect()

    communicator, challenge = await _online(token)
    await _answer(communicator, challenge, _evidence(SimulatedEnclave(), challenge["nonce"],
                                                     measurement="sha256:" + "77" * 32))

    assert (await _state(worker.id))[2]
    await communicator.disconnect()


async def test_a_model_left_without_a_verdict_is_challenged_again_at_a_later_heartbeat(registered, monkeypatch):
    from apps.workers import attest_link

    monkeypatch.setattr(attest_link, "RETRY_SECONDS", 0.0)
    worker, token = registered
    enclave = SimulatedEnclave()
    communicator, first = await _online(token)  # its answer never comes

    await communicator.send_json_to({"type": "heartbeat"})
    replies = [await communicator.receive_json_from(timeout=5) for _ in range(2)]
    again = next(r for r in replies if r["type"] == "attest.request")
    assert again["request_id"] != first["request_id"] and again["nonce"] != first["nonce"]
    await _answer(communicator, again, _evidence(enclave, again["nonce"]))

    assert (await _state(worker.id))[2]
    await communicator.disconnect()
