"""The commitment over one job: what ran, on what, with which seed, and what came out.

hash = sha256(canonical JSON of {model_id, model_digest, seed, params, prompt_sha256,
output_sha256}). The node computes it from the prompt it sent and the text it relayed; the
verified-tier issue adds the worker's Ed25519 signature over the same bytes, so this module is
shared by both sides and by anyone re-checking a proof offline.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "seed", "stop")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def commitment_inputs(*, model_id: str, model_digest: str, seed: int, params: dict[str, Any],
                      prompt: str, output: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "model_digest": model_digest,
        "seed": seed,
        "params": {k: params.get(k) for k in SAMPLING_PARAMS},
        "prompt_sha256": sha256_hex(prompt),
        "output_sha256": sha256_hex(output),
    }


def commitment_hash(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
