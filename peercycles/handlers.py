"""Django's ASGI handler with each request's thread taken from a pool instead of started for it.

Under ASGI Django runs a request in asgiref's ThreadSensitiveContext: its thread-sensitive sync
work (the request_started and request_finished signals, the response's close, and every
`database_sync_to_async` call of our async views) runs on one thread of the request's own. By
default asgiref starts that thread on the request's first such call and, when the request ends,
starts a second thread to join it: two thread starts per request, each waited for on the event
loop while the new thread gets hold of the GIL (docs/benchmarks.md, "A request's thread from a
pool"). Here the thread is an executor's single worker kept in a pool: a request borrows one, the
same as before for the request (one thread, one call at a time), and gives it back when it ends.

asgiref supports this (ThreadSensitiveContext(executor=...), the caller owns the executor). Its
one rule: work the request started must end with it; a task that outlives its request and then
makes a thread-sensitive call gets a RuntimeError rather than running on a thread that now
serves another request.
"""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections, reset_queries

# Idle threads kept for the next requests. Past it (after a burst) a returned thread is let go:
# its executor shuts down without waiting, and the thread ends once its last call does.
IDLE_THREADS_KEPT = 64


class RequestThreads:
    """A pool of single-thread executors, one lent to each request in flight."""

    def __init__(self, idle_kept: int = IDLE_THREADS_KEPT):
        self.idle_kept = idle_kept
        self._idle: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()  # the event loop's thread only, today; cheap insurance
        self.started = 0  # executors made so far: what the tests and benchmarks read

    def take(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.started += 1
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self.idle_kept:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)


class PooledThreadsASGIHandler(ASGIHandler):
    """ASGIHandler whose requests run their thread-sensitive work on a pooled thread."""

    threads = RequestThreads()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)


def get_asgi_application() -> PooledThreadsASGIHandler:
    """As django.core.asgi.get_asgi_application, with the pooled handler, no thread hop for the
    request_started signal, and daphne's requests without twisted's form parsing."""
    import django

    django.setup(set_prefix=False)
    # Django's two receivers of request_started are sync, so every request began with a thread
    # hop to run them (2% of the node's busy time under load, docs/benchmarks.md). Neither has
    # work here: the pooled thread gave its connections back when its last request finished
    # (request_finished still closes them, and database_sync_to_async around every call of our
    # async views), and the query log that reset_queries empties exists under DEBUG only, bounded.
    signals.request_started.disconnect(close_old_connections)
    signals.request_started.disconnect(reset_queries)
    daphne_requests_without_form_parsing()
    return PooledThreadsASGIHandler()


def daphne_requests_without_form_parsing() -> None:
    """In a daphne process: its requests are twisted's, which by default run every POST's
    Content-Type through the email package (and a form's body into `request.args`), which
    daphne never reads: it hands the raw body to the application. That was 5% of the node's busy
    time under load (docs/benchmarks.md). Twisted's Request takes parsePOSTFormSubmission=False
    for this; daphne makes its requests from its module's WebRequest, so that name becomes a
    subclass passing it. Nothing happens where daphne is not the server."""
    module = sys.modules.get("daphne.http_protocol")
    if module is None or getattr(module.WebRequest, "parses_forms", True) is False:
        return

    class WebRequestWithoutFormParsing(module.WebRequest):
        parses_forms = False

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    module.WebRequest = WebRequestWithoutFormParsing


class ThreadPerConnection:
    """For a Channels consumer: its thread-sensitive sync work (every `database_sync_to_async`
    call) runs on a thread of the connection's own, as an HTTP request's does.

    Channels gives a consumer no such context, so asgiref sent the calls of every WebSocket
    connection in the process to one shared thread, one at a time: with 200 agent links, the
    release of a worker after its job queued behind the other links' heartbeat writes, and 64
    clients' requests that arrived together stalled 8-10 s (docs/benchmarks.md, "A thread per
    agent link"). The thread is started on the connection's first such call and ends with it.
    """

    async def __call__(self, scope, receive, send):
        async with ThreadSensitiveContext():
            await super().__call__(scope, receive, send)
