"""How much does the node cost a stream? The same greedy generation measured two ways, in one run:

  direct  the built-in backend called in-process (the peer: no network, no node)
  node    openai SDK -> node (make run's embedded mode) -> agent over WebSocket -> back as SSE

Prints time to first token and tokens per second (median of --runs) for each, and the ratio.
Run: .venv/bin/python tests/bench/bench_relay.py [--runs 5] [--tokens 128] [--threads 2]
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"


def measure_node(runs: int, tokens: int, threads: int) -> list[tuple[float, float]]:
    import httpx
    import openai

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    workdir = tempfile.mkdtemp(prefix="peer-bench-")
    env.update(PEER_SQLITE_PATH=f"{workdir}/node.sqlite3", PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = 18000 + os.getpid() % 1000
    log_path = Path(workdir) / "node.log"
    node = subprocess.Popen([sys.executable, "manage.py", "run_node", "--port", str(port), "--agents", "1",
                             "--agent-threads", str(threads)], cwd=ROOT, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        key = _wait_for(log_path, r"demo API key\s+(pc_\S+)")
        _wait_for(log_path, r"worker\.agent: connected")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                               http_client=httpx.Client(timeout=120))
        results = []
        for _ in range(runs + 1):  # the first run warms caches and is dropped
            started, first, count = time.perf_counter(), None, 0
            for chunk in client.completions.create(model="gemma-3-270m", prompt=PROMPT, temperature=0,
                                                   max_tokens=tokens, stream=True,
                                                   stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].text and first is None:
                    first = time.perf_counter()
                if chunk.usage:
                    count = chunk.usage.completion_tokens
            results.append((first - started, count / (time.perf_counter() - started)))
        return results[1:]
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)


def measure_direct(runs: int, tokens: int, threads: int) -> list[tuple[float, float]]:
    from worker.backends import Finish, load_backend

    backend = load_backend("builtin", model_path=None, threads=threads)
    results = []
    for _ in range(runs + 1):
        started, first, count = time.perf_counter(), None, 0
        for piece in backend.generate(PROMPT, {"max_tokens": tokens, "temperature": 0}, threading.Event()):
            if isinstance(piece, Finish):
                count = piece.completion_tokens
            elif piece and first is None:
                first = time.perf_counter()
        results.append((first - started, count / (time.perf_counter() - started)))
    return results[1:]


def _wait_for(path: Path, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found.group(1) if found.groups() else found.group(0)
        time.sleep(0.2)
    raise SystemExit(f"the node did not start; see {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peercycles.settings")
    # The node goes first and is stopped before the direct runs, so the two never share the CPU.
    rows = {"node": measure_node(args.runs, args.tokens, args.threads),
            "direct": measure_direct(args.runs, args.tokens, args.threads)}
    print(f"greedy, {args.tokens} tokens, {args.threads} threads, median of {args.runs} runs")
    print(f"{'path':8} {'TTFT ms':>9} {'tok/s':>8}")
    medians = {}
    for name, results in rows.items():
        ttft, rate = statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)
        medians[name] = (ttft, rate)
        print(f"{name:8} {ttft * 1000:9.1f} {rate:8.1f}")
    print(f"node/direct: TTFT +{(medians['node'][0] - medians['direct'][0]) * 1000:.1f} ms, "
          f"throughput {medians['node'][1] / medians['direct'][1]:.1%} of direct")


if __name__ == "__main__":
    main()
