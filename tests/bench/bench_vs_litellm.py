"""What does Peer Cycles put between a client and a model, next to LiteLLM? One run, three paths:

  direct   client -> paced mock OpenAI server (tests/bench/paced_openai.py)
  peer     client -> node /v1 (daphne, PostgreSQL, Redis channel layer) -> route -> WebSocket
           -> worker agent (backend openai) -> mock -> back the same way
  litellm  client -> LiteLLM proxy (its own venv, no database) -> mock -> back

The mock emits tokens at a fixed rate and stamps each with its sequence number and the time it
left (see paced_openai.py), so every figure is the path's own: end-to-end time less the model's
time, first chunk less the model's first token, the gap between chunks as the client reads
them, and chunks lost, reordered or duplicated on the way.

Needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL; use a database and Redis db of the bench's
own: the fleet takes that database's workers offline) and the bench venv with LiteLLM:
`make bench-litellm` sets both up and runs this with the defaults.
Run: .venv/bin/python tests/bench/bench_vs_litellm.py [--servers daphne,uvicorn] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import scenarios  # noqa: E402
from tests.bench.loadgen import Target  # noqa: E402

BENCH_VENV = ROOT / ".bench-venv"
# uvicorn (with uvloop and httptools) for the node, installed --no-deps --target: the node runs
# on .venv's packages; this folder joins its path only for --servers uvicorn.
NODE_EXTRAS = BENCH_VENV / "node-extras"
LOGS = ROOT / "test-output" / "bench-vs-litellm"
MOCK_MODEL = "mock-model"
DIGEST = "sha256:" + hashlib.sha256(b"peer cycles bench paced mock").hexdigest()
LITELLM_KEY = "sk-bench-master-key"


class Stack:
    """The processes of one run, each logging to test-output/bench/<name>.log."""

    def __init__(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> Path:
        log = LOGS / f"{name}.log"
        self.children[name] = subprocess.Popen(argv, cwd=ROOT, env=env or os.environ.copy(),
                                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
        return log

    def stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.children)):
            self.stop(name)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far per kind of process (node, agents, litellm, mock), children
        included, from /proc: on a shared machine this is what a path costs, whatever the noise."""
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        totals: dict[str, float] = {}
        for name, child in self.children.items():
            tree, todo = set(), [child.pid]
            while todo:
                pid = todo.pop()
                tree.add(pid)
                todo.extend(p for p, parent in parents.items() if parent == pid and p not in tree)
            kind = name.split("-")[0]
            totals[kind] = totals.get(kind, 0.0) + sum(times.get(pid, 0.0) for pid in tree)
        return totals

    def check(self, name: str) -> None:
        if self.children[name].poll() is not None:
            raise SystemExit(f"{name} exited; see {LOGS / (name + '.log')}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what: str, ready, timeout: float, stack: Stack, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check(name)
        if ready():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {timeout:.0f}s; see {LOGS / (name + '.log')}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the pieces -------------------------------------------------------------------------------

def database_prepare() -> None:
    """Create the bench database if it is missing, migrate it, and vacuum it: every job rewrites
    its worker's row and the user's accounts, and where autovacuum is off (this project's CI
    machines run PostgreSQL with it off) the dead rows pile up from run to run. At 128,000 jobs
    they made the node 16% slower at 64 clients (docs/benchmarks.md); each run starts clean."""
    import dj_database_url
    import psycopg

    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    admin = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                 password=db["PASSWORD"] or None, dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    with psycopg.connect(**dict(admin, dbname=db["NAME"])) as conn:
        conn.execute("VACUUM (ANALYZE)")


def start_mock(stack: Stack, tps: float) -> int:
    log = stack.spawn("mock", [sys.executable, str(ROOT / "tests/bench/paced_openai.py"), "--tps", str(tps)])
    found: list[str] = []

    def ready() -> bool:
        found[:] = re.findall(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        return bool(found)

    wait_until("the mock", ready, 20, stack, "mock")
    return int(found[0])


def node_env(what_if: str | None) -> dict:
    # As the Procfile's web process: DEBUG off (it keeps every SQL query in memory) and a pool of
    # 20 PostgreSQL connections. The queue limit is above the 200 concurrent jobs, so a burst
    # waits for a worker instead of being refused with 429.
    env = dict(os.environ, DEBUG="0", PEER_LOG_LEVEL="WARNING", PEER_QUEUE_LIMIT="1000",
               SECRET_KEY="bench-only-" + "x" * 40, PYTHONUNBUFFERED="1")
    env.setdefault("PEER_DB_POOL_SIZE", "20")
    if what_if:
        env.update(DJANGO_SETTINGS_MODULE="tests.bench.settings_whatif", PEER_BENCH_WHATIF=what_if)
    return env


def start_node(stack: Stack, server: str, what_if: str | None) -> int:
    port = free_port()
    env = node_env(what_if)
    if server == "daphne":
        # The Procfile's endpoint: a listen backlog of 1,024 (Twisted's default of 50 drops
        # connections when 200 clients connect at once).
        argv = [sys.executable, "-m", "daphne", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
                "peercycles.asgi:application"]
    else:
        env["PYTHONPATH"] = str(NODE_EXTRAS)
        argv = [sys.executable, "-m", "uvicorn", "peercycles.asgi:application", "--host", "127.0.0.1",
                "--port", str(port), "--backlog", "1024", "--lifespan", "off", "--no-access-log",
                "--log-level", "warning"]
    stack.spawn(f"node-{server}", argv, env)
    wait_until(f"the node ({server})", lambda: port_open(port), 60, stack, f"node-{server}")
    return port


def start_agents(stack: Stack, node_port: int, mock_port: int, tokens: list[str], pools: int) -> None:
    from tests.bench.fleet import workers_idle

    for index in range(pools):
        mine = tokens[index::pools]
        path = LOGS / f"tokens-{index}.txt"
        path.write_text("\n".join(mine) + "\n")
        path.chmod(0o600)
        stack.spawn(f"agents-{index}", [sys.executable, str(ROOT / "tests/bench/agent_pool.py"),
                                        "--server", f"http://127.0.0.1:{node_port}",
                                        "--backend-url", f"http://127.0.0.1:{mock_port}",
                                        "--model", MOCK_MODEL, "--digest", DIGEST,
                                        "--tokens-file", str(path), "--name", f"bench-pool{index}"])
    wait_until(f"{len(tokens)} agents", lambda: workers_idle() >= len(tokens), 120, stack, "agents-0")


def start_litellm(stack: Stack, mock_port: int) -> int:
    litellm = BENCH_VENV / "bin" / "litellm"
    if not litellm.exists():
        raise SystemExit(f"{litellm} is missing: `make bench-litellm` installs it")
    port = free_port()
    config = LOGS / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MOCK_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MOCK_MODEL}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: sk-mock\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n")
    # No database: LiteLLM's own keys need Prisma; the master key alone authenticates. No
    # network: the cost map is read from the package, not fetched.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", PYTHONUNBUFFERED="1")
    stack.spawn("litellm", [str(litellm), "--config", str(config), "--host", "127.0.0.1",
                            "--port", str(port), "--num_workers", "1"], env)
    wait_until("LiteLLM", lambda: port_open(port), 120, stack, "litellm")
    return port


def machine() -> str:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}; commit {commit or '?'}"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tps", type=float, default=20.0, help="the mock's tokens per second per request")
    parser.add_argument("--tokens", type=int, default=4, help="tokens of a non-streamed answer")
    parser.add_argument("--stream-tokens", type=int, default=40, help="tokens of a stream")
    parser.add_argument("--concurrency", default="1,16,64", help="non-streamed concurrency levels")
    parser.add_argument("--streams", default="64,200", help="concurrent stream levels")
    parser.add_argument("--rps-concurrency", default="16,64", help="closed-loop levels for requests/s")
    parser.add_argument("--rps-seconds", type=float, default=10.0)
    parser.add_argument("--min-requests", type=int, default=50, help="requests at concurrency 1")
    parser.add_argument("--agents", type=int, default=0, help="agent links (default: the largest level)")
    parser.add_argument("--pools", type=int, default=4, help="agent processes the links are spread over")
    parser.add_argument("--servers", default="daphne", help="ASGI servers for the node: daphne,uvicorn")
    parser.add_argument("--paths", default="direct,peer,litellm")
    parser.add_argument("--what-if", choices=["pool", "pubsub"],
                        help="run the node with tests/bench/settings_whatif.py: a larger Redis pool, "
                             "or that and channels_redis's pub/sub layer")
    parser.add_argument("--quick", action="store_true", help="small levels, for checking the harness")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.streams, args.rps_concurrency = "1,4", "8", "8"
        args.min_requests, args.rps_seconds, args.stream_tokens = 10, 3.0, 10
    for name in ("concurrency", "streams", "rps_concurrency"):
        setattr(args, name, [int(v) for v in getattr(args, name).split(",") if v])
    args.servers = [s for s in args.servers.split(",") if s]
    args.paths = [p for p in args.paths.split(",") if p]
    args.agents = args.agents or max(args.concurrency + args.streams + args.rps_concurrency)
    return args


def main() -> None:
    args = parse_args()
    # A plain SIGTERM would skip the `finally` that stops the node, the agents and LiteLLM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            raise SystemExit(f"{name} is not set: the node is measured on PostgreSQL and Redis")
    os.environ.update(DJANGO_SETTINGS_MODULE="peercycles.settings", DEBUG="0")
    database_prepare()
    import django

    django.setup()
    from tests.bench.fleet import PUBLIC_MODEL, fleet_seed

    fleet = fleet_seed(agents=args.agents, served_model=MOCK_MODEL, digest=DIGEST, credits=10_000_000)
    stack = Stack()
    print(machine(), flush=True)
    try:
        mock_port = start_mock(stack, args.tps)
        targets = [Target("direct", mock_port, MOCK_MODEL)] if "direct" in args.paths else []
        if "litellm" in args.paths:
            targets.append(Target("litellm", start_litellm(stack, mock_port), MOCK_MODEL, api_key=LITELLM_KEY))
        results = {}
        for server in args.servers if "peer" in args.paths else []:
            node_port = start_node(stack, server, args.what_if)
            start_agents(stack, node_port, mock_port, fleet.worker_tokens, args.pools)
            name = f"peer-{server}" + (f"-{args.what_if}" if args.what_if else "")
            peer = Target(name, node_port, PUBLIC_MODEL, api_key=fleet.api_key, extra={"peer_tier": "open"})
            # The first server is measured with every path; later ones only on their own.
            run_targets = targets + [peer] if not results else [targets[0], peer]
            print(f"{args.agents} agent links in {args.pools} processes; node on {server}; "
                  f"paths: {', '.join(t.name for t in run_targets)}", flush=True)
            scenarios.warm_up(run_targets, args.agents)
            figures = scenarios.measure(stack, run_targets, args, args.agents)
            results[server] = scenarios.report(figures, run_targets, args)
            for index in range(args.pools):
                stack.stop(f"agents-{index}")
            stack.stop(f"node-{server}")
        if not results:
            scenarios.warm_up(targets, 0)
            results["none"] = scenarios.report(scenarios.measure(stack, targets, args, 0), targets, args)
        print(f"\nafter the run: {machine()}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (LOGS / f"results-{stamp}.json").write_text(json.dumps(
            {"args": vars(args), "machine": machine(), "results": results}, indent=1, default=str))
        print(f"\nfigures saved in {LOGS / f'results-{stamp}.json'}")
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
