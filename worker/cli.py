"""Command line: `python -m worker --server URL --token TOKEN` runs the agent.

Every setting comes from, in order of precedence: the command line, the environment, the
config file (`--config FILE`, TOML), the built-in default. `resolve_settings` is where that
order lives. `python -m worker --print-model` prints the builtin model's identity as JSON and
exits (the node's seeding script uses it); `--print-models` prints every model the configured
agent would announce.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from worker import __version__
from worker.backends import BACKEND_NAMES, BackendOptions, BackendUnavailable
from worker.cheat import CHEAT_MODES, CheatingBackend, CheatingEmbedder
from worker.keys import DEFAULT_KEY_FILE

EXIT_REFUSED = 3  # token refused: a configuration problem, not a crash (2 is argparse usage)
EMBEDDINGS_CHOICES = ("auto", "minilm", "none")
ENCLAVE_CHOICES = ("none", "simulated", "tsm")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

DESCRIPTION = """\
Peer Cycles worker agent: connects out to a node over a WebSocket and serves inference jobs
with local models. Only an outbound connection is needed.

backends (--backend; one per agent, plus an embedding model, see --embeddings):
  builtin   Gemma 3 270M (Q4_K_M GGUF) on the CPU via llama.cpp, bundled; reproducible
  ollama    a local Ollama server (--backend-url, default http://127.0.0.1:11434): every model
            of GET /api/tags, announced with Ollama's sha256 digest; Ollama applies each
            model's chat template
  openai    any OpenAI-compatible server: llama.cpp's llama-server, vLLM, SGLang
            (--backend-url, default http://127.0.0.1:8080): every model of GET /v1/models.
            Such a server reports no digest: give it with --model-digest, or the model is
            announced as "unverified:<id>" and gets only jobs for catalogue entries that list
            that exact string
  minilm    (--embeddings) all-MiniLM-L6-v2 int8 ONNX for /v1/embeddings, 384 dimensions

settings come from the command line, else the environment, else the config file, else the
default; a list given at a higher level replaces the lower one's. Environment variables:
  PEER_SERVER           node base URL                      config key: server
  PEER_WORKER_TOKEN     worker token issued by the node    config key: token
  PEER_BACKEND          builtin, ollama or openai          config key: backend
  PEER_BACKEND_URL      the ollama/openai server's URL     config key: backend_url
  PEER_BACKEND_API_KEY  bearer key for the openai server   config key: backend_api_key
  PEER_MODELS           comma-separated models to offer    config key: models (list)
  PEER_MODEL_DIGESTS    comma-separated NAME=sha256:...    config key: model_digests (table)
  PEER_CONTEXT_LENGTH   context window of HTTP backends    config key: context_length
  PEER_EMBEDDINGS       auto, minilm or none               config key: embeddings
  PEER_ENCLAVE          none, simulated or tsm             config key: enclave
  PEER_PCCS_URL         Intel DCAP collateral service      config key: pccs_url
  PEER_THREADS          CPU threads for inference          config key: threads
  PEER_MODEL_PATH       GGUF model file for builtin        config key: model_path
  PEER_MODEL_DIR        where the builtin model is assembled when no model path is given
                        (default ~/.cache/peer-cycles/models)
  PEER_WORKER_KEY_FILE  the Ed25519 key that signs each job's commitment, created on first
                        use (default ~/.config/peer-cycles/worker-key.pem)  config key: key_file
  PEER_CONFIG           the config file, as --config       (config keys also: name, log_level)
"""

EPILOG = """\
config file (TOML), for example:
  server = "https://node.example.org"
  token = "pc_wk_..."
  backend = "openai"
  backend_url = "http://127.0.0.1:8000/v1"
  models = ["Qwen/Qwen2.5-7B-Instruct"]
  [model_digests]
  "Qwen/Qwen2.5-7B-Instruct" = "sha256:<hex of the weights>"

examples:
  python -m worker --server https://node.example.org --token pc_wk_...
  PEER_SERVER=http://127.0.0.1:8000 PEER_WORKER_TOKEN=... python -m worker --threads 4
  python -m worker --backend ollama --model llama3.2:3b --server ... --token ...
  python -m worker --config /etc/peer-cycles/worker.toml
  python -m worker --print-model     # {"id": ..., "digest": "sha256:...", "path": ...}
  python -m worker --backend ollama --print-models

exit status: 0 on --print-model(s) or a clean stop; 3 when the node rejects or revokes the token
or another agent took it over (the agent does not retry then); 2 on bad options or config;
1 on other startup errors (model file missing or unloadable, backend server unreachable or
serving none of the wanted models).
"""


class ConfigError(ValueError):
    """A bad option, environment variable or config file entry: a usage error (exit 2)."""


def default_threads() -> int:
    # A 270M-parameter model stops scaling well past a few cores; leave the rest to the host.
    return max(1, min(os.cpu_count() or 1, 8))


def build_parser() -> argparse.ArgumentParser:
    # No defaults here: resolve_settings applies environment, config file and defaults in order.
    parser = argparse.ArgumentParser(
        prog="python -m worker", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML config file (env PEER_CONFIG); keys as listed above")
    add("--server", metavar="URL", help="node base URL, http(s):// or ws(s)://; the agent "
                                        "connects to <URL>/ws/agent/ (env PEER_SERVER)")
    add("--token", help="worker token issued by the node (env PEER_WORKER_TOKEN)")
    add("--cheat", choices=CHEAT_MODES,
        help="ADVERSARIAL, for demos and tests only: substitute a cheaper output on a fraction of "
             "the chat jobs (truncate: stop at a third of max_tokens; cached: replay an earlier "
             "answer) and embedding chunks (truncate: embed a third of each input's words; cached: "
             "replay one vector) and sign it as honest; the verified tier's re-execution catches it")
    add("--cheat-rate", metavar="P", type=float,
        help="the fraction of chat jobs and embedding chunks --cheat substitutes (0..1, default 1)")
    add("--key-file", metavar="FILE",
        help="the worker's Ed25519 signing key (PEM), created there on first use; it signs "
             "every job's commitment (env PEER_WORKER_KEY_FILE; default "
             "~/.config/peer-cycles/worker-key.pem)")
    add("--backend", choices=BACKEND_NAMES,
        help="inference backend (env PEER_BACKEND; default: builtin = Gemma 3 270M Q4_K_M on "
             "CPU via llama.cpp)")
    add("--backend-url", metavar="URL",
        help="the ollama or openai server (env PEER_BACKEND_URL; default "
             "http://127.0.0.1:11434 for ollama, http://127.0.0.1:8080 for openai; a trailing "
             "/v1 is accepted)")
    add("--backend-api-key", metavar="KEY",
        help="bearer key sent to the openai server (env PEER_BACKEND_API_KEY)")
    add("--model", action="append", dest="models", metavar="NAME",
        help="offer only this model of the backend; repeat for several (env PEER_MODELS, "
             "comma-separated; default: every model the backend serves)")
    add("--model-digest", action="append", dest="model_digests", metavar="[NAME=]DIGEST",
        help="sha256:<hex> of a model's weights, for the openai backend, whose servers report "
             "none; NAME may be left out when exactly one --model is given; repeat for several "
             "(env PEER_MODEL_DIGESTS, comma-separated)")
    add("--context-length", metavar="N",
        help="context window of ollama models, sent to Ollama as num_ctx (default 4096), and "
             "announced for openai models (default: the server's max_model_len, else 4096) "
             "(env PEER_CONTEXT_LENGTH)")
    add("--embeddings", choices=EMBEDDINGS_CHOICES,
        help="also serve an embedding model: minilm (all-MiniLM-L6-v2 int8; exit 1 when its "
             "packages are missing), none, or auto = minilm when its packages are installed "
             "(env PEER_EMBEDDINGS; default auto)")
    add("--enclave", choices=ENCLAVE_CHOICES,
        help="serve the chat model from an enclave process for the confidential tier: it holds "
             "the HPKE key, opens sealed requests, runs the model and seals the answer, and this "
             "process relays ciphertext only. simulated = a SIMULATED enclave for development "
             "(no hardware guarantee; nodes refuse it unless they allow simulated enclaves); "
             "tsm = this machine is an AMD SEV-SNP or Intel TDX guest: evidence comes from the CPU "
             "through configfs-tsm (/sys/kernel/config/tsm/report). The chat model then takes "
             "confidential jobs only (env PEER_ENCLAVE; default none)")
    add("--pccs-url", metavar="URL",
        help="with --enclave tsm on TDX: the PCCS to fetch each quote's DCAP collateral from, sent "
             "with the quote (env PEER_PCCS_URL)")
    add("--model-path", metavar="PATH",
        help="GGUF file to serve with the builtin backend instead of the bundled model; its "
             "digest is computed from its bytes (env PEER_MODEL_PATH)")
    add("--threads", metavar="N",
        help="CPU threads for inference (env PEER_THREADS; default: number of CPUs, at most 8); "
             "output does not depend on it")
    add("--name", help="label shown by the node for this worker (default: the host name)")
    add("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity on stderr (default: INFO)")
    add("--print-model", action="store_true",
        help="print the builtin model's id, digest and path as JSON on stdout and exit "
             "(assembles the bundled model first if needed)")
    add("--print-models", action="store_true",
        help="print the models this agent would announce (the hello's list) as JSON and exit")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


@dataclass
class Settings:
    server: str | None = None
    token: str | None = None
    name: str | None = None
    backend: str = "builtin"
    backend_url: str | None = None
    backend_api_key: str | None = None
    models: tuple[str, ...] = ()
    model_digests: dict[str, str] = field(default_factory=dict)
    context_length: int | None = None
    embeddings: str = "auto"
    model_path: Path | None = None
    threads: int = field(default_factory=default_threads)
    log_level: str = "INFO"
    key_file: Path = DEFAULT_KEY_FILE
    cheat: str | None = None
    cheat_rate: float = 1.0
    enclave: str = "none"
    pccs_url: str | None = None

    def enclave_settings(self) -> dict[str, Any]:
        """What the enclave process needs to load the chat backend (worker/enclave/__main__.py)."""
        return {"backend": self.backend, "backend_url": self.backend_url, "backend_api_key": self.backend_api_key,
                "models": list(self.models), "model_digests": self.model_digests,
                "context_length": self.context_length,
                "model_path": str(self.model_path) if self.model_path else None, "threads": self.threads,
                "enclave": self.enclave, "pccs_url": self.pccs_url}

    def backend_options(self) -> BackendOptions:
        return BackendOptions(url=self.backend_url, api_key=self.backend_api_key,
                              models=self.models, digests=self.model_digests,
                              context_length=self.context_length)


def _text(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def _positive_int(value: str | int) -> int:
    number = int(value) if not isinstance(value, bool) else 0
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def _fraction(value: str | float) -> float:
    number = float(value) if not isinstance(value, bool) else -1.0
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return number


def _name_list(value: str | list) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a list of model names")
    return tuple(i.strip() for i in items if i.strip())


def _digest(value: str) -> str:
    if not _DIGEST.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not sha256:<64 lowercase hex digits>")
    return value.strip()


def _digest_pairs(value: str | list | dict) -> dict[str, str]:
    """NAME=DIGEST items (a comma-separated string, a list) or a {name: digest} table. A lone
    DIGEST is kept under the name "" until the selected model is known."""
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items()]
    else:
        texts = value.split(",") if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("must be NAME=DIGEST items")
        items = [tuple(t.rsplit("=", 1)) if "=" in t else ("", t) for t in texts if t.strip()]
    pairs = {}
    for name, digest in items:
        if not isinstance(digest, str):
            raise ValueError(f"the digest of {name!r} must be a string")
        pairs[name.strip()] = _digest(digest)
    return pairs


# setting -> (its environment variable, the parser of its value from any of the three sources)
_SETTINGS: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "server": ("PEER_SERVER", _text),
    "token": ("PEER_WORKER_TOKEN", _text),
    "name": (None, _text),
    "backend": ("PEER_BACKEND", _choice(BACKEND_NAMES)),
    "backend_url": ("PEER_BACKEND_URL", _text),
    "backend_api_key": ("PEER_BACKEND_API_KEY", _text),
    "models": ("PEER_MODELS", _name_list),
    "model_digests": ("PEER_MODEL_DIGESTS", _digest_pairs),
    "context_length": ("PEER_CONTEXT_LENGTH", _positive_int),
    "embeddings": ("PEER_EMBEDDINGS", _choice(EMBEDDINGS_CHOICES)),
    "model_path": ("PEER_MODEL_PATH", lambda v: Path(_text(v)).expanduser()),
    "threads": ("PEER_THREADS", _positive_int),
    "key_file": ("PEER_WORKER_KEY_FILE", lambda v: Path(_text(v)).expanduser()),
    "cheat": (None, _choice(CHEAT_MODES)),
    "cheat_rate": (None, _fraction),
    "enclave": ("PEER_ENCLAVE", _choice(ENCLAVE_CHOICES)),
    "pccs_url": ("PEER_PCCS_URL", _text),
    "log_level": (None, _choice(("DEBUG", "INFO", "WARNING", "ERROR"))),
}


def read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(config) - set(_SETTINGS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(_SETTINGS)}")
    return config


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Command line, then environment, then config file, then default, for each setting."""
    config_path = args.config or env.get("PEER_CONFIG")
    config = read_config(config_path) if config_path else {}
    settings = Settings()
    for key, (variable, parse) in _SETTINGS.items():
        for source, value in ((f"--{key.replace('_', '-')}", getattr(args, key, None)),
                              (variable, env.get(variable) if variable else None),
                              (f"config key {key!r}", config.get(key))):
            if value is None or value == "":
                continue
            try:
                setattr(settings, key, parse(value))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{source}: {exc}") from None
            break
    _place_lone_digest(settings)
    return settings


def _place_lone_digest(settings: Settings) -> None:
    lone = settings.model_digests.pop("", None)
    if lone is None:
        return
    if len(settings.models) != 1:
        raise ConfigError("a --model-digest without NAME= needs exactly one --model")
    settings.model_digests.setdefault(settings.models[0], lone)


def print_model(model_path: Path | None) -> int:
    from worker.backends.builtin import DEFAULT_CONTEXT_LENGTH
    from worker.backends.modelfile import resolve_model

    model = resolve_model(model_path)
    print(json.dumps({"id": model.id, "digest": model.digest, "path": str(model.path),
                      "backend": "builtin", "context_length": DEFAULT_CONTEXT_LENGTH}))
    return 0


def load_backends(settings: Settings, *, chat: bool = True) -> list[Any]:
    """The chat backend (unless `chat` is false: an enclave process serves it) and, per
    --embeddings, the embedding backend. Blocking (seconds)."""
    from worker.backends import load_backend, load_embedding_backend
    from worker.backends import minilm

    log = logging.getLogger("worker")
    backends = [load_backend(settings.backend, model_path=settings.model_path,
                             threads=settings.threads, options=settings.backend_options())] if chat else []
    if settings.cheat and backends:
        log.warning("ADVERSARIAL MODE: --cheat %s on %.0f%% of chat jobs", settings.cheat, settings.cheat_rate * 100)
        backends[0] = CheatingBackend(backends[0], mode=settings.cheat, rate=settings.cheat_rate)
    if settings.embeddings == "minilm" or (settings.embeddings == "auto" and minilm.available()):
        embedder = load_embedding_backend("minilm", threads=settings.threads)
        if settings.cheat:
            log.warning("ADVERSARIAL MODE: --cheat %s on %.0f%% of embedding chunks", settings.cheat,
                        settings.cheat_rate * 100)
            embedder = CheatingEmbedder(embedder, mode=settings.cheat, rate=settings.cheat_rate,
                                        dimensions=minilm.DIMENSIONS)
        backends.append(embedder)
    elif settings.embeddings == "auto":
        log.info("no embedding model: the minilm packages are not installed")
    return backends


async def _serve(settings: Settings) -> None:
    from worker.agent import Agent, AgentConfig, hardware_info

    enclave = None
    if settings.enclave != "none":
        from worker.enclave.host import EnclaveProcess, EnclaveStartError

        if settings.enclave == "simulated":
            logging.getLogger("worker").warning(
                "SIMULATED ENCLAVE: the chat model runs in a separate process that holds the HPKE key, "
                "but no hardware protects it; nodes refuse it unless they allow simulated enclaves")
        try:
            wire_log = logging.getLogger("worker.wire")
            enclave = await EnclaveProcess.start(settings.enclave_settings(), on_line=lambda line: wire_log.debug(
                "enclave -> agent: %s", line.decode("utf-8", "replace").rstrip()))
        except EnclaveStartError as exc:  # the model did not load there: a startup error (exit 1)
            raise BackendUnavailable(f"the enclave process did not start: {exc}") from None
    try:
        # Loading takes a second; do it off the loop so signals are still handled meanwhile.
        backends = await asyncio.to_thread(load_backends, settings, chat=enclave is None)
        from worker.keys import key_load_or_create

        config = AgentConfig(server=settings.server, token=settings.token, name=settings.name,
                             signing_key=key_load_or_create(settings.key_file))
        agent = Agent(config, backends, hardware_info(settings.threads), enclave=enclave)
        task = asyncio.current_task()
        if task is not None:
            # SIGTERM (systemd, docker stop) ends the agent the same way Ctrl-C does.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await agent.run()
    finally:
        if enclave is not None:
            await enclave.close()


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, os.environ if env is None else env)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("worker")
    if args.print_model:
        return print_model(settings.model_path)
    if not args.print_models:
        if not settings.server or not settings.token:
            parser.error("--server and --token are required (or PEER_SERVER and "
                         "PEER_WORKER_TOKEN, or server and token in the config file)")
        from worker.agent import agent_url

        try:
            agent_url(settings.server)
        except ValueError as exc:
            parser.error(str(exc))

    from worker.agent import FatalError

    try:
        if args.print_models:
            backends = load_backends(settings)
            print(json.dumps([m.announce() for b in backends for m in b.models], indent=2))
            return 0
        asyncio.run(_serve(settings))
    except FatalError as exc:
        log.error("stopping: %s", exc)
        return EXIT_REFUSED
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.info("stopped")
    except (FileNotFoundError, ValueError, BackendUnavailable) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
