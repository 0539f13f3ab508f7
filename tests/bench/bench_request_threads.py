"""A request's thread from a pool (peercycles/handlers.py) next to Django's own ASGI handler, in
one run: the handler's cost per request with no server, network or worker around it.

Each request is GET /v1/models with a key that does not exist (one database read, a 401), called
straight on the handler with ASGI's receive and send, by 1 and 16 concurrent callers. Django's
handler starts a thread for each request and another to join it when it ends; the pooled one
lends a kept thread. Prints wall time and CPU time (this process, all threads) per request.

Needs PostgreSQL (DATABASE_URL; the default is the path benchmark's database, created and migrated).
Run: .venv/bin/python tests/bench/bench_request_threads.py [--requests 2000] [--rounds 3]
"""

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/peercycles_bench_path")
os.environ.setdefault("PEER_DB_POOL_SIZE", "20")  # as the Procfile's web process
os.environ.update(DJANGO_SETTINGS_MODULE="peercycles.settings", DEBUG="0", PEER_LOG_LEVEL="ERROR")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def requests(handler, count: int, concurrency: int) -> None:
    from tests.support.asgi_calls import http_scope, http_status

    bad_key = http_scope("/v1/models", headers={"Authorization": "Bearer sk-not-a-key"})

    async def caller(share: int) -> None:
        for _ in range(share):
            if await http_status(handler, bad_key) != 401:
                raise SystemExit("the handler did not answer 401")

    await asyncio.gather(*(caller(count // concurrency) for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tests.bench.bench_vs_litellm import database_prepare

    database_prepare()
    import django
    from django.core.handlers.asgi import ASGIHandler

    django.setup()
    import logging

    logging.disable(logging.WARNING)  # a 401 per request is the point, not news
    from peercycles.handlers import PooledThreadsASGIHandler

    handlers = {"django": ASGIHandler(), "pooled": PooledThreadsASGIHandler()}
    print(f"{args.requests} requests per line, ms per request (wall / CPU)")
    for round_ in range(1, args.rounds + 1):
        for concurrency in (1, 16):
            figures = []
            for name, handler in handlers.items():
                asyncio.run(requests(handler, 200, concurrency))  # warm: connections, threads
                cpu, wall = cpu_seconds(), time.perf_counter()
                asyncio.run(requests(handler, args.requests, concurrency))
                wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
                figures.append(f"{name} {wall / args.requests * 1000:6.3f} / {cpu / args.requests * 1000:6.3f}")
            print(f"round {round_} c={concurrency:<3} " + "   ".join(figures), flush=True)


if __name__ == "__main__":
    main()
