"""An adversarial agent for demos and for the verified tier's tests: on a fraction of its jobs it
substitutes a cheaper output for the model's, and commits to and signs that output as an honest
agent would (so only re-executing the job can tell). Never for a real network: it is off unless
`--cheat MODE` is given, and the agent logs every job it cheats on.

Modes:
  truncate  run the model but stop after the first third of max_tokens, reporting "stop"
  cached    do not run the model: replay the answer of the first job this agent served
            (a fixed sentence until there is one)
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from typing import Any

from worker.backends import Finish, Piece, Request

log = logging.getLogger(__name__)
CHEAT_MODES = ("truncate", "cached")
FALLBACK_ANSWER = ("I", " am", " sure", " the", " answer", " is", " forty", "-two", ".")


class CheatingBackend:
    """Wraps a Backend: the same name and models, a cheaper generate() on `rate` of the jobs."""

    def __init__(self, backend: Any, *, mode: str, rate: float, rng: random.Random | None = None) -> None:
        if mode not in CHEAT_MODES:
            raise ValueError(f"cheat mode must be one of {', '.join(CHEAT_MODES)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("cheat rate must be between 0 and 1")
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
