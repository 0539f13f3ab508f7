"""Redis (the channel layer between the agent link and the relay) restarted in the middle of a
stream. A private redis-server with no persistence is started for this test, so the restart
loses everything it held (groups, queued frames), as a crash would; the shared one is untouched.

The stream it cut ends with a clean error event and its hold is released exactly once, or, when
no frame was in flight (frames go straight to the relay's channel, so there is no group membership
to lose), it completes whole and is charged once; never a stream with a gap. A request that
arrives while Redis is down is served: its agent's link is on the same node, and a job's channels
and group live in the node's process. The agent reconnects if its link dropped, and the node
serves the next request."""

import json
import subprocess

import httpx
import pytest

from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from tests.support.mock_backends import MockOpenAI

from .conftest import OUTPUT, _free_port, _wait_for_port, running_node, wait_for_status
from .faults_support import (HELLO, PUBLIC_NAME, assert_money_sound, http_agent, mock_catalogue,
                             usdc_outside_issuers)

# redis-server is on every machine that runs the suite (.ci/run starts it): no skip.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class PrivateRedis:
    """redis-server on a free port, without persistence: a restart starts empty."""

    def __init__(self):
        self.port = _free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.log = open(OUTPUT / "redis-private.log", "a")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, 10)
        return self

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()

    def __enter__(self):
        OUTPUT.mkdir(exist_ok=True)
        return self.start()

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.kill()


def _sse_events(response):
    """The data of each server-sent event, as the lines arrive."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def _chat(node_url, key, **body):
    return httpx.post(f"{node_url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": PUBLIC_NAME, "messages": HELLO, **body})


@pytest.mark.parametrize("outage", [False, True], ids=["restarted at once", "down while a request arrives"])
def test_a_redis_restart_mid_stream_ends_that_stream_cleanly_and_the_node_serves_the_next_request(
        alice, alice_key, bob, outage):
    mock_catalogue()
    worker, token = worker_register(operator=bob, name="bob-redis", tiers=["verified"])
    bond(worker)
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    during = None
    with PrivateRedis() as redis, running_node("node-redis.log", REDIS_URL=redis.url) as node_url, \
            MockOpenAI(tokens_per_second=10) as backend, http_agent(node_url, token, backend.url):
        wait_for_status(worker.id, Worker.Status.IDLE)
        with httpx.stream("POST", f"{node_url}/v1/chat/completions", timeout=60,
                          headers={"authorization": f"Bearer {alice_key}"},
                          json={"model": PUBLIC_NAME, "messages": HELLO, "stream": True, "max_tokens": 25}) as response:
            assert response.status_code == 200
            events = _sse_events(response)
            received = [json.loads(next(events)) for _ in range(4)]  # the role chunk and three tokens
            redis.kill()
            if outage:  # Redis stays down until this request is answered
                during = _chat(node_url, alice_key, max_tokens=3)
            redis.start()
            rest = list(events)
        cut = Job.objects.get(user=alice, stream=True)
        # The agent reconnects (its link may have dropped with the layer) and the node serves again.
        wait_for_status(worker.id, Worker.Status.IDLE)
        after = _chat(node_url, alice_key, max_tokens=3)
    assert [chunk["choices"][0]["delta"].get("content") for chunk in received] == ["", "The", " quick", " brown"]
    assert rest[-1] == "[DONE]"
    last = json.loads(rest[-2])
    if "error" in last:
        # Frames were lost with Redis (or could not be sent while it was down), or the agent's
        # link dropped with the layer (its relay hears the worker failed): the stream ends with an
        # error after whole tokens only, and the whole price is refunded.
        assert last["error"]["code"] in ("node_unavailable", "worker_failed")
        assert all("choices" in json.loads(data) for data in rest[:-2])
        assert (cut.status, cut.hold_state, cut.charged_amount) == ("failed", "released", 0)
    else:
        # Nothing was in flight when Redis went away: frames go straight to the relay's own channel
        # (no group membership to lose), every delta arrived in order (the relay checks each
        # sequence number), so the answer is whole and is charged as usual.
        streamed = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in
                           received + [json.loads(data) for data in rest[:-1]] if chunk.get("choices"))
        assert last["choices"][0]["finish_reason"] == "length" and streamed == cut.output_text
        assert (cut.status, cut.hold_state, cut.completion_tokens) == ("completed", "captured", 25)
    served_during = 0
    if during is not None:
        # The agent's link and the client are on this one node: the request needs no Redis (its
        # channels are process-local, its job's group is kept in the process), so it is served,
        # once the worker is free of the stream above, and charged as usual.
        assert during.status_code == 200 and during.json()["choices"][0]["message"]["content"] == "The quick brown"
        job_during = Job.objects.get(id=during.json()["peer"]["job_id"])
        assert job_during.hold_state == "captured"
        served_during = job_during.charged_amount
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "The quick brown"
    served = Job.objects.get(id=after.json()["peer"]["job_id"])
    assert served.hold_state == "captured"
    assert before - balance_get(user=alice) == served.charged_amount + cut.charged_amount + served_during
    assert held_get(user=alice) == 0
    assert_money_sound(usdc)
