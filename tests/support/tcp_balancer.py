"""A stand-in for a layer-4 load balancer (HAProxy or nginx in TCP mode, a cloud network LB).

Each incoming TCP connection is piped to the first backend, in list order, that accepts it; a
backend that refuses (its node is down) is skipped, as a balancer's health check would. When
either side closes, both do: an agent behind it sees its WebSocket drop when its node dies.

    with TcpBalancer(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as balancer:
        ... balancer.url ...
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit


class TcpBalancer:
    def __init__(self, backends: list[str]) -> None:
        self.backends = [(urlsplit(url).hostname, urlsplit(url).port) for url in backends]
        self.connections: list[tuple[str, int]] = []  # the backend each connection went to
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-balancer", daemon=True)
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def __enter__(self) -> TcpBalancer:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0),
                                                  self._loop).result(timeout=5)
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def shut():
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for host, port in self.backends:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            self.connections.append((host, port))
            break
        else:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer, writer), _pipe(upstream_reader, writer, upstream_writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        # One side gone: close both, as a balancer does (no half-open WebSockets).
        for stream in (sink, other):
            stream.close()
