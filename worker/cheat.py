"""An adversarial agent for demos and for the verified tier's tests: on a fraction of its jobs it
substitutes a cheaper output for the model's, and commits to and signs that output as an honest
agent would (so only re-executing the job can tell). Never for a real network: it is off unless
`--cheat MODE` is given, and the agent logs every job it cheats on.

Modes, for chat jobs:
  truncate  run the model but stop after the first third of max_tokens, reporting "stop"
  cached    do not run the model: replay the answer of the first job this agent served
            (a fixed sentence until there is one)
and for embedding jobs (CheatingEmbedder), per embed.assign chunk:
  truncate  embed only the first third of each input's words (fewer tokens to run)
  cached    do not run the model: answer every input with the first vector this agent computed
            (a fixed unit vector until there is one)
An agent in either mode never offers to validate others (worker/validation.py).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from typing import Any

from worker.backends import Embeddings, Finish, Piece, Request

log = logging.getLogger(__name__)
CHEAT_MODES = ("truncate", "cached")
FALLBACK_ANSWER = ("I", " am", " sure", " the", " answer", " is", " forty", "-two", ".")


def _check(mode: str, rate: float) -> None:
    if mode not in CHEAT_MODES:
        raise ValueError(f"cheat mode must be one of {', '.join(CHEAT_MODES)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError("cheat rate must be between 0 and 1")


class CheatingBackend:
    """Wraps a Backend: the same name and models, a cheaper generate() on `rate` of the jobs."""

    adversarial = True

    def __init__(self, backend: Any, *, mode: str, rate: float, rng: random.Random | None = None) -> None:
        _check(mode, rate)
        self.backend, self.mode, self.rate = backend, mode, rate
        self.name, self.models = backend.name, backend.models
        self._rng = rng or random.Random()
        self._cached: tuple[str, ...] | None = None
        self.cheated = 0  # jobs cheated on so far (for tests and the demo's log)

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        if self._rng.random() >= self.rate:
            yield from self._honest(model_id, request, params, cancel)
            return
        self.cheated += 1
        log.warning("cheating (%s) on this job", self.mode)
        if self.mode == "cached":
            answer = self._cached or FALLBACK_ANSWER
            yield from answer[:params.get("max_tokens") or len(answer)]
            yield Finish(reason="stop", completion_tokens=min(len(answer), params.get("max_tokens") or len(answer)))
            return
        limit = max(1, (params.get("max_tokens") or 3) // 3)
        count = 0
        generation = self.backend.generate(model_id, request, params, cancel)
        try:
            for piece in generation:
                if isinstance(piece, Finish):
                    yield Finish(reason=piece.reason, completion_tokens=count)
                    return
                yield piece
                count += 1
                if count >= limit:  # the model stops here: that is the saving
                    yield Finish(reason="stop", completion_tokens=count)
                    return
        finally:
            generation.close()

    def _honest(self, model_id, request, params, cancel) -> Iterator[Piece]:
        pieces = []
        for piece in self.backend.generate(model_id, request, params, cancel):
            if not isinstance(piece, Finish):
                pieces.append(piece)
            yield piece
        if self._cached is None and pieces:
            self._cached = tuple(pieces)


class CheatingEmbedder:
    """Wraps an EmbeddingBackend: the same name and models, a cheaper embed() on `rate` of the
    chunks. The agent signs what it returns as it signs honest vectors."""

    adversarial = True

    def __init__(self, backend: Any, *, mode: str, rate: float, rng: random.Random | None = None,
                 dimensions: int = 384) -> None:
        _check(mode, rate)
        self.backend, self.mode, self.rate, self.dimensions = backend, mode, rate, dimensions
        self.name, self.models = backend.name, backend.models
        self._rng = rng or random.Random()
        self._cached: list[float] | None = None
        self.cheated = 0

    def embed(self, model_id: str, inputs: list[str], cancel: threading.Event) -> Embeddings:
        if self._rng.random() >= self.rate:
            result = self.backend.embed(model_id, inputs, cancel)
            if self._cached is None and result.data:
                self._cached = list(result.data[0])
            return result
        self.cheated += 1
        log.warning("cheating (%s) on this embedding chunk", self.mode)
        if self.mode == "truncate":
            shortened = [" ".join(text.split()[:max(1, len(text.split()) // 3)]) or text for text in inputs]
            return self.backend.embed(model_id, shortened, cancel)
        vector = self._cached or _fixed_unit_vector(self.dimensions)
        return Embeddings([list(vector) for _ in inputs], prompt_tokens=sum(len(text.split()) for text in inputs))


def _fixed_unit_vector(dimensions: int) -> list[float]:
    rng = random.Random(42)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(x * x for x in raw) ** 0.5
    return [float(f"{x / norm:.9g}") for x in raw]
