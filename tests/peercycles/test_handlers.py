"""The node's ASGI handler (peercycles/handlers.py): a request's thread-sensitive work runs on a
thread lent from a pool, one thread per request in flight, given back when the request ends."""

import asyncio
import threading

import pytest
from django.core.signals import request_started

from peercycles import asgi
from peercycles.handlers import PooledThreadsASGIHandler, RequestThreads
from tests.support.asgi_calls import http_scope, http_status

BAD_KEY = http_scope("/v1/models", headers={"Authorization": "Bearer sk-not-a-key"})


async def _request(handler) -> int:
    return await http_status(handler, BAD_KEY)


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setattr(PooledThreadsASGIHandler, "threads", RequestThreads(idle_kept=4))
    return PooledThreadsASGIHandler()


@pytest.fixture
def started_on():
    """The thread each request's request_started receivers ran on (a sync receiver runs on the
    request's thread-sensitive thread)."""
    seen = []

    def record(**_):
        seen.append(threading.get_ident())

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)


@pytest.mark.django_db(transaction=True)
async def test_requests_one_after_another_reuse_one_thread(handler, started_on):
    for _ in range(3):
        assert await _request(handler) == 401
    assert len(started_on) == 3 and len(set(started_on)) == 1
    assert handler.threads.started == 1
    assert threading.get_ident() not in started_on  # never the event loop's own thread


@pytest.mark.django_db(transaction=True)
async def test_requests_in_flight_together_each_have_a_thread_of_their_own(handler, started_on):
    # Each request's receiver waits for the other's: on one shared thread they would never meet.
    both = threading.Barrier(2, timeout=10)
    request_started.connect(meet := lambda **_: both.wait())
    try:
        assert await asyncio.gather(_request(handler), _request(handler)) == [401, 401]
    finally:
        request_started.disconnect(meet)
    assert len(set(started_on)) == 2
    assert handler.threads.started == 2
    assert await _request(handler) == 401  # and both went back to the pool
    assert handler.threads.started == 2


def test_the_pool_lets_go_of_threads_past_what_it_keeps():
    threads = RequestThreads(idle_kept=1)
    first, second = threads.take(), threads.take()
    threads.give_back(first)
    threads.give_back(second)  # one too many: shut down, not kept
    assert threads.take() is first
    with pytest.raises(RuntimeError):  # a shut-down executor takes no more work
        second.submit(int)


def test_the_node_serves_http_with_the_pooled_handler():
    http = asgi.application.application_mapping["http"]
    assert isinstance(getattr(http, "application", http), PooledThreadsASGIHandler)


def test_the_started_node_is_frozen_out_of_the_collectors_sight():
    """peercycles.asgi freezes what exists once the node has started (every view imported): a full
    collection then walks only what came after, not ~176,000 objects of the node itself, which
    stopped the process for ~100 ms each time (docs/benchmarks.md, "Collector pauses")."""
    import gc

    assert asgi.application is not None
    assert gc.get_freeze_count() > 100_000


STARTED_AS_DAPHNE_DOES = """
import daphne.server  # daphne's CLI has its server, and so its request class, before the app
from daphne import http_protocol
from twisted.web.test.requesthelper import DummyChannel

import peercycles.asgi
from django.core.signals import request_started

class Server:  # what a request tells daphne's server of itself
    def protocol_connected(self, request):
        pass


factory = http_protocol.HTTPFactory(server=Server())
channel = DummyChannel()
channel.factory = factory
request = factory.buildProtocol(("127.0.0.1", 1)).requestFactory(channel)
print(request_started.has_listeners(), request._parsePOSTFormSubmission)
"""


def test_the_started_node_hops_no_thread_for_request_started_and_parses_no_forms_in_daphne():
    """Each request began with a thread hop for Django's sync request_started receivers, and
    daphne's twisted requests parsed every POST's Content-Type through the email package, which
    daphne never reads: 2% and 5% of the node's busy time (docs/benchmarks.md). In a process
    started as daphne starts one, neither is left. (A subprocess: Django's test client connects
    close_old_connections to request_started again after each of its requests.)"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "peercycles.settings"}
    done = subprocess.run([sys.executable, "-c", STARTED_AS_DAPHNE_DOES], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
