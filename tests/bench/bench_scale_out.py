"""Scale-out: one node process against two on the same PostgreSQL and Redis, in one run.

  one    clients -> node A; every agent on node A
  two    clients split over nodes A and B; agents split over A and B (about half the jobs have
         their client on one node and their worker on the other)
  cross  clients -> node B; every agent on node A (every token crosses processes through Redis)

Agents are `tests/bench/agent_pool.py` links (the real agent code, backend openai) in front of
the paced mock (`paced_openai.py`), so the figures are the node's, not a model's. For each layout:
sustained requests/s of 1-token answers in a closed loop, the node processes' CPU time per
request (user + system, from /proc), and for concurrent streams the TTFT the path adds, the gap
between chunks and any chunk lost, reordered or duplicated.

Needs PostgreSQL and Redis of its own (DATABASE_URL, REDIS_URL): the fleet takes that
database's workers offline. Run:
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/peercycles_bench REDIS_URL=redis://127.0.0.1:6379/9 \\
    .venv/bin/python tests/bench/bench_scale_out.py [--concurrency 32] [--streams 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import loadgen  # noqa: E402
from tests.bench.bench_vs_litellm import (DIGEST, LOGS, MOCK_MODEL, Stack, database_prepare, free_port,  # noqa: E402
                                          port_open, start_mock, wait_until)
from tests.bench.loadgen import Target  # noqa: E402

LAYOUTS = ("one", "two", "cross")


def node_env() -> dict:
    # As the Procfile's web process (DEBUG off, a pool of PostgreSQL connections); the queue
    # limit above the load, so a burst waits for a worker instead of being refused with 429.
    env = dict(os.environ, DEBUG="0", PEER_LOG_LEVEL="WARNING", PEER_QUEUE_LIMIT="1000",
               SECRET_KEY="bench-only-" + "x" * 40, PYTHONUNBUFFERED="1")
    env.setdefault("PEER_DB_POOL_SIZE", "20")
    return env


def start_node(stack: Stack, name: str) -> int:
    port = free_port()
    stack.spawn(name, [sys.executable, "-m", "daphne", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
                       "peercycles.asgi:application"], node_env())
    wait_until(name, lambda: port_open(port), 60, stack, name)
    return port


def start_pools(stack: Stack, placement: list[tuple[int, list[str]]], mock_port: int, total: int) -> list[str]:
    """One agent pool process per (node port, tokens); returns their names once all are idle."""
    from tests.bench.fleet import workers_idle

    names = []
    for index, (node_port, tokens) in enumerate(placement):
        path = LOGS / f"scale-tokens-{index}.txt"
        path.write_text("\n".join(tokens) + "\n")
        path.chmod(0o600)
        name = f"scale-agents-{index}"
        stack.spawn(name, [sys.executable, str(ROOT / "tests/bench/agent_pool.py"),
                           "--server", f"http://127.0.0.1:{node_port}",
                           "--backend-url", f"http://127.0.0.1:{mock_port}",
                           "--model", MOCK_MODEL, "--digest", DIGEST, "--tokens-file", str(path),
                           "--name", f"scale-pool{index}"])
        names.append(name)
    wait_until(f"{total} agents", lambda: workers_idle() >= total, 120, stack, names[0])
    return names


def workers_online() -> int:
    from apps.workers.models import Worker

    return Worker.objects.filter(name__startswith="bench-").exclude(status=Worker.Status.OFFLINE).count()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (/proc/<pid>/stat fields 14 and 15)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def sustained_over(targets: list[Target], concurrency: int, seconds: float) -> tuple[float, int, int]:
    shares = [concurrency // len(targets) + (i < concurrency % len(targets)) for i in range(len(targets))]
    parts = await asyncio.gather(*(loadgen.sustained(t, concurrency=c, seconds=seconds, warmup=2.0, max_tokens=1)
                                   for t, c in zip(targets, shares)))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


async def streams_over(targets: list[Target], concurrency: int, tokens: int) -> list:
    share = max(1, concurrency // len(targets))
    parts = await asyncio.gather(*(loadgen.closed_loop(t, concurrency=share, requests=2 * share, stream=True,
                                                       max_tokens=tokens) for t in targets))
    return [result for part in parts for result in part]


def measure(layout: str, targets: list[Target], node_pids: list[int], args) -> dict:
    from tests.bench.fleet import workers_idle

    before = cpu_seconds(node_pids)
    rate, ok, failed = asyncio.run(sustained_over(targets, args.concurrency, args.seconds))
    # CPU over the whole closed loop (warm-up included) per request it completed in its window:
    # an upper bound, fine for comparing layouts measured the same way.
    cpu_ms = (cpu_seconds(node_pids) - before) * 1000 / max(ok, 1)
    deadline = time.monotonic() + 60
    while workers_idle() < args.agents and time.monotonic() < deadline:
        time.sleep(0.2)
    results = asyncio.run(streams_over(targets, args.streams, args.stream_tokens))
    figures = loadgen.stream_figures(results, args.stream_tokens)
    ttft = loadgen.summary(loadgen.ttft_overheads(results))
    return {"layout": layout, "rps": rate, "ok": ok, "failed": failed, "cpu_ms_per_request": cpu_ms,
            "streams": figures, "ttft_p50": ttft[0], "ttft_p99": ttft[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients for requests/s")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--stream-tokens", type=int, default=40)
    parser.add_argument("--tps", type=float, default=20.0, help="the mock's tokens per second per request")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args()
    args.agents = max(args.concurrency, args.streams)
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            raise SystemExit(f"{name} is not set: nodes share PostgreSQL and Redis")
    os.environ.update(DJANGO_SETTINGS_MODULE="peercycles.settings", DEBUG="0")
    database_prepare()
    import django

    django.setup()
    from tests.bench.fleet import PUBLIC_MODEL, fleet_seed

    fleet = fleet_seed(agents=args.agents, served_model=MOCK_MODEL, digest=DIGEST, credits=10_000_000)
    tokens = fleet.worker_tokens
    stack = Stack()
    rows = []
    try:
        mock_port = start_mock(stack, args.tps)
        port_a, port_b = start_node(stack, "scale-node-a"), start_node(stack, "scale-node-b")
        pids = [stack.children["scale-node-a"].pid, stack.children["scale-node-b"].pid]
        target = {port: Target(f"node-{port}", port, PUBLIC_MODEL, api_key=fleet.api_key, extra={"peer_tier": "open"})
                  for port in (port_a, port_b)}
        half = len(tokens) // 2
        layouts = {
            "one": ([(port_a, tokens[:half]), (port_a, tokens[half:])], [target[port_a]]),
            "two": ([(port_a, tokens[:half]), (port_b, tokens[half:])], [target[port_a], target[port_b]]),
            "cross": ([(port_a, tokens[:half]), (port_a, tokens[half:])], [target[port_b]]),
        }
        for layout in [name for name in args.layouts.split(",") if name]:
            placement, targets = layouts[layout]
            pools = start_pools(stack, placement, mock_port, len(tokens))
            asyncio.run(loadgen.closed_loop(targets[0], concurrency=8, requests=32, stream=False, max_tokens=2))
            rows.append(measure(layout, targets, pids, args))
            print(f"  {layout}: done", flush=True)
            for name in pools:
                stack.stop(name)
            # The next layout starts from no live link: a row still marked idle would be routed to.
            wait_until("the agents offline", lambda: workers_online() == 0, 60, stack, "scale-node-a")
    finally:
        stack.stop_all()
    print(f"\n{args.agents} agent links; requests/s: 1-token answers, {args.concurrency} clients, "
          f"{args.seconds:g} s; streams: {args.streams} x {args.stream_tokens} tokens at {args.tps:g} tok/s")
    print(f"{'layout':6} {'req/s':>7} {'failed':>6} {'node CPU ms/req':>15} {'streams':>7} {'s.fail':>6} "
          f"{'TTFT+p50':>8} {'TTFT+p99':>8} {'gap p99':>8} {'lost':>5} {'reord':>5} {'dup':>4}")
    for row in rows:
        f = row["streams"]
        print(f"{row['layout']:6} {row['rps']:7.1f} {row['failed']:>6} {row['cpu_ms_per_request']:15.1f} "
              f"{f.streams:>7} {f.failed:>6} {row['ttft_p50'] * 1000:8.1f} {row['ttft_p99'] * 1000:8.1f} "
              f"{f.gap_p99 * 1000:8.1f} {f.lost:>5} {f.reordered:>5} {f.duplicated:>4}"
              + (f"  errors: {f.errors}" if f.errors else ""))


if __name__ == "__main__":
    main()
