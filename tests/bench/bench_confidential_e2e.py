"""What the confidential tier adds to a request's latency over the verified tier, end to end, with
the local proxy's attestation cache warm (docs/confidential.md). One run, four paths, one request
at a time, with the official `openai` SDK as the client:

  direct        client -> paced mock OpenAI server (tests/bench/paced_openai.py): the floor
  verified      client -> node /v1 (daphne, PostgreSQL, Redis) -> bonded verified-tier agent
                (`python -m worker --backend openai`) -> mock -> back
  verified+proxy  as verified, through the local proxy (peer_tier "verified": relayed unsealed):
                the proxy hop alone
  confidential  client -> local proxy (client.proxy, in this process: attest once, seal, open,
                verify the enclave's signature) -> node -> agent's host process -> its enclave
                process (`--enclave simulated --backend openai`) -> mock -> back, sealed

each streamed and not, same prompt and max_tokens, the paths taking turns one request at a time
so the machine's noise falls on all of them. Prints p50/p99 of the total time and of the time to
the first content chunk per path, the confidential tier's added latency over the verified tier,
and next to it the crypto of one request of the same size measured on the code path of
tests/bench/bench_confidential.py (its one_request), so the reader sees how much of the difference
is crypto and how much the proxy hop, the enclave's process boundary and the larger frames.
Target (the issue): at most 1 ms of crypto per request at p50.

Runs on PostgreSQL and Redis of its own: BENCH_DATABASE_URL (default database
peercycles_bench_conf, created if missing, then migrated) and BENCH_REDIS_URL (default db 13);
never DATABASE_URL, because the run takes that database's workers offline. Logs and a JSON of
the figures go to test-output/bench-confidential-e2e/.

Run: .venv/bin/python tests/bench/bench_confidential_e2e.py [--requests 100] [--max-tokens 64]
         [--tokens-per-second 200] [--warmup 3] [--paths direct,verified,verified+proxy,confidential]
Prints its figures; asserts nothing (tests/e2e/test_confidential_tier.py checks the tier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_vs_litellm import (  # noqa: E402
    DIGEST, MOCK_MODEL, database_prepare, free_port, machine, node_env, port_open,
)

LOGS = ROOT / "test-output" / "bench-confidential-e2e"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/peercycles_bench_conf"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
PATHS = ("direct", "verified", "verified+proxy", "confidential")
MODES = ("non-streamed", "streamed")
TARGET_MS = 1.0
PROMPT = "Summarise the attached maintenance record in two sentences for the duty engineer."
# Attestation is cached for the whole run: the figure is the steady state, not the first request.
ATTESTATION_TTL = 24 * 3600.0
VERIFIED_WORKER, ENCLAVE_WORKER = "bench-conf-verified", "bench-conf-enclave"


class Stack:
    """The run's child processes, each in a session of its own (the confidential agent starts its
    enclave process as a child: stopping the group stops both), logging to LOGS/<name>.log."""

    def __init__(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}
        self.proxy = None  # the local proxy, served from a thread of this process

    def spawn(self, name: str, argv: list[str], env: dict) -> Path:
        log = LOGS / f"{name}.log"
        with open(log, "w") as out:
            self.children[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
        return log

    def check(self, name: str) -> None:
        if self.children[name].poll() is not None:
            raise SystemExit(f"{name} exited; see {LOGS / (name + '.log')}")

    def stop_all(self) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()
            self.proxy = None
        for name in reversed(list(self.children)):
            child = self.children.pop(name)
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(child.pid, sig)  # the group of a process this run started
                except ProcessLookupError:
                    break
                try:
                    child.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def wait_until(what: str, ready, timeout: float, stack: Stack, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check(name)
        if ready():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {timeout:.0f}s; see {LOGS / (name + '.log')}")


# -- the pieces -------------------------------------------------------------------------------

def seed(credits: int):
    """The catalogue entry and buyer of tests/bench/fleet.py, plus this run's two workers: one
    verified (bonded, as the verified tier routes only to bonded workers) and one confidential.
    Returns (api key, verified worker and token, enclave worker and token)."""
    from apps.accounts.services import user_get_or_create
    from apps.workers.models import Worker
    from apps.workers.services import worker_register, worker_token_rotate
    from tests.bench.fleet import OPERATOR, fleet_seed

    fleet = fleet_seed(agents=0, served_model=MOCK_MODEL, digest=DIGEST, credits=credits)
    operator = user_get_or_create(username=OPERATOR)
    workers = []
    for name, tier in ((VERIFIED_WORKER, "verified"), (ENCLAVE_WORKER, "confidential")):
        worker = Worker.objects.filter(operator=operator, name=name).first()
        if worker is None:
            worker, token = worker_register(operator=operator, name=name, tiers=[tier])
        else:
            token = worker_token_rotate(worker_id=worker.id)
        workers.append((worker, token))
    bond_up(workers[0][0])
    return fleet.api_key, workers[0], workers[1]


def bond_up(worker) -> None:
    """Top the worker's bond up to PEER_VERIFIED_BOND with $PEER granted from the treasury."""
    from django.conf import settings

    from apps.staking.selectors import worker_bond_get
    from apps.staking.services import bond_lock, peer_grant

    missing = settings.PEER_VERIFIED_BOND - worker_bond_get(worker=worker)
    if missing > 0:
        peer_grant(user=worker.operator, amount=missing)
        bond_lock(worker=worker, amount=missing)


def start_mock(stack: Stack, tps: float) -> int:
    log = stack.spawn("mock", [sys.executable, str(ROOT / "tests/bench/paced_openai.py"), "--tps", str(tps)],
                      dict(os.environ, PYTHONUNBUFFERED="1"))
    found: list[str] = []

    def ready() -> bool:
        found[:] = re.findall(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        return bool(found)

    wait_until("the mock", ready, 20, stack, "mock")
    return int(found[0])


def start_node(stack: Stack) -> int:
    port = free_port()
    env = dict(node_env(None), PEER_ALLOW_SIMULATED_ENCLAVE="1")
    stack.spawn("node", [sys.executable, "-m", "daphne", "-e",
                         f"tcp:port={port}:interface=127.0.0.1:backlog=1024", "peercycles.asgi:application"], env)
    wait_until("the node", lambda: port_open(port), 60, stack, "node")
    return port


def start_agent(stack: Stack, name: str, node_port: int, mock_port: int, token: str, *extra: str) -> None:
    """`python -m worker` as an operator starts it for an openai-compatible server; the token in
    the environment (not on a command line others can read), a key file of the run's own."""
    env = dict(os.environ, PEER_WORKER_TOKEN=token, PYTHONUNBUFFERED="1")
    stack.spawn(name, [sys.executable, "-m", "worker", "--server", f"http://127.0.0.1:{node_port}",
                       "--backend", "openai", "--backend-url", f"http://127.0.0.1:{mock_port}",
                       "--model", MOCK_MODEL, "--model-digest", f"{MOCK_MODEL}={DIGEST}",
                       "--embeddings", "none", "--key-file", str(LOGS / f"{name}-key.pem"),
                       "--log-level", "WARNING", "--name", name, *extra], env)


def wait_serving(stack: Stack, name: str, worker, *, attested: bool) -> None:
    from apps.workers.models import Worker

    ready = Worker.objects.filter(id=worker.id, status=Worker.Status.IDLE)
    if attested:  # the node routes a sealed request only to an enclave whose evidence it verified
        ready = ready.filter(attested_until__isnull=False)
    wait_until(name, ready.exists, 120, stack, name)


def start_proxy(node_port: int, api_key: str):
    from client.confidential import AttestationPolicy
    from client.proxy import ProxyConfig, make_server

    server = make_server(ProxyConfig(upstream=f"http://127.0.0.1:{node_port}", api_key=api_key,
                                     policy=AttestationPolicy(allow_simulated=True),
                                     attestation_ttl=ATTESTATION_TTL))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- measuring --------------------------------------------------------------------------------

@dataclass
class Route:
    name: str
    client: object  # openai.OpenAI
    model: str
    extra_body: dict = field(default_factory=dict)


@dataclass
class Sample:
    total: float
    first: float | None  # first content chunk, streamed only
    ok: bool


def answer_complete(text: str, max_tokens: int) -> bool:
    """The mock stamps every token with its number: all of them, in order, or the path lost some."""
    return [int(n) for n in re.findall(r"<(\d+)@", text)] == list(range(max_tokens))


def one(route: Route, mode: str, max_tokens: int) -> Sample:
    """One request; ok only if the whole answer came back and, confidential, the proxy verified
    the enclave's signature."""
    ask = dict(model=route.model, max_tokens=max_tokens, temperature=0, seed=7,
               extra_body=route.extra_body, messages=[{"role": "user", "content": PROMPT}])
    clock = time.perf_counter
    started = clock()
    if mode == "non-streamed":
        completion = route.client.chat.completions.create(**ask)
        total = clock() - started
        text, first = completion.choices[0].message.content or "", None
        peer = (completion.model_extra or {}).get("peer")
    else:
        text, first, peer = "", None, None
        for chunk in route.client.chat.completions.create(**ask, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = clock() - started
                text += chunk.choices[0].delta.content
            peer = (chunk.model_extra or {}).get("peer") or peer
        total = clock() - started
    ok = answer_complete(text, max_tokens)
    if route.name == "confidential":
        ok = ok and bool(((peer or {}).get("verified") or {}).get("signature"))
    elif route.name.startswith("verified"):
        ok = ok and (peer or {}).get("tier") == "verified"
    return Sample(total, first, ok)


def measure(routes: list[Route], args) -> dict[str, dict[str, list[Sample]]]:
    """Warm every path and mode (the confidential one's first request attests and fills the
    proxy's cache), then interleave in rounds: request i of every path before request i + 1 of
    any."""
    samples = {route.name: {mode: [] for mode in MODES} for route in routes}
    for mode in MODES:
        for route in routes:
            for _ in range(args.warmup):
                if not one(route, mode, args.max_tokens).ok:
                    raise SystemExit(f"{route.name} {mode}: the warm-up request came back incomplete; "
                                     f"see {LOGS}")
        for index in range(args.requests):
            # Each round starts with another path, so none always runs first after a pause.
            for route in routes[index % len(routes):] + routes[:index % len(routes)]:
                samples[route.name][mode].append(one(route, mode, args.max_tokens))
        print(f"  {mode}: {args.requests} requests per path done", flush=True)
    return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def crypto_per_request(max_tokens: int, runs: int) -> tuple[dict[str, tuple[float, float]], int]:
    """(p50/p99 ms of the client's, the enclave's and both sides' crypto, body bytes) of
    bench_confidential.one_request, for an answer of max_tokens pieces the size of the mock's
    tokens and a sealed body the size of this run's (as the proxy seals it)."""
    from client.attestation.simulated import SimulatedEnclave
    from tests.bench.bench_confidential import WARMUP, attested, one_request
    from tests.bench.paced_openai import token_text

    body = json.dumps({"model": "bench-mock", "max_tokens": max_tokens, "temperature": 0, "seed": 7,
                       "messages": [{"role": "user", "content": PROMPT}], "stream": True},
                      separators=(",", ":")).encode("utf-8")
    now = time.monotonic()
    pieces = [token_text(seq, now + seq / 200, now if seq == 0 else None) for seq in range(max_tokens)]
    enclave = SimulatedEnclave()
    client_view = attested(enclave)
    for _ in range(WARMUP):
        one_request(enclave, client_view, body, pieces)
    timings = [one_request(enclave, client_view, body, pieces) for _ in range(runs)]
    figures = {}
    for step in ("client total", "enclave total", "both"):
        values = [timing[step] * 1000 for timing in timings]
        figures[step] = (percentile(values, 0.5), percentile(values, 0.99))
    return figures, len(body)


# -- reporting --------------------------------------------------------------------------------

def summarise(samples: dict[str, dict[str, list[Sample]]]) -> dict:
    figures: dict = {}
    for name, modes in samples.items():
        for mode, runs in modes.items():
            good = [s for s in runs if s.ok]
            totals = [s.total * 1000 for s in good]
            firsts = [s.first * 1000 for s in good if s.first is not None]
            figures[(name, mode)] = {
                "n": len(good), "failed": len(runs) - len(good),
                "total": (percentile(totals, 0.5), percentile(totals, 0.99)) if totals else None,
                "first": (percentile(firsts, 0.5), percentile(firsts, 0.99)) if firsts else None}
    return figures


def cell(pair) -> str:
    return f"{pair[0]:9.1f}{pair[1]:9.1f}" if pair else f"{'—':>9}{'—':>9}"


def paired_median(samples, name: str, other: str, mode: str, metric: str) -> float | None:
    """Median over i of (request i on `name` - request i on `other`), in ms: the two were sent
    in the same round, so this is steadier than a difference of medians on a noisy machine."""
    pairs = zip(samples[name][mode], samples[other][mode])
    deltas = [(getattr(a, metric) - getattr(b, metric)) * 1000 for a, b in pairs
              if a.ok and b.ok and getattr(a, metric) is not None and getattr(b, metric) is not None]
    return percentile(deltas, 0.5) if deltas else None


def added(samples, figures: dict, crypto_p50: float) -> dict:
    """The confidential tier over the verified tier per mode and metric: differences of p50 and
    p99, the paired median, and of that the proxy hop (verified+proxy over verified) and what is
    left besides the crypto (an upper bound on crypto's share: all of it counted as if serial)."""
    rows = {}
    for mode in MODES:
        for metric, key in (("total", "total"), ("first", "TTFT")):
            conf = figures.get(("confidential", mode), {}).get(metric)
            ver = figures.get(("verified", mode), {}).get(metric)
            if not conf or not ver:
                continue
            row = {"p50": conf[0] - ver[0], "p99": conf[1] - ver[1],
                   "paired": paired_median(samples, "confidential", "verified", mode, metric)}
            if "verified+proxy" in samples:
                row["hop"] = paired_median(samples, "verified+proxy", "verified", mode, metric)
                row["rest"] = paired_median(samples, "confidential", "verified+proxy", mode, metric)
                if row["rest"] is not None:
                    row["rest"] -= crypto_p50
            rows[f"{mode} {key}"] = row
    return rows


def report(figures: dict, comparison: dict, crypto: dict, body_bytes: int, args) -> None:
    print(f"\n{'path':<16}{'mode':<14}{'ok':>5}{'failed':>7}{'total p50':>11}{'p99':>7}"
          f"{'TTFT p50':>11}{'p99':>7}   (ms)")
    for (name, mode), row in figures.items():
        print(f"{name:<16}{mode:<14}{row['n']:>5}{row['failed']:>7}  {cell(row['total'])}  "
              f"{cell(row['first'])}")
    both = crypto["both"]
    print(f"\ncrypto of one request on bench_confidential's code path ({args.max_tokens} pieces, "
          f"{body_bytes}-byte sealed body): p50 {both[0]:.3f} ms, p99 {both[1]:.3f} ms "
          f"(client {crypto['client total'][0]:.3f}, enclave {crypto['enclave total'][0]:.3f} at p50)")
    print(f"\nconfidential over verified (ms){'p50':>15}{'p99':>9}{'paired':>9}{'crypto':>9}"
          f"{'hop':>8}{'rest':>8}")
    for label, row in comparison.items():
        extra = "".join(f"{row[k]:+8.1f}" if row.get(k) is not None else f"{'—':>8}" for k in ("hop", "rest"))
        paired = f"{row['paired']:+9.1f}" if row["paired"] is not None else f"{'—':>9}"
        print(f"  {label:<29}{row['p50']:+15.1f}{row['p99']:+9.1f}{paired}{both[0]:9.2f}{extra}")
    print("  paired: median of per-request differences (the paths take turns, one request each "
          "per round);\n  hop: verified through the proxy over verified, paired; rest: "
          "confidential over verified through the proxy, paired, less all the crypto:\n  the node's "
          "confidential path (the enclave pin, its verdict), the host-enclave pipe, larger frames, "
          "the proxy's JSON per chunk")
    verdict = "within" if both[0] <= TARGET_MS else f"{both[0] / TARGET_MS:.1f}x over"
    print(f"\ntarget: at most {TARGET_MS:.0f} ms of crypto per request at p50: {both[0]:.3f} ms, {verdict}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="measured requests per path and mode")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="tokens of every answer (= sealed pieces of a confidential one)")
    parser.add_argument("--tokens-per-second", type=float, default=200.0,
                        help="the mock's pace per request (0: as fast as it can)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per path and mode first (>= 1)")
    parser.add_argument("--crypto-runs", type=int, default=500, help="requests of the crypto-only measurement")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"some of {','.join(PATHS)}")
    args = parser.parse_args()
    args.paths = [p for p in args.paths.split(",") if p]
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    args.warmup = max(1, args.warmup)
    return args


def reproduce(args) -> str:
    prefix = "".join(f"{name}={os.environ[name]} " for name in ("BENCH_DATABASE_URL", "BENCH_REDIS_URL")
                     if os.environ.get(name))
    return (f"{prefix}.venv/bin/python tests/bench/bench_confidential_e2e.py --requests {args.requests} "
            f"--max-tokens {args.max_tokens} --tokens-per-second {args.tokens_per_second:g} "
            f"--warmup {args.warmup} --paths {','.join(args.paths)}")


def run(args, stack: Stack) -> tuple[dict, float]:
    """Start everything, measure; the caller stops the processes. Returns (samples, seconds)."""
    import openai

    api_key, (verified, verified_token), (enclave, enclave_token) = seed(credits=1_000_000)
    mock_port = start_mock(stack, args.tokens_per_second)
    node_port = start_node(stack)
    start_agent(stack, "agent-verified", node_port, mock_port, verified_token)
    start_agent(stack, "agent-enclave", node_port, mock_port, enclave_token, "--enclave", "simulated")
    wait_serving(stack, "agent-verified", verified, attested=False)
    wait_serving(stack, "agent-enclave", enclave, attested=True)
    proxy = stack.proxy = start_proxy(node_port, api_key)

    def sdk(url: str, key: str):
        return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)

    from tests.bench.fleet import PUBLIC_MODEL

    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    every = {"direct": Route("direct", sdk(f"http://127.0.0.1:{mock_port}/v1", "sk-mock"), MOCK_MODEL),
             "verified": Route("verified", sdk(f"http://127.0.0.1:{node_port}/v1", api_key), PUBLIC_MODEL,
                               {"peer_tier": "verified"}),
             "verified+proxy": Route("verified+proxy", sdk(proxy_url, "unused"), PUBLIC_MODEL,
                                     {"peer_tier": "verified"}),
             "confidential": Route("confidential", sdk(proxy_url, "unused"), PUBLIC_MODEL)}
    model_ms = args.max_tokens / args.tokens_per_second * 1000 if args.tokens_per_second else 0
    print(f"mock at {args.tokens_per_second:g} tokens/s, {args.max_tokens} tokens an answer "
          f"(the model's own time {model_ms:.0f} ms); "
          f"verified tier: a bonded worker; confidential: a SIMULATED enclave; proxy in this process, "
          f"attestation cached for the run", flush=True)
    started = time.monotonic()
    samples = measure([every[name] for name in args.paths], args)
    return samples, time.monotonic() - started


def main() -> None:
    args = parse_args()
    # A plain SIGTERM would skip the `finally` that stops the node, the agents and the mock.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.update(DATABASE_URL=os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DATABASE_URL,
                      REDIS_URL=os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS_URL,
                      DJANGO_SETTINGS_MODULE="peercycles.settings", DEBUG="0")
    import cryptography
    import django

    database_prepare()
    django.setup()
    print(f"confidential tier over verified, end to end: {args.requests} requests per path and mode, "
          f"one at a time")
    print(f"{machine()}; python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{platform.machine()}")
    print(f"reproduce: {reproduce(args)}", flush=True)
    stack = Stack()
    try:
        samples, seconds = run(args, stack)
    finally:
        stack.stop_all()
    crypto, body_bytes = crypto_per_request(args.max_tokens, args.crypto_runs)
    figures = summarise(samples)
    comparison = added(samples, figures, crypto["both"][0])
    report(figures, comparison, crypto, body_bytes, args)
    print(f"\nmeasured in {seconds:.0f} s; after the run: {machine()}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (LOGS / f"results-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "reproduce": reproduce(args), "machine": machine(), "crypto_ms": crypto,
         "sealed_body_bytes": body_bytes, "added_ms": comparison,
         "figures": {f"{name} {mode}": row for (name, mode), row in figures.items()}}, indent=1))
    print(f"figures saved in {LOGS / f'results-{stamp}.json'}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the processes were stopped on the way out
        sys.exit(130)
