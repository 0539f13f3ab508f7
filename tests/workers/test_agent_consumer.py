"""The node's side of the agent link, over the real channel layer (Redis) and PostgreSQL."""

import asyncio
import json
import threading
import time
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from apps.workers import consumers
from apps.workers.consumers import AgentConsumer
from apps.workers.models import Worker
from apps.workers.services import worker_register, worker_revoke
from apps.workers.vacancies import vacancy_wait
from worker import protocol

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = {"id": "gemma-3-270m-q4_k_m", "digest": "sha256:" + "ab" * 32, "backend": "builtin"}


@pytest.fixture(autouse=True)
async def _fresh_layer_and_closed_connections():
    """Each test runs in its own event loop, and a channel layer's locks belong to the loop that
    made them: every test gets a new layer. The consumer's ORM calls run in asgiref's worker
    thread; its connection is closed afterwards so the test database can be dropped."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


def _hello(token, **overrides):
    frame = protocol.hello(token=token, agent_version="test", models=[MODEL], backends=["builtin"],
                           hardware={"threads": 1})
    frame.update(overrides)
    return frame


@pytest.fixture
def registered(bob):
    return worker_register(operator=bob, name="bob-cpu", tiers=["open", "verified"])


async def _connect():
    communicator = WebsocketCommunicator(AgentConsumer.as_asgi(), "/ws/agent/")
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _online(token):
    communicator = await _connect()
    await communicator.send_json_to(_hello(token))
    welcome = await communicator.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    return communicator, welcome


async def _expect_drop(communicator, code, close_code):
    frame = await communicator.receive_json_from(timeout=5)
    assert frame == {"type": "error", "code": code, "message": frame["message"]}
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": close_code}


async def test_a_good_hello_brings_the_worker_online_with_its_models(registered):
    worker, token = registered
    communicator, welcome = await _online(token)
    assert welcome["worker_id"] == str(worker.id) and welcome["protocol"] == protocol.PROTOCOL_VERSION
    refreshed = await Worker.objects.aget(id=worker.id)
    assert refreshed.status == Worker.Status.IDLE and refreshed.models_served == [MODEL]
    await communicator.disconnect()
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.OFFLINE


async def test_the_hello_records_the_agents_signing_key_and_refuses_a_malformed_one(registered):
    import base64

    worker, token = registered
    key = base64.b64encode(bytes(range(32))).decode()
    communicator = await _connect()
    await communicator.send_json_to(_hello(token, signing_key=key))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    assert (await Worker.objects.aget(id=worker.id)).signing_key == key
    await communicator.disconnect()
    communicator = await _connect()
    await communicator.send_json_to(_hello(token, signing_key="c2hvcnQ="))  # 5 bytes: not a key
    await _expect_drop(communicator, "protocol_error", protocol.CLOSE_PROTOCOL_ERROR)


async def test_an_unknown_token_is_refused_and_the_link_closed(registered):
    communicator = await _connect()
    await communicator.send_json_to(_hello("pcw_not-a-token"))
    await _expect_drop(communicator, "bad_token", protocol.CLOSE_BAD_TOKEN)


async def test_a_revoked_worker_is_refused(registered):
    worker, token = registered
    await database_sync_to_async(worker_revoke)(worker_id=worker.id)
    communicator = await _connect()
    await communicator.send_json_to(_hello(token))
    await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)


@pytest.mark.parametrize("garbage", ["not json {", "[1, 2]", json.dumps({"type": "launch.missiles"}),
                                     json.dumps({"type": "hello", "protocol": "1"})])
async def test_garbage_frames_drop_the_agent(registered, garbage):
    communicator = await _connect()
    await communicator.send_to(text_data=garbage)
    await _expect_drop(communicator, "protocol_error", protocol.CLOSE_PROTOCOL_ERROR)


async def test_the_first_frame_must_be_hello(registered):
    communicator = await _connect()
    await communicator.send_json_to({"type": "heartbeat"})
    await _expect_drop(communicator, "protocol_error", protocol.CLOSE_PROTOCOL_ERROR)


async def test_a_hello_with_an_unsupported_protocol_is_refused(registered):
    _, token = registered
    communicator = await _connect()
    await communicator.send_json_to(_hello(token, protocol=99))
    await _expect_drop(communicator, "protocol_error", protocol.CLOSE_PROTOCOL_ERROR)


async def _listen_to_job(job_id):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(f"job.{job_id}", channel)
    return layer, channel


async def _assign(layer, worker_id, job_id, reply_to=None):
    worker = await Worker.objects.aget(id=worker_id)
    await layer.send(worker.channel_name, {"type": "agent.send", "frame": protocol.job_assign(
        job_id=job_id, model=MODEL["id"], model_digest=MODEL["digest"], messages=[], params={}),
        **({"reply_to": reply_to} if reply_to else {})})


async def _busy_with_a_job(worker, communicator):
    """The worker claimed for a new job, assigned to its agent (which receives job.assign); the
    job's id, and the layer and channel of a listener in the job's group."""
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id)
    layer, channel = await _listen_to_job(job_id)
    await _assign(layer, worker.id, job_id)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "job.assign"
    return job_id, layer, channel


async def test_job_frames_reach_the_job_group_and_done_frees_the_worker(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id, layer, channel = await _busy_with_a_job(worker, communicator)
    await communicator.send_json_to({"type": "job.delta", "job_id": job_id, "seq": 0, "text": "Hi"})
    await communicator.send_json_to({"type": "job.done", "job_id": job_id, "finish_reason": "stop",
                                     "model_digest": MODEL["digest"]})
    first, second = await layer.receive(channel), await layer.receive(channel)
    assert first["frame"]["text"] == "Hi" and first["worker_id"] == str(worker.id)
    assert second["frame"]["type"] == "job.done"
    refreshed = await Worker.objects.aget(id=worker.id)
    assert refreshed.status == Worker.Status.IDLE and refreshed.current_job_id is None
    await communicator.disconnect()


async def test_frames_go_straight_to_the_relay_that_assigned_the_job(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id)
    layer, grouped = await _listen_to_job(job_id)
    relay = await layer.new_channel()  # not in the job's group: only a direct send reaches it
    await _assign(layer, worker.id, job_id, reply_to=relay)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "job.assign"
    for seq, text in enumerate(["Hel", "lo"]):
        await communicator.send_json_to({"type": "job.delta", "job_id": job_id, "seq": seq, "text": text})
    await communicator.send_json_to({"type": "job.done", "job_id": job_id, "finish_reason": "stop",
                                     "model_digest": MODEL["digest"]})
    frames = [(await layer.receive(relay))["frame"] for _ in range(3)]
    assert [f.get("text") for f in frames[:2]] == ["Hel", "lo"] and frames[2]["type"] == "job.done"
    import asyncio
    with pytest.raises(TimeoutError):  # nothing went to the group as well
        await asyncio.wait_for(layer.receive(grouped), timeout=0.5)
    await communicator.disconnect()


async def test_the_last_frame_frees_the_worker_and_wakes_a_relay_waiting_for_one(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id, _, _ = await _busy_with_a_job(worker, communicator)
    waiting = asyncio.ensure_future(vacancy_wait(30, since=time.monotonic()))  # another request, every worker busy
    await communicator.send_json_to({"type": "job.done", "job_id": job_id, "finish_reason": "stop",
                                     "model_digest": MODEL["digest"]})
    await asyncio.wait_for(waiting, 5)  # at once, not at its next poll
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.IDLE
    await communicator.disconnect()


async def test_frames_for_a_job_never_assigned_on_this_link_are_ignored(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id = str(uuid.uuid4())
    layer, channel = await _listen_to_job(job_id)
    await communicator.send_json_to({"type": "job.delta", "job_id": job_id, "seq": 0, "text": "forged"})
    await communicator.send_json_to({"type": "heartbeat"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat"
    with pytest.raises(TimeoutError):
        import asyncio
        await asyncio.wait_for(layer.receive(channel), timeout=0.5)
    await communicator.disconnect()


async def test_a_dropped_link_fails_its_job_and_takes_the_worker_offline(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id)
    layer, channel = await _listen_to_job(job_id)
    await _assign(layer, worker.id, job_id)
    await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    message = await layer.receive(channel)
    assert message["frame"]["type"] == "job.error" and message["frame"]["code"] == "worker_disconnected"
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.OFFLINE


async def test_a_second_agent_with_the_same_token_replaces_the_first(registered):
    worker, token = registered
    first, _ = await _online(token)
    second, _ = await _online(token)
    await _expect_drop(first, "replaced", protocol.CLOSE_REPLACED)
    refreshed = await Worker.objects.aget(id=worker.id)
    assert refreshed.status == Worker.Status.IDLE
    await first.disconnect()  # the old link's goodbye must not take the worker offline
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.IDLE
    await second.disconnect()
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.OFFLINE


async def test_a_reconnecting_agent_fails_the_job_its_dead_link_held(registered):
    """The old link's node process was killed (its disconnect never ran): the worker row still
    names that link and its job. The new link, on any node, tells the job's relay."""
    worker, token = registered
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id,
                                                     channel_name="specific.dead-node!gone")
    layer, channel = await _listen_to_job(job_id)
    communicator, _ = await _online(token)
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message["worker_id"] == str(worker.id)
    assert message["frame"]["type"] == "job.error" and message["frame"]["code"] == "worker_disconnected"
    refreshed = await Worker.objects.aget(id=worker.id)
    assert (refreshed.status, refreshed.current_job_id) == (Worker.Status.IDLE, None)
    await communicator.disconnect()


async def test_heartbeats_are_answered_each_and_recorded_at_most_every_third_of_the_silence_limit(registered,
                                                                                                 settings):
    settings.PEER_WORKER_SILENCE_LIMIT = 1.5  # recorded at most every 0.5 s
    worker, token = registered
    communicator, _ = await _online(token)
    seen = [(await Worker.objects.aget(id=worker.id)).last_seen_at]
    for pause in (0.0, 0.05, 0.7, 0.0):
        await asyncio.sleep(pause)
        await communicator.send_json_to({"type": "heartbeat"})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat"
        seen.append((await Worker.objects.aget(id=worker.id)).last_seen_at)
    # The hello recorded it; the next two heartbeats come sooner than 0.5 s after it and are not
    # written; the one after 0.7 s more is; the last, right after it, is not.
    assert seen[0] == seen[1] == seen[2] < seen[3] == seen[4]
    await communicator.disconnect()


@pytest.fixture
def two_workers(bob):
    return [worker_register(operator=bob, name=f"bob-{n}", tiers=["open"]) for n in range(2)]


async def test_each_link_makes_its_database_calls_on_a_thread_of_its_own(two_workers, monkeypatch):
    # Each link's hello waits inside its database call for the other's: on one shared thread
    # (asgiref's default for a consumer) the second could never start, and the first times out.
    both, threads = threading.Barrier(2, timeout=5), []
    real = consumers.worker_connect

    def meeting(**kwargs):
        threads.append(threading.get_ident())
        both.wait()
        return real(**kwargs)

    monkeypatch.setattr(consumers, "worker_connect", meeting)
    links = await asyncio.gather(*(_online(token) for _, token in two_workers))
    assert len(set(threads)) == 2 and threading.get_ident() not in threads
    for communicator, _ in links:
        await communicator.disconnect()
