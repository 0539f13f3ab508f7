"""Many worker agents in one process, for the relay benchmark's 200 concurrent jobs.

An agent serves one job at a time (worker/agent.py), so 200 concurrent streams need 200 agent
links. 200 `python -m worker` processes would cost about 8 GB and minutes of start-up on two
cores, so this runs N of the real `worker.agent.Agent` objects, each with its own WebSocket and
worker token, on one event loop, sharing one `openai` backend (it keeps no per-job state: each
generation opens its own HTTP stream). The wire, the frames and the per-job threads are exactly
those of `python -m worker --backend openai --backend-url URL --model-digest ...`.

Run: python tests/bench/agent_pool.py --server URL --backend-url URL --digest sha256:... \
        --tokens-file FILE   (one worker token per line)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from worker.agent import Agent, AgentConfig, hardware_info  # noqa: E402
from worker.backends import BackendOptions, load_backend  # noqa: E402


async def serve(server: str, backend_url: str, model: str, digest: str, tokens: list[str],
                name: str) -> None:
    backend = load_backend("openai", model_path=None, threads=1,
                           options=BackendOptions(url=backend_url, digests={model: digest}))
    agents = [Agent(AgentConfig(server=server, token=token, name=f"{name}-{index}"), [backend],
                    hardware_info(1)) for index, token in enumerate(tokens)]
    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await asyncio.gather(*(agent.run() for agent in agents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--model", default="mock-model")
    parser.add_argument("--digest", required=True)
    parser.add_argument("--tokens-file", required=True)
    parser.add_argument("--name", default="bench")
    args = parser.parse_args()
    # WARNING, not the agent's INFO: two log lines per job would be a cost of the benchmark.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens = [line.strip() for line in Path(args.tokens_file).read_text().splitlines() if line.strip()]
    try:
        asyncio.run(serve(args.server, args.backend_url, args.model, args.digest, tokens, args.name))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


if __name__ == "__main__":
    main()
