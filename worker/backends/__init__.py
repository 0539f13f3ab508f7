"""Inference backends: what turns a prompt into a stream of text pieces.

The agent talks to a backend only through `Backend`, so it can be driven by a stand-in in
tests and by other engines later. Heavy engine imports (llama_cpp) happen in `load_backend`,
never at import time, so `--help` and `--print-model` stay fast.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Union

BACKEND_NAMES = ("builtin",)


@dataclass(frozen=True)
class Finish:
    """The last item of a generation: why it ended and how many tokens were sampled."""

    reason: str  # one of worker.protocol.FINISH_REASONS
    completion_tokens: int


Piece = Union[str, Finish]


class BackendError(Exception):
    """A job the backend refuses or cannot run; `code` goes into the job.error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Backend(Protocol):
    name: str
    model_id: str
    digest: str
    context_length: int

    def generate(self, prompt: str, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        """Yield text pieces, then exactly one Finish. Blocking; run it off the event loop."""
        ...


def load_backend(name: str, *, model_path: Path | None, threads: int) -> Backend:
    if name == "builtin":
        from worker.backends.builtin import BuiltinBackend

        return BuiltinBackend.load(model_path, n_threads=threads)
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
