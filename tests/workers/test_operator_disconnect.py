"""Revoking or rotating a worker's token ends its agent's link at once, over the real channel layer
(Redis) and PostgreSQL; a job in flight fails over as on a drop; the status partial follows."""

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.accounts.services import api_key_issue
from apps.workers.consumers import AgentConsumer
from apps.workers.models import Worker
from apps.workers.services import worker_register
from worker import protocol

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = {"id": "gemma-3-270m-q4_k_m", "digest": "sha256:" + "ab" * 32, "backend": "builtin"}


@pytest.fixture(autouse=True)
async def _fresh_layer_and_closed_connections():
    """A new channel layer per test (its locks belong to the test's event loop); the ORM's
    connections in asgiref's thread are closed afterwards so the test database can be dropped."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def registered(bob):
    return worker_register(operator=bob, name="bob-cpu", tiers=["open", "verified"])


@pytest.fixture
def bobs_key(bob):
    return api_key_issue(user=bob)[1]


async def _online(token):
    communicator = WebsocketCommunicator(AgentConsumer.as_asgi(), "/ws/agent/")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to(protocol.hello(token=token, agent_version="test", models=[MODEL],
                                                   backends=["builtin"], hardware={"threads": 1}))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    return communicator


async def _expect_drop(communicator, code, close_code):
    frame = await communicator.receive_json_from(timeout=5)
    assert frame == {"type": "error", "code": code, "message": frame["message"]}
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": close_code}
    return frame


def _api_post(key, path):
    return Client().post(f"/api/workers/{path}", "{}", content_type="application/json",
                         headers={"Authorization": f"Bearer {key}"})


@sync_to_async
def _status_partial(user):
    client = Client()
    client.force_login(user)
    return client.get("/operator/workers/status/").content.decode()


async def test_revoking_through_the_api_disconnects_the_connected_agent(registered, bobs_key):
    worker, token = registered
    communicator = await _online(token)

    response = await sync_to_async(_api_post)(bobs_key, f"{worker.id}/revoke/")

    assert response.status_code == 200
    frame = await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)
    assert "revoked" in frame["message"]
    after = await Worker.objects.aget(id=worker.id)
    assert after.status == Worker.Status.OFFLINE and after.channel_name == "" and after.revoked_at is not None
    await communicator.disconnect()


async def test_a_revoked_agent_cannot_come_back_with_its_token(registered, bobs_key):
    worker, token = registered
    communicator = await _online(token)
    await sync_to_async(_api_post)(bobs_key, f"{worker.id}/revoke/")
    await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)
    await communicator.disconnect()

    again = WebsocketCommunicator(AgentConsumer.as_asgi(), "/ws/agent/")
    await again.connect()
    await again.send_json_to(protocol.hello(token=token, agent_version="test", models=[MODEL], backends=["builtin"],
                                            hardware={}))
    await _expect_drop(again, "revoked", protocol.CLOSE_REVOKED)


async def test_revoking_fails_the_job_in_flight_over_like_a_drop(registered, bobs_key):
    worker, token = registered
    communicator = await _online(token)
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(f"job.{job_id}", channel)
    channel_name = (await Worker.objects.aget(id=worker.id)).channel_name
    await layer.send(channel_name, {"type": "agent.send", "frame": protocol.job_assign(
        job_id=job_id, model=MODEL["id"], model_digest=MODEL["digest"], messages=[], params={})})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "job.assign"

    await sync_to_async(_api_post)(bobs_key, f"{worker.id}/revoke/")

    await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)
    message = await layer.receive(channel)
    assert message["worker_id"] == str(worker.id)
    assert message["frame"]["type"] == "job.error" and message["frame"]["code"] == "worker_disconnected"
    after = await Worker.objects.aget(id=worker.id)
    assert after.status == Worker.Status.OFFLINE and after.current_job_id is None
    await communicator.disconnect()


async def test_rotating_the_token_disconnects_the_agent_with_the_old_one(registered, bobs_key):
    worker, old_token = registered
    communicator = await _online(old_token)

    response = await sync_to_async(_api_post)(bobs_key, f"{worker.id}/rotate-token/")

    assert response.status_code == 200
    frame = await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)
    assert "new token" in frame["message"]
    await communicator.disconnect()
    stale = WebsocketCommunicator(AgentConsumer.as_asgi(), "/ws/agent/")
    await stale.connect()
    await stale.send_json_to(protocol.hello(token=old_token, agent_version="test", models=[MODEL],
                                            backends=["builtin"], hardware={}))
    await _expect_drop(stale, "bad_token", protocol.CLOSE_BAD_TOKEN)
    fresh = await _online(json.loads(response.content)["token"])
    assert (await Worker.objects.aget(id=worker.id)).status == Worker.Status.IDLE
    await fresh.disconnect()


async def test_rotating_from_the_page_disconnects_the_agent_too(bob, registered):
    worker, token = registered
    communicator = await _online(token)

    @sync_to_async
    def rotate():
        client = Client()
        client.force_login(bob)
        return client.post(f"/operator/workers/{worker.id}/rotate-token/", HTTP_HX_REQUEST="true")

    assert (await rotate()).status_code == 200
    await _expect_drop(communicator, "revoked", protocol.CLOSE_REVOKED)
    await communicator.disconnect()


async def test_revoking_a_worker_that_is_not_connected_sends_nothing_and_still_revokes(registered, bobs_key):
    worker, _ = registered

    response = await sync_to_async(_api_post)(bobs_key, f"{worker.id}/revoke/")

    assert response.status_code == 200 and json.loads(response.content)["status"] == "revoked"


async def test_the_status_partial_follows_the_agent_online_and_offline(bob, registered):
    worker, token = registered
    assert 'data-state="offline"' in await _status_partial(bob)

    communicator = await _online(token)
    page = await _status_partial(bob)
    assert 'data-state="idle"' in page and "online · idle" in page
    assert MODEL["id"] in page and ">test<" in page

    await communicator.disconnect()
    assert 'data-state="offline"' in await _status_partial(bob)
