"""The agent link's part in embedding jobs: embed.assign and embed.done pass through, and the
worker stays claimed across a job's chunks (its relay releases it), but not after a job.error."""

import asyncio
import uuid

import pytest

from apps.workers.models import Worker
from worker import protocol

from .test_agent_consumer import (  # noqa: F401  (fixtures are found by name)
    _fresh_layer_and_closed_connections,
    _listen_to_job,
    _online,
    registered,
)

pytestmark = pytest.mark.django_db(transaction=True)
EMBEDDER = {"id": "all-minilm-l6-v2-int8", "digest": "sha256:" + "cd" * 32, "backend": "minilm",
            "kind": "embedding"}


async def _claimed_with_an_embedding_chunk(registered):
    worker, token = registered
    communicator, _ = await _online(token)
    job_id = str(uuid.uuid4())
    await Worker.objects.filter(id=worker.id).aupdate(status=Worker.Status.BUSY, current_job_id=job_id)
    layer, channel = await _listen_to_job(job_id)
    await layer.send((await Worker.objects.aget(id=worker.id)).channel_name, {"type": "agent.send", "frame":
                     protocol.embed_assign(job_id=job_id, model=EMBEDDER["id"], model_digest=EMBEDDER["digest"],
                                           input=["a", "b"])})
    assigned = await communicator.receive_json_from(timeout=5)
    assert assigned["type"] == "embed.assign" and assigned["input"] == ["a", "b"]
    return worker, communicator, job_id, layer, channel


async def test_embed_done_reaches_the_job_and_the_worker_stays_claimed_for_the_next_chunk(registered):
    worker, communicator, job_id, layer, channel = await _claimed_with_an_embedding_chunk(registered)
    await communicator.send_json_to(protocol.embed_done(job_id=job_id, model_digest=EMBEDDER["digest"],
                                                        data=[[0.6, 0.8], [1.0, 0.0]], prompt_tokens=2))
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message["worker_id"] == str(worker.id)
    assert message["frame"]["type"] == "embed.done" and message["frame"]["data"] == [[0.6, 0.8], [1.0, 0.0]]
    refreshed = await Worker.objects.aget(id=worker.id)
    assert refreshed.status == Worker.Status.BUSY and str(refreshed.current_job_id) == job_id
    await communicator.disconnect()


async def test_a_job_error_on_an_embedding_chunk_frees_the_worker(registered):
    worker, communicator, job_id, layer, channel = await _claimed_with_an_embedding_chunk(registered)
    await communicator.send_json_to({"type": "job.error", "job_id": job_id, "code": "oom", "message": "no"})
    assert (await asyncio.wait_for(layer.receive(channel), timeout=5))["frame"]["code"] == "oom"
    refreshed = await Worker.objects.aget(id=worker.id)
    assert refreshed.status == Worker.Status.IDLE and refreshed.current_job_id is None
    await communicator.disconnect()


async def test_vectors_with_a_missing_number_drop_the_agent(registered):
    worker, communicator, job_id, layer, channel = await _claimed_with_an_embedding_chunk(registered)
    await communicator.send_json_to({"type": "embed.done", "job_id": job_id, "model_digest": EMBEDDER["digest"],
                                     "data": [[0.6, "x"], [1.0, 0.0]]})
    assert (await communicator.receive_json_from(timeout=5))["code"] == "protocol_error"
    assert (await communicator.receive_output(timeout=5))["type"] == "websocket.close"
    await communicator.disconnect()
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message["frame"]["type"] == "job.error" and message["frame"]["code"] == "worker_disconnected"
