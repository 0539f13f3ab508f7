"""Verdicts, slashes and challenges appear on the network's live stream (/ws/network/)."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.verification.challenges import challenge_open
from peercycles.asgi import application

from .support import ANSWER, CHEAT_LOGPROBS, make_worker, validator_answers, verified_job

# Events go out when their transaction commits: the test's own writes must commit.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("funded_treasury")]


def _cheat_and_challenge(alice, bob, carol, mallory, entry):
    cheater, key = make_worker(mallory, entry, "cheater", bonded=True)
    make_worker(bob, entry, "v1")
    make_worker(carol, entry, "v2")
    job = verified_job(alice, cheater, key, entry, output="Paris.")
    challenge, validation = challenge_open(user=alice, job_id=job.id)
    _, confirming = validator_answers(validation.id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    validator_answers(confirming.id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    return job, cheater, challenge


async def test_a_watcher_sees_the_challenge_the_verdict_and_the_slash(alice, bob, carol, mallory, entry, settings):
    watcher = WebsocketCommunicator(application, "/ws/network/")
    connected, _ = await watcher.connect()
    assert connected
    job, cheater, challenge = await database_sync_to_async(_cheat_and_challenge)(alice, bob, carol, mallory, entry)
    events = [await watcher.receive_json_from(timeout=5) for _ in range(4)]
    await watcher.disconnect()
    by_type = {event["type"]: event for event in events}
    assert by_type["challenge.opened"]["job_id"] == str(job.id)
    assert by_type["verification.verdict"] == {**by_type["verification.verdict"], "job_id": str(job.id),
                                               "worker_id": str(cheater.id), "status": "failed"}
    assert by_type["verification.slash"]["amount"] == settings.PEER_SLASH_AMOUNT
    assert by_type["verification.slash"]["to_challenger"] == settings.PEER_SLASH_AMOUNT // 2
    assert by_type["challenge.decided"] == {**by_type["challenge.decided"], "challenge_id": str(challenge.id),
                                            "state": "upheld"}
    assert len(by_type) == 4
