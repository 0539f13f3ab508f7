"""The scenarios of bench_vs_litellm.py and the tables it prints.

Each scenario runs every path back to back (direct, LiteLLM, Peer Cycles), so the noise of a
shared machine falls on all of them alike, and records the CPU time each path's own processes
spent on it: node and agents for Peer Cycles, the proxy for LiteLLM.
"""

from __future__ import annotations

import asyncio
import time

from tests.bench import loadgen
from tests.bench.loadgen import Target


def settle(target: Target, expected: int) -> None:
    """Before a run on the node: every agent idle again, so no run starts with the last one's
    tail. A link the last run broke may take a while to come back; past 30 s, go on and say so."""
    from django.db import connections

    from tests.bench.fleet import workers_idle

    if not target.name.startswith("peer"):
        return
    deadline = time.monotonic() + 30
    while (idle := workers_idle()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    if idle < expected:
        print(f"  note: only {idle} of {expected} agents idle before this run", flush=True)
    connections.close_all()


class Runner:
    def __init__(self, stack, agents: int) -> None:
        self.stack, self.agents = stack, agents
        self.figures: dict = {"nonstream": {}, "ttft1": {}, "streams": {}, "throughput": {}, "cpu": {}}

    def once(self, kind: str, key, target: Target, coroutine_factory):
        settle(target, self.agents)
        before = self.stack.cpu_seconds()
        value = asyncio.run(coroutine_factory())
        after = self.stack.cpu_seconds()
        spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        if target.name.startswith("peer"):
            cpu = {"proxy": spent.get("node", 0.0), "agents": spent.get("agents", 0.0)}
        elif target.name == "litellm":
            cpu = {"proxy": spent.get("litellm", 0.0), "agents": 0.0}
        else:
            cpu = {"proxy": 0.0, "agents": 0.0}
        self.figures[kind][key] = value
        self.figures["cpu"][(kind, key)] = cpu
        return value


def measure(stack, targets: list[Target], args, agents: int) -> dict:
    runner = Runner(stack, agents)
    for concurrency in args.concurrency:
        requests = max(args.min_requests, 8 * concurrency)
        for target in targets:
            results = runner.once("nonstream", (concurrency, target.name), target, lambda: loadgen.closed_loop(
                target, concurrency=concurrency, requests=requests, stream=False, max_tokens=args.tokens))
            _progress(f"non-streamed c={concurrency}", target, results)
    for target in targets:
        results = runner.once("ttft1", (1, target.name), target, lambda: loadgen.closed_loop(
            target, concurrency=1, requests=args.min_requests, stream=True, max_tokens=args.tokens))
        _progress("stream c=1", target, results)
    for concurrency in args.streams:
        for target in targets:
            results = runner.once("streams", (concurrency, target.name), target, lambda: loadgen.closed_loop(
                target, concurrency=concurrency, requests=2 * concurrency, stream=True,
                max_tokens=args.stream_tokens))
            _progress(f"streams c={concurrency}", target, results)
    for concurrency in args.rps_concurrency:
        for target in targets:
            rate, _, failed = runner.once("throughput", (concurrency, target.name), target,
                                          lambda: loadgen.sustained(target, concurrency=concurrency,
                                                                    seconds=args.rps_seconds, warmup=2.0,
                                                                    max_tokens=1))
            print(f"  req/s c={concurrency:<20} {target.name:16} {rate:.1f}"
                  + (f" ({failed} failed)" if failed else ""), flush=True)
    return runner.figures


def _progress(label: str, target: Target, results: list) -> None:
    failed = [r for r in results if not r.ok]
    note = f"  ({len(failed)} failed: {failed[0].error[:300]})" if failed else ""
    print(f"  {label:22} {target.name:16} {len(results)} requests{note}", flush=True)


def warm_up(targets: list[Target], agents: int) -> None:
    for target in targets:
        settle(target, agents)
        results = asyncio.run(loadgen.closed_loop(target, concurrency=8, requests=32, stream=False, max_tokens=2))
        results += asyncio.run(loadgen.closed_loop(target, concurrency=8, requests=16, stream=True, max_tokens=2))
        failed = [r for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{target.name} does not answer: {failed[0].error}")


# -- the tables -------------------------------------------------------------------------------

def ms(value: float, width: int = 8) -> str:
    return f"{value * 1000:{width}.1f}"


def _cpu(figures: dict, kind: str, key, count: int) -> tuple[float, float]:
    cpu = figures["cpu"][(kind, key)]
    return cpu["proxy"] / max(count, 1), cpu["agents"] / max(count, 1)


def report(figures: dict, targets: list[Target], args) -> dict:
    """Print the tables; return the same figures as plain data (milliseconds) for the JSON file."""
    names = [t.name for t in targets]
    out: dict = {"nonstream": [], "streams": [], "throughput": []}
    print(f"\nNon-streamed: {args.tokens} tokens at {args.tps:g} tok/s ({args.tokens / args.tps * 1000:.0f} ms of "
          "model time). Overhead = end-to-end less the model's time; added = overhead less direct's; "
          "cpu = CPU ms per request of the proxy (node) and of the agents (ms)")
    print(f"{'conc':>4} {'path':18} {'n':>5} {'fail':>4} {'p50':>8} {'p99':>8} {'added p50':>9} "
          f"{'added p99':>9} {'cpu':>6} {'agents':>6}")
    for concurrency in args.concurrency:
        base = loadgen.summary(loadgen.overheads(figures["nonstream"][(concurrency, "direct")]))
        for name in names:
            results = figures["nonstream"][(concurrency, name)]
            p50, p99, _ = loadgen.summary(loadgen.overheads(results))
            failed = sum(not r.ok for r in results)
            cpu, agents = _cpu(figures, "nonstream", (concurrency, name), len(results))
            print(f"{concurrency:>4} {name:18} {len(results):>5} {failed:>4} {ms(p50)} {ms(p99)} "
                  f"{ms(p50 - base[0], 9)} {ms(p99 - base[1], 9)} {ms(cpu, 6)} {ms(agents, 6)}")
            out["nonstream"].append({"concurrency": concurrency, "path": name, "n": len(results), "failed": failed,
                                     "overhead_p50_ms": p50 * 1000, "overhead_p99_ms": p99 * 1000,
                                     "added_p50_ms": (p50 - base[0]) * 1000,
                                     "added_p99_ms": (p99 - base[1]) * 1000,
                                     "cpu_ms_per_request": cpu * 1000, "agent_cpu_ms_per_request": agents * 1000})
    print(f"\nStreams: {args.stream_tokens} tokens at {args.tps:g} tok/s each (c=1: {args.tokens} tokens). "
          "TTFT+ = first chunk less the model's first token; gap = between chunks as read; late = read "
          "less sent; cpu per stream (ms)")
    print(f"{'conc':>4} {'path':18} {'n':>5} {'fail':>4} {'TTFT+p50':>8} {'TTFT+p99':>8} {'gap p50':>7} "
          f"{'gap p99':>8} {'late p99':>8} {'lost':>5} {'reord':>5} {'dup':>3} {'cpu':>6} {'agents':>6}")
    rows = [("ttft1", 1, name, args.tokens) for name in names]
    rows += [("streams", c, name, args.stream_tokens) for c in args.streams for name in names]
    for kind, concurrency, name, tokens in rows:
        results = figures[kind][(concurrency, name)]
        ttft = loadgen.summary(loadgen.ttft_overheads(results))
        f = loadgen.stream_figures(results, tokens)
        cpu, agents = _cpu(figures, kind, (concurrency, name), len(results))
        print(f"{concurrency:>4} {name:18} {f.streams:>5} {f.failed:>4} {ms(ttft[0])} {ms(ttft[1])} "
              f"{ms(f.gap_p50, 7)} {ms(f.gap_p99)} {ms(f.late_p99)} {f.lost:>5} {f.reordered:>5} "
              f"{f.duplicated:>3} {ms(cpu, 6)} {ms(agents, 6)}")
        for error in f.errors:
            print(f"{'':>29}error: {error[:160]}")
        out["streams"].append({"concurrency": concurrency, "path": name, "tokens": tokens, "n": f.streams,
                               "failed": f.failed, "ttft_added_p50_ms": ttft[0] * 1000,
                               "ttft_added_p99_ms": ttft[1] * 1000, "gap_p50_ms": f.gap_p50 * 1000,
                               "gap_p99_ms": f.gap_p99 * 1000, "late_p99_ms": f.late_p99 * 1000,
                               "lost": f.lost, "reordered": f.reordered, "duplicated": f.duplicated,
                               "errors": f.errors, "cpu_ms_per_stream": cpu * 1000,
                               "agent_cpu_ms_per_stream": agents * 1000})
    print(f"\nSustained requests/s: 1-token answers ({1000 / args.tps:.0f} ms of model time), closed loop, "
          f"{args.rps_seconds:g} s after a 2 s warm-up")
    levels = " ".join(f"{'c=' + str(c):>8}" for c in args.rps_concurrency)
    print(f"{'path':18} {levels} {'best':>8} {'failed':>6}")
    for name in names:
        cells = [figures["throughput"][(c, name)] for c in args.rps_concurrency]
        print(f"{name:18} " + " ".join(f"{rate:8.1f}" for rate, _, _ in cells)
              + f" {max(rate for rate, _, _ in cells):8.1f} {sum(f for _, _, f in cells):>6}")
        out["throughput"].append({"path": name, "failed": sum(f for _, _, f in cells),
                                  "by_concurrency": {c: cell[0] for c, cell in zip(args.rps_concurrency, cells)}})
    return out
