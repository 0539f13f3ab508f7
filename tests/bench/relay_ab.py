"""One side of an A/B of the relay: the stack of bench_vs_litellm.py without LiteLLM (paced mock,
node under daphne, agent links in 4 processes), closed loops at the given concurrencies, and per
level the added p50/p90/p99 (ms), requests/s and CPU ms per request of the mock, the node, the
agents, and this machine's PostgreSQL and Redis server processes (read from /proc: on two
shared cores the database's CPU competes with the node's).

An A/B runs it in two checkouts in turn, on the same database, and compares (docs/benchmarks.md):
  git worktree add /tmp/base <commit> && ln -s $PWD/.venv /tmp/base/.venv
  for side in /tmp/base $PWD /tmp/base $PWD; do (cd $side && .venv/bin/python tests/bench/relay_ab.py); done

Needs DATABASE_URL and REDIS_URL of the bench's own, as bench_vs_litellm.py (`make bench-litellm`
sets the defaults: peercycles_bench, Redis db 12).
Run: .venv/bin/python tests/bench/relay_ab.py [--requests 800] [--concurrency 1,64] [--tokens 4]
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import bench_vs_litellm as stack_parts  # noqa: E402
from tests.bench.loadgen import Target, closed_loop, overheads, percentile  # noqa: E402

SERVERS = {"pg": "postgres", "redis": "redis-server"}


def server_cpu_seconds(command: str) -> float:
    """CPU seconds used so far by every process of this machine named `command`."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != command:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def cpu_now(stack) -> dict[str, float]:
    return {**stack.cpu_seconds(), **{name: server_cpu_seconds(command) for name, command in SERVERS.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800, help="requests per level")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--tokens", type=int, default=4, help="tokens of an answer")
    parser.add_argument("--tps", type=float, default=20.0, help="the mock's tokens per second per request")
    parser.add_argument("--agents", type=int, default=64, help="agent links, in 4 processes")
    args = parser.parse_args()
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            raise SystemExit(f"{name} is not set: the node is measured on PostgreSQL and Redis")
    os.environ.update(DJANGO_SETTINGS_MODULE="peercycles.settings", DEBUG="0")
    stack_parts.database_prepare()
    import django

    django.setup()
    from tests.bench.fleet import PUBLIC_MODEL, fleet_seed

    fleet = fleet_seed(agents=args.agents, served_model=stack_parts.MOCK_MODEL, digest=stack_parts.DIGEST,
                       credits=10_000_000)
    stack = stack_parts.Stack()
    print(stack_parts.machine(), flush=True)
    try:
        mock_port = stack_parts.start_mock(stack, args.tps)
        node_port = stack_parts.start_node(stack, "daphne", None)
        stack_parts.start_agents(stack, node_port, mock_port, fleet.worker_tokens, 4)
        peer = Target("peer", node_port, PUBLIC_MODEL, api_key=fleet.api_key, extra={"peer_tier": "open"})
        asyncio.run(closed_loop(peer, concurrency=8, requests=64, stream=False, max_tokens=args.tokens))  # warm
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            before, started = cpu_now(stack), time.monotonic()
            results = asyncio.run(closed_loop(peer, concurrency=concurrency, requests=args.requests, stream=False,
                                              max_tokens=args.tokens))
            wall, after = time.monotonic() - started, cpu_now(stack)
            added, ok = overheads(results), sum(result.ok for result in results)
            cpu = " ".join(f"{kind}={1000 * (after[kind] - before.get(kind, 0)) / max(ok, 1):.2f}"
                           for kind in after if after[kind] - before.get(kind, 0) > 0.01)
            print(f"c={concurrency:<3} ok={ok} added p50={1000 * percentile(added, 50):.1f} "
                  f"p90={1000 * percentile(added, 90):.1f} p99={1000 * percentile(added, 99):.1f} ms "
                  f"{ok / wall:.1f} req/s; CPU ms per request: {cpu}", flush=True)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
