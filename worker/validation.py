"""Re-executing another worker's job as a validator (`validate.assign` -> `validate.done`).

The validator runs the job exactly as given (same model digest, prompt, seed and sampling
parameters) and, when its run differs from the claimed output, scores that output under its
model by teacher forcing: the node compares the two (docs/verification.md). Only backends that
can score (the builtin llama.cpp one) can validate; the others refuse with `unsupported`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from worker.backends import BackendError, Finish, Request


def can_validate(backend: Any, kind: str = "chat") -> bool:
    """Whether this agent offers to re-execute others' jobs of `kind` with `backend`. A chat
    validator must score answers; an embedding validator only embeds the job's texts again
    (embed.assign, as for any job: the node compares the vectors). An agent in --cheat mode is
    never a validator: it would vouch with the same cheaper output."""
    if getattr(backend, "adversarial", False):
        return False
    if kind == "embedding":
        return callable(getattr(backend, "embed", None))
    return callable(getattr(backend, "score", None))


async def validation_result(backend: Any, model_id: str, digest: str, request: Request, params: dict[str, Any],
                            claimed: str, cancel: threading.Event) -> dict[str, Any]:
    """The validate.done fields (all but type and job_id) for one re-execution. Blocking model
    work runs in threads. Raises BackendError."""
    def run() -> tuple[str, str]:
        pieces, reason = [], "length"
        for piece in backend.generate(model_id, request, params, cancel):
            if isinstance(piece, Finish):
                reason = piece.reason
            else:
                pieces.append(piece)
        return "".join(pieces), reason

    output, reason = await asyncio.to_thread(run)
    if cancel.is_set():
        raise BackendError("cancelled", "the validation was cancelled")
    if output == claimed:
        # The same text is a match whatever the scores (apps/verification/compare.py), and
        # scoring costs about as much again as the run: an honest answer is checked at the cost
        # of one rerun (docs/verification.md, "Measured").
        return {"model_digest": digest, "output": output, "finish_reason": reason, "token_logprobs": [],
                "end_logprob": None}
    temperature = float(params.get("temperature") or 0.0)
    scored = await asyncio.to_thread(backend.score, model_id, request, claimed, temperature)
    done = {"model_digest": digest, "output": output, "finish_reason": reason,
            "token_logprobs": scored.token_logprobs, "end_logprob": scored.end_logprob}
    if scored.sampled_fit is not None:
        fit = scored.sampled_fit
        done["sampled_fit"] = {"tokens": fit.tokens, "excess": fit.excess, "variance": fit.variance}
    return done
