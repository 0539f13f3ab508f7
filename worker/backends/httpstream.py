"""HTTP plumbing shared by the `ollama` and `openai` backends (stdlib http.client only).

A generation is one streaming POST read line by line on the job's thread. Cancelling must not
wait for the server's next line (a model still loading sends nothing for a long time), so a
watcher shuts the socket down as soon as the job's cancel event is set; the blocked read then
returns and the stream reports "cancelled". Closing the stream is also how the server learns
to stop generating.

Errors map onto job.error codes: a server that cannot be reached, or whose stream breaks off,
is `backend_unavailable`; an HTTP error status or a line that is not the wire format is
`backend_error` (or `context_length_exceeded` when the server says so). Either way the node
fails the job over to another worker if no token was sent yet.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

from worker import __version__
from worker.backends import BackendError, BackendUnavailable, Finish, Piece
from worker.backends.textstream import StopStream

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# Between two bytes of a response. Long: a server may load a model before its first token; a
# node that tires of waiting cancels the job, which closes the stream at once anyway.
READ_TIMEOUT = 600.0
MAX_LINE = 1024 * 1024
_CANCEL_POLL = 0.05


def _context_error(status: int, message: str) -> bool:
    return status == 400 and "context" in message.lower() and "length" in message.lower()


@dataclass(frozen=True)
class Chunk:
    """One parsed line of a server's stream."""

    text: str = ""
    finish_reason: str | None = None  # set on the server's last chunk
    completion_tokens: int | None = None  # the server's own count, when it gives one


class HttpClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, what: str = "server") -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"User-Agent": f"peer-cycles-worker/{__version__}",
                         "Accept": "application/json, application/x-ndjson, text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.what = what

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise BackendError("backend_unavailable",
                               f"cannot reach the {self.what} at {self.base_url}: {exc}") from None
        assert conn.sock is not None
        conn.sock.settimeout(READ_TIMEOUT)
        return conn

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              body: dict[str, Any] | None) -> http.client.HTTPResponse:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise BackendError("backend_unavailable",
                               f"the {self.what} at {self.base_url} did not answer: {exc}") from None
        if response.status >= 400:
            message = _error_message(response)
            code = "context_length_exceeded" if _context_error(response.status, message) \
                else "backend_error"
            raise BackendError(code, f"the {self.what} answered {response.status} to "
                                     f"{method} {path}: {message}")
        return response

    def get_json(self, path: str) -> Any:
        """A JSON document, for start-up queries. Raises BackendUnavailable on any failure."""
        conn = None
        try:
            conn = self._connection()
            response = self._send(conn, "GET", path, None)
            return json.loads(response.read())
        except BackendError as exc:
            raise BackendUnavailable(exc.message) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BackendUnavailable(f"the {self.what} at {self.base_url} answered {path} "
                                     f"with something that is not JSON: {exc}") from None
        finally:
            if conn is not None:
                conn.close()

    @contextmanager
    def stream(self, path: str, body: dict[str, Any],
               cancel: threading.Event) -> Iterator[Iterator[bytes]]:
        """POST `body` and yield the response's lines; the connection closes on exit and, from
        the watcher, as soon as `cancel` is set. A read that fails after cancel ends the lines
        quietly; otherwise it is `backend_unavailable`."""
        conn = self._connection()
        finished = threading.Event()
        watcher = threading.Thread(target=_shut_on_cancel, args=(conn, cancel, finished),
                                   name="http-cancel", daemon=True)
        watcher.start()
        try:
            response = self._send(conn, "POST", path, body)
            yield self._lines(response, cancel)
        finally:
            finished.set()
            conn.close()

    def _lines(self, response: http.client.HTTPResponse, cancel: threading.Event) -> Iterator[bytes]:
        while True:
            try:
                line = response.readline(MAX_LINE + 1)
            except (OSError, ValueError, AttributeError, http.client.HTTPException) as exc:
                # After a cancel the watcher's shutdown makes the read fail: that is the point.
                if cancel.is_set():
                    return
                raise BackendError("backend_unavailable",
                                   f"the {self.what}'s stream broke off: {exc}") from None
            if not line:
                return
            if len(line) > MAX_LINE:
                raise BackendError("backend_error", f"the {self.what} sent a line over {MAX_LINE} bytes")
            yield line


def _shut_on_cancel(conn: http.client.HTTPConnection, cancel: threading.Event,
                    finished: threading.Event) -> None:
    while not finished.is_set():
        if cancel.wait(_CANCEL_POLL):
            sock = conn.sock
            if sock is not None and not finished.is_set():
                try:
                    # shutdown, not close: it wakes a recv blocked in the job's thread.
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return


def _error_message(response: http.client.HTTPResponse) -> str:
    """The server's own words: Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}."""
    try:
        raw = response.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        return response.reason or ""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:500] or (response.reason or "")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str):
        return error
    return json.dumps(body)[:500]


def json_line(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise BackendError("backend_error",
                           f"the {what} sent a line that is not JSON: {line[:200]!r}") from None
    if not isinstance(value, dict):
        raise BackendError("backend_error", f"the {what} sent a JSON line that is not an object")
    error = value.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendError("backend_error", f"the {what} reported an error: {message}")
    return value


def relay(chunks: Iterable[Chunk], stops: list[str], cancel: threading.Event,
          what: str) -> Iterator[Piece]:
    """Server chunks -> text pieces and one Finish, enforcing stop sequences ourselves.

    The server is sent the stops too (so it stops sampling), but a server may emit a stop
    sequence split over chunks, or ignore some (OpenAI's API takes at most four); holding back a
    possible stop start here keeps the stream identical whatever the server does.
    """
    stream = StopStream(stops)
    count, reason, server_count = 0, None, None
    for chunk in chunks:
        if cancel.is_set():
            break
        if chunk.text:
            count += 1
            step = stream.feed(chunk.text.encode("utf-8"))
            if step.text:
                yield step.text
            if step.stopped:
                yield Finish("stop", count)
                return
        if chunk.completion_tokens is not None:
            server_count = chunk.completion_tokens
        if chunk.finish_reason is not None:
            reason = chunk.finish_reason
    if cancel.is_set():
        yield Finish("cancelled", count)
        return
    if reason is None:
        raise BackendError("backend_unavailable", f"the {what}'s stream ended before it was done")
    tail = stream.flush()
    if tail:
        yield tail
    yield Finish("length" if reason == "length" else "stop",
                 server_count if server_count is not None else count)
