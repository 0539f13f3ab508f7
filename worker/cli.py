"""Command line: `python -m worker --server URL --token TOKEN` runs the agent.

`python -m worker --print-model` prints the builtin model's identity as JSON and exits; the
node's seeding script uses it to register the digest that workers will announce.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from worker import __version__
from worker.backends import BACKEND_NAMES

EXIT_REFUSED = 3  # token refused: a configuration problem, not a crash (2 is argparse usage)

DESCRIPTION = """\
Peer Cycles worker agent: connects out to a node over a WebSocket and serves inference jobs
with a local model. Only an outbound connection is needed.

environment variables (used when the matching option is not given):
  PEER_SERVER         node base URL
  PEER_WORKER_TOKEN   worker token issued by the node
  PEER_THREADS        CPU threads for inference
  PEER_MODEL_PATH     GGUF model file for the builtin backend
  PEER_MODEL_DIR      where the builtin model is assembled when no model path is given
                      (default ~/.cache/peer-cycles/models)
"""

EPILOG = """\
examples:
  python -m worker --server https://node.example.org --token pc_wk_...
  PEER_SERVER=http://127.0.0.1:8000 PEER_WORKER_TOKEN=... python -m worker --threads 4
  python -m worker --print-model     # {"id": ..., "digest": "sha256:...", "path": ...}

exit status: 0 on --print-model or a clean stop; 3 when the node rejects or revokes the token
or another agent took it over (the agent does not retry then); 2 on bad options; 1 on other
startup errors (model file missing or unloadable).
"""


def default_threads() -> int:
    # A 270M-parameter model stops scaling well past a few cores; leave the rest to the host.
    return max(1, min(os.cpu_count() or 1, 8))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m worker", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=env.get("PEER_SERVER"), metavar="URL",
                        help="node base URL, http(s):// or ws(s)://; the agent connects to "
                             "<URL>/ws/agent/ (env PEER_SERVER)")
    parser.add_argument("--token", default=env.get("PEER_WORKER_TOKEN"),
                        help="worker token issued by the node (env PEER_WORKER_TOKEN)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="builtin",
                        help="inference backend (default: builtin = Gemma 3 270M Q4_K_M on "
                             "CPU via llama.cpp)")
    parser.add_argument("--model-path", type=Path, default=env.get("PEER_MODEL_PATH"),
                        metavar="PATH",
                        help="GGUF file to serve instead of the bundled model; its digest is "
                             "computed from its bytes (env PEER_MODEL_PATH)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        # A string default goes through `type`, so a bad env value is
                        # reported like a bad option instead of crashing the parser.
                        default=env.get("PEER_THREADS") or str(default_threads()),
                        help="CPU threads for inference (env PEER_THREADS; default: number "
                             "of CPUs, at most 8); output does not depend on it")
    parser.add_argument("--name", help="label shown by the node for this worker "
                                       "(default: the host name)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity on stderr (default: INFO)")
    parser.add_argument("--print-model", action="store_true",
                        help="print the model's id, digest and path as JSON on stdout and "
                             "exit (assembles the bundled model first if needed)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def print_model(model_path: Path | None) -> int:
    from worker.backends.builtin import DEFAULT_CONTEXT_LENGTH
    from worker.backends.modelfile import resolve_model

    model = resolve_model(model_path)
    print(json.dumps({"id": model.id, "digest": model.digest, "path": str(model.path),
                      "backend": "builtin", "context_length": DEFAULT_CONTEXT_LENGTH}))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from worker.agent import Agent, AgentConfig, hardware_info
    from worker.backends import load_backend

    # Loading takes a second; do it off the loop so signals are still handled meanwhile.
    backend = await asyncio.to_thread(load_backend, args.backend, model_path=args.model_path,
                                      threads=args.threads)
    config = AgentConfig(server=args.server, token=args.token, name=args.name)
    agent = Agent(config, backend, hardware_info(args.threads))
    task = asyncio.current_task()
    if task is not None:
        # SIGTERM (systemd, docker stop) ends the agent the same way Ctrl-C does.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.print_model:
        return print_model(args.model_path)
    if not args.server or not args.token:
        parser.error("--server and --token are required (or PEER_SERVER and PEER_WORKER_TOKEN)")

    from worker.agent import FatalError, agent_url

    try:
        agent_url(args.server)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(args))
    except FatalError as exc:
        logging.getLogger("worker").error("stopping: %s", exc)
        return EXIT_REFUSED
    except (KeyboardInterrupt, asyncio.CancelledError):
        logging.getLogger("worker").info("stopped")
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger("worker").error("cannot start: %s", exc)
        return 1
    return 0
