"""Load faults: a client that reads its stream very slowly, and a burst of 1,000 requests at a
node with two workers. Nothing blocks, nothing crashes, every hold is settled exactly once."""

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest

from apps.credits.selectors import balance_get
from apps.credits.services import credits_grant
from apps.marketplace.models import Job
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from tests.support.mock_backends import MockOpenAI

from .conftest import running_node, wait_for_status
from .faults_support import (HELLO, PUBLIC_NAME, assert_money_sound, http_agent, mock_catalogue,
                             usdc_outside_issuers, wait_for_jobs_settled)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
BURST = 1000
QUEUE_LIMIT = 20
QUEUE_TIMEOUT = 3


def _workers(bob, count):
    found = []
    for index in range(count):
        worker, token = worker_register(operator=bob, name=f"bob-http-{index + 1}", tiers=["open", "verified"])
        found.append((bond(worker), token))
    return found


def test_a_client_reading_its_stream_very_slowly_blocks_no_other_job_and_its_job_settles(
        node_url, alice, alice_key, bob):
    mock_catalogue()
    (first, first_token), (second, second_token) = _workers(bob, 2)
    usdc = usdc_outside_issuers()
    long_text = " ".join(f"w{i}" for i in range(800))
    # A 4 KiB receive buffer: the node's writes back up at once, as to a client on a slow link.
    slow_transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    others = []
    with MockOpenAI(text=long_text) as backend, http_agent(node_url, first_token, backend.url), \
            http_agent(node_url, second_token, backend.url), \
            httpx.Client(transport=slow_transport, timeout=120) as slow:
        wait_for_status(first.id, Worker.Status.IDLE)
        wait_for_status(second.id, Worker.Status.IDLE)
        with slow.stream("POST", f"{node_url}/v1/chat/completions", headers={"authorization": f"Bearer {alice_key}"},
                         json={"model": PUBLIC_NAME, "messages": HELLO, "stream": True, "max_tokens": 800}) as response:
            chunks = response.iter_bytes(256)
            body = next(chunks)
            # While the slow client sits on its stream, other requests are served in full.
            client = openai.OpenAI(base_url=f"{node_url}/v1", api_key=alice_key, max_retries=0, timeout=60)
            for _ in range(6):
                others.append(client.chat.completions.create(model=PUBLIC_NAME, messages=HELLO, max_tokens=4))
            for chunk in chunks:  # then it reads on, a little at a time
                body += chunk
                time.sleep(0.002)
    events = [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]" and not any(b'"error"' in event for event in events)
    text = "".join(json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1])
    assert text == long_text
    assert [reply.choices[0].message.content for reply in others] == ["w0 w1 w2 w3"] * 6
    wait_for_jobs_settled()
    assert Job.objects.filter(user=alice, hold_state="captured").count() == 7
    assert_money_sound(usdc)


async def _burst(node_url, key):
    """BURST requests at once (every fourth streamed); (status, headers, body) of each."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        async def one(index):
            body = {"model": PUBLIC_NAME, "messages": HELLO, "max_tokens": 3, "stream": index % 4 == 0}
            response = await http.post(f"{node_url}/v1/chat/completions", json=body,
                                       headers={"authorization": f"Bearer {key}"})
            return response.status_code, response.headers, response.text, body["stream"]
        return await asyncio.gather(*(one(index) for index in range(BURST)))


def test_a_burst_of_a_thousand_requests_on_two_workers_completes_or_is_refused_cleanly_and_settles_every_hold(
        alice, alice_key, bob):
    mock_catalogue()
    credits_grant(user=alice, credits=100_000)  # enough for every request to be held and charged
    workers = _workers(bob, 2)
    before, usdc = balance_get(user=alice), usdc_outside_issuers()
    # A pooled node, as the Procfile's web process: unpooled, each of the thousand requests opens
    # its own PostgreSQL connection and the burst exceeds max_connections (500s, for everyone).
    node = running_node("node-burst.log", PEER_QUEUE_LIMIT=str(QUEUE_LIMIT), PEER_QUEUE_TIMEOUT=str(QUEUE_TIMEOUT),
                        PEER_DB_POOL_SIZE="16")
    with MockOpenAI() as backend, node as node_url, \
            http_agent(node_url, workers[0][1], backend.url), http_agent(node_url, workers[1][1], backend.url):
        for worker, _ in workers:
            wait_for_status(worker.id, Worker.Status.IDLE)
        results = asyncio.run(_burst(node_url, alice_key))
        wait_for_jobs_settled()
    statuses = [status for status, *_ in results]
    counts = {status: statuses.count(status) for status in set(statuses)}
    print(f"burst of {BURST}: {counts}")
    assert set(counts) <= {200, 429, 503}, counts
    assert counts.get(200, 0) > 0 and counts.get(429, 0) > 0  # the queue filled and drained
    for status, headers, text, streamed in results:
        if status == 200 and streamed:
            events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and not any('"error"' in event for event in events)
            assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]) \
                == "The quick brown"
        elif status == 200:
            assert json.loads(text)["choices"][0]["message"]["content"] == "The quick brown"
        else:
            error = json.loads(text)["error"]
            assert int(headers["Retry-After"]) > 0
            assert error["code"] in (("queue_full",) if status == 429 else ("no_worker_available", "node_busy"))
    unserved = sum(1 for status, _, text, _ in results if status == 503 and '"no_worker_available"' in text)
    jobs = Job.objects.filter(user=alice)
    # A 429 or node_busy holds nothing (no job); every other request held once and was captured
    # (200) or refunded (503 no_worker_available).
    assert jobs.count() == counts.get(200, 0) + unserved
    assert jobs.filter(hold_state="captured", status="completed").count() == counts.get(200, 0)
    assert jobs.filter(hold_state="released", status="failed").count() == unserved
    charged = sum(jobs.values_list("charged_amount", flat=True))
    assert before - balance_get(user=alice) == charged
    assert_money_sound(usdc)
