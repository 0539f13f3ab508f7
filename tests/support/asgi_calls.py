"""Call an ASGI application as a server would, with no server: for tests and benchmarks of the
node's HTTP handler itself."""

import asyncio


def http_scope(path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> dict:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"host", b"localhost"),
                        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items())],
            "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5555),
            "asgi": {"version": "3.0"}, "http_version": "1.1", "root_path": ""}


async def http_status(application, scope: dict, body: bytes = b"") -> int:
    """The status `application` answers `scope` with; the client stays connected throughout."""
    sent, pending = [], [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()

    async def receive():
        if pending:
            return pending.pop()
        await never.wait()

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    return sent[0]["status"]
