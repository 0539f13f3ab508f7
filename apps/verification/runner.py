"""One validation's round trip with a validator's agent, over the channel layer: claim an idle
validator, send it `validate.assign`, wait for `validate.done` (or its refusal, its link
dropping, or PEER_VERIFY_TIMEOUT), record; then the confirming validation if one is due.

Runs in a Celery worker (tasks.py) or wherever a test calls it: any process that reaches the
node's Redis. The validator's consumer forwards its frames to `reply_to`; a dropped link is told
to the job's group, which the runner joins as a relay does.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from apps.marketplace.relay import LAYER_ERRORS, job_group
from worker import protocol

from .embedding_checks import embeddings_exchange
from .services import Assignment, validation_attempt_failed, validation_record, validator_claim

logger = logging.getLogger(__name__)


async def validation_run(validation_id) -> None:
    """Run the validation (and the confirming one it may call for) until decided, or until no
    validator is idle: it then stays pending for the resume task."""
    current = validation_id
    while current is not None:
        assignment = await database_sync_to_async(validator_claim)(validation_id=current)
        if assignment is None:
            return
        answer = await _exchange(assignment)
        if answer["type"] in ("validate.done", "embed.result"):
            follow_up = await database_sync_to_async(validation_record)(
                validation_id=current, worker_id=assignment.worker_id, done=answer)
            current = follow_up.id if follow_up is not None else None
        else:
            await database_sync_to_async(validation_attempt_failed)(
                validation_id=current, worker_id=assignment.worker_id,
                why=f"{answer.get('code')}: {str(answer.get('message'))[:200]}")


async def _exchange(assignment: Assignment) -> dict:
    """Send the assignment and wait for the validator's last frame: validate.done or job.error
    (a timeout and a failing layer are told as job.error too); for an embedding job, its vectors
    for every chunk (embedding_checks.embeddings_exchange)."""
    layer = get_channel_layer()
    group = job_group(assignment.job_id)
    channel = ""
    try:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        if assignment.chunks is not None:
            async with asyncio.timeout(settings.PEER_VERIFY_TIMEOUT):
                return await embeddings_exchange(layer, channel, assignment)
        await layer.send(assignment.channel, {"type": "agent.send", "frame": assignment.frame, "reply_to": channel})
        async with asyncio.timeout(settings.PEER_VERIFY_TIMEOUT):
            while True:
                message = await layer.receive(channel)
                if message.get("worker_id") != str(assignment.worker_id):
                    continue  # e.g. a frame of the job's own worker, late
                if message["frame"]["type"] in ("validate.done", "job.error"):
                    return message["frame"]
    except TimeoutError:
        await _cancel(layer, assignment, "validation_timeout")
        return {"type": "job.error", "code": "timeout",
                "message": f"no answer in {settings.PEER_VERIFY_TIMEOUT:.0f}s"}
    except LAYER_ERRORS as exc:
        return {"type": "job.error", "code": "node_unavailable", "message": f"channel layer: {exc}"}
    finally:
        if channel:
            try:
                await layer.group_discard(group, channel)
            except LAYER_ERRORS:
                pass


async def _cancel(layer, assignment: Assignment, reason: str) -> None:
    try:
        await layer.send(assignment.channel, {"type": "agent.send",
                                              "frame": protocol.job_cancel(job_id=str(assignment.job_id),
                                                                           reason=reason)})
    except LAYER_ERRORS:
        logger.warning("validation %s: could not cancel it on its validator", assignment.validation_id)
