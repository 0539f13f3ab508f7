"""Inference backends: what turns a job into a stream of text pieces, or texts into vectors.

The agent talks to a backend only through `Backend` (chat and completion models) and
`EmbeddingBackend` (embedding models), so it can be driven by stand-ins in tests. A backend
serves one or more models, each announced in the agent's hello as a `ModelInfo`; a job names
the model it wants by digest and the agent hands the backend that model's id.

Heavy imports (llama_cpp, onnxruntime) happen in the `load_*` functions, never at import time,
so `--help` and `--print-model` stay fast.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Union

BACKEND_NAMES = ("builtin", "ollama", "openai")
EMBEDDING_BACKEND_NAMES = ("minilm",)


@dataclass(frozen=True)
class ModelInfo:
    """One served model as the hello announces it."""

    id: str  # the backend's own name for it: what a job's `model` says and the server is sent
    digest: str  # "sha256:<hex>" of the weights, or "unverified:<id>" (see backends/openai_compat)
    backend: str
    context_length: int | None
    kind: str = "chat"  # worker.protocol.MODEL_KINDS

    def announce(self) -> dict[str, Any]:
        return {"id": self.id, "digest": self.digest, "backend": self.backend,
                "context_length": self.context_length, "kind": self.kind}


@dataclass(frozen=True)
class Request:
    """What a job asks for: chat `messages` (OpenAI format; the backend applies the model's chat
    format or hands them to a server that does) or a raw `prompt`, run as given."""

    messages: list[dict] | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Finish:
    """The last item of a generation: why it ended and how many tokens were sampled."""

    reason: str  # one of worker.protocol.FINISH_REASONS
    completion_tokens: int


Piece = Union[str, Finish]


@dataclass(frozen=True)
class Scored:
    """A claimed output under a model (teacher forcing): the log-probability of each of its
    tokens given everything before it, and of the generation ending right after it."""

    token_logprobs: list[float]
    end_logprob: float | None
    # For a sampled job (temperature above 0): how the claimed tokens fit what the model samples
    # at that temperature (worker/validation.py, docs/verification.md "Sampled answers").
    sampled_fit: "SampledFit | None" = None


@dataclass(frozen=True)
class SampledFit:
    """Over the claimed tokens, under the model's distribution p at the job's temperature: the
    sum of (log p(token) - E[log p]) and the sum of Var[log p], position by position. For tokens
    drawn from p (or from its top_p nucleus, which only raises log p) the first sum is about 0 or
    above, with that variance; a text the model would not have sampled falls far below."""

    tokens: int
    excess: float
    variance: float


@dataclass(frozen=True)
class Embeddings:
    data: list[list[float]]  # one unit vector per input, in order
    prompt_tokens: int


class BackendError(Exception):
    """A job the backend refuses or cannot run; `code` goes into the job.error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BackendUnavailable(Exception):
    """The backend cannot start: its server is unreachable or serves nothing we may offer."""


class Backend(Protocol):
    name: str
    models: list[ModelInfo]

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        """Yield text pieces, then exactly one Finish. Blocking; run it off the event loop.
        params: max_tokens, temperature, top_p, seed, stop (validated by the backend)."""
        ...


class EmbeddingBackend(Protocol):
    name: str
    models: list[ModelInfo]  # kind "embedding"

    def embed(self, model_id: str, inputs: list[str], cancel: threading.Event) -> Embeddings:
        """One vector per input. Blocking; raises BackendError("cancelled") once `cancel` is
        set between batches."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """What the command line, environment and config file say about the backend (see cli.py)."""

    url: str | None = None
    api_key: str | None = None
    models: tuple[str, ...] = ()  # offer only these served models; empty: all
    digests: dict[str, str] | None = None  # model id -> digest, for servers that report none
    context_length: int | None = None


def load_backend(name: str, *, model_path: Path | None = None, threads: int = 1,
                 options: BackendOptions | None = None) -> Backend:
    options = options or BackendOptions()
    if name == "builtin":
        from worker.backends.builtin import BuiltinBackend

        backend: Any = BuiltinBackend.load(model_path, n_threads=threads)
    elif name == "ollama":
        from worker.backends.ollama import OllamaBackend

        backend = OllamaBackend.connect(options)
    elif name == "openai":
        from worker.backends.openai_compat import OpenAIBackend

        backend = OpenAIBackend.connect(options)
    else:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
    return select_models(backend, options.models)


def select_models(backend: Any, wanted: tuple[str, ...]) -> Any:
    """Keep only the `wanted` models (all when empty). "llama3.2" also names "llama3.2:latest"."""
    if not wanted:
        return backend
    served = {model.id: model for model in backend.models}
    chosen, missing = [], []
    for name in wanted:
        model = served.get(name) or served.get(f"{name}:latest")
        (chosen if model is not None else missing).append(model or name)
    if missing:
        raise BackendUnavailable(
            f"the {backend.name} backend does not serve {', '.join(missing)}; it serves: "
            f"{', '.join(served) or 'nothing'}")
    backend.models = list(dict.fromkeys(chosen))
    return backend


def load_embedding_backend(name: str, *, threads: int = 1) -> EmbeddingBackend:
    if name == "minilm":
        from worker.backends.minilm import MiniLMBackend

        return MiniLMBackend.load(threads=threads)
    raise ValueError(f"unknown embedding backend {name!r}; known: "
                     f"{', '.join(EMBEDDING_BACKEND_NAMES)}")
