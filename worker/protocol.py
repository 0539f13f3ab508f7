"""The agent <-> node wire protocol: JSON objects over one WebSocket, versioned.

Defined once here; the node's consumer imports it. Every frame is a JSON object with a
"type". Agent -> node: hello, heartbeat, job.accepted, job.delta, job.done, job.error,
embed.done, validate.done, attest.evidence, attest.error. Node -> agent: welcome, heartbeat,
job.assign, embed.assign, validate.assign, job.cancel, attest.request, error.

Confidential jobs (docs/confidential.md): job.assign carries `sealed` instead of messages,
job.delta carries `sealed` (an HPKE envelope) instead of `text`, and job.done the enclave's
signature over request and answer.

A frame that is not valid JSON, not an object, of an unknown type, or missing a required
field is a protocol error: the node answers with an `error` frame and closes the link.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 * 1024

# WebSocket close codes (4000-4999 are for applications).
CLOSE_BAD_TOKEN = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_REVOKED = 4003
CLOSE_REPLACED = 4004

FINISH_REASONS = ("stop", "length", "cancelled")
# hello.models[].kind; a model without one is a chat model (agents before embeddings).
MODEL_KINDS = ("chat", "embedding")
# Inputs per embed.assign. The node splits a longer request: 32 vectors of 384 floats fit an
# embed.done frame under MAX_FRAME_BYTES with room to spare, even at 16 characters a number.
MAX_EMBED_INPUTS = 32

# type -> {field: accepted python types}
_AGENT_FRAMES: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,), "token": (str,), "agent_version": (str,), "models": (list,)},
    "heartbeat": {},
    "job.accepted": {"job_id": (str,)},
    "job.delta": {"job_id": (str,), "seq": (int,)},  # and exactly one of text (str), sealed (dict)
    "job.done": {"job_id": (str,), "finish_reason": (str,), "model_digest": (str,)},
    "job.error": {"job_id": (str,), "code": (str,), "message": (str,)},
    "embed.done": {"job_id": (str,), "model_digest": (str,), "data": (list,)},
    "validate.done": {"job_id": (str,), "model_digest": (str,), "output": (str,), "finish_reason": (str,),
                      "token_logprobs": (list,)},
    "attest.evidence": {"request_id": (str,), "evidence": (dict,)},
    "attest.error": {"request_id": (str,), "code": (str,), "message": (str,)},
}

_MODEL_FIELDS: dict[str, tuple[type, ...]] = {"id": (str,), "digest": (str,), "backend": (str,)}
# Fields a frame may carry, as strings when present: the signing key, the signed commitment.
_OPTIONAL_TEXT = {"hello": ("signing_key",), "job.done": ("commitment", "signature", "enclave_signature"),
                  "embed.done": ("commitment", "signature")}


def _is_public_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (ValueError, binascii.Error):
        return False


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the receiver drops the link."""


def _require(obj: dict[str, Any], fields: dict[str, tuple[type, ...]], where: str) -> None:
    for name, types in fields.items():
        value = obj.get(name)
        # bool is an int in Python; a protocol number or counter is never a bool.
        if not isinstance(value, types) or isinstance(value, bool):
            raise ProtocolError(f"{where}: field {name!r} is missing or not {types[0].__name__}")


def decode_agent_frame(text: str | bytes | None) -> dict[str, Any]:
    """Parse and validate one frame sent by an agent. Raises ProtocolError."""
    if text is None:
        raise ProtocolError("binary frames are not part of the protocol")
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame larger than {MAX_FRAME_BYTES} bytes")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = frame.get("type")
    if kind not in _AGENT_FRAMES:
        raise ProtocolError(f"unknown frame type {kind!r}")
    _require(frame, _AGENT_FRAMES[kind], kind)
    if kind == "hello":
        if not frame["models"]:
            raise ProtocolError("hello: an agent must serve at least one model")
        for model in frame["models"]:
            if not isinstance(model, dict):
                raise ProtocolError("hello: each model is an object")
            _require(model, _MODEL_FIELDS, "hello.models[]")
            if model.get("kind", "chat") not in MODEL_KINDS:
                raise ProtocolError(f"hello.models[]: kind must be one of {MODEL_KINDS}")
    if kind == "job.delta" and isinstance(frame.get("text"), str) == isinstance(frame.get("sealed"), dict):
        raise ProtocolError("job.delta: exactly one of text (a string) or sealed (an envelope)")
    if kind == "job.done" and frame["finish_reason"] not in FINISH_REASONS:
        raise ProtocolError(f"job.done: finish_reason must be one of {FINISH_REASONS}")
    for name in _OPTIONAL_TEXT.get(kind, ()):
        if frame.get(name) is not None and not isinstance(frame[name], str):
            raise ProtocolError(f"{kind}: field {name!r} must be a string when given")
    if kind == "hello" and frame.get("signing_key") is not None and not _is_public_key(frame["signing_key"]):
        raise ProtocolError("hello: signing_key must be a raw Ed25519 public key (32 bytes), base64")
    if kind == "embed.done":
        _check_vectors(frame["data"])
    if kind == "validate.done":
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in frame["token_logprobs"]):
            raise ProtocolError("validate.done: token_logprobs is a list of numbers")
        if frame.get("end_logprob") is not None and not isinstance(frame["end_logprob"], (int, float)):
            raise ProtocolError("validate.done: end_logprob is a number or null")
        fit = frame.get("sampled_fit")
        if fit is not None and not (isinstance(fit, dict) and isinstance(fit.get("tokens"), int)
                                    and not isinstance(fit.get("tokens"), bool) and fit["tokens"] >= 0
                                    and all(_finite_number(fit.get(k)) for k in ("excess", "variance"))
                                    and fit["variance"] >= 0):
            raise ProtocolError("validate.done: sampled_fit is {tokens, excess, variance} or null")
    return frame


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_vectors(data: list) -> None:
    """embed.done data: one non-empty list of numbers per input, all of the same length."""
    for vector in data:
        if not isinstance(vector, list) or not vector:
            raise ProtocolError("embed.done: each item of data is a non-empty list of numbers")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vector):
            raise ProtocolError("embed.done: each item of data is a non-empty list of numbers")
    if len({len(vector) for vector in data}) > 1:
        raise ProtocolError("embed.done: all vectors have the same length")


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def hello(*, token: str, agent_version: str, models: list[dict], backends: list[str],
          hardware: dict, attestation: dict | None = None, signing_key: str | None = None) -> dict[str, Any]:
    """signing_key: the agent's Ed25519 public key (raw, base64), which signs each job.done's
    commitment (worker/commitment.py); optional for the open tier, required for verified."""
    return {
        "type": "hello", "protocol": PROTOCOL_VERSION, "token": token,
        "agent_version": agent_version, "backends": backends, "models": models,
        "hardware": hardware, "attestation": attestation, "signing_key": signing_key,
    }


def welcome(*, worker_id: str, heartbeat_interval: float) -> dict[str, Any]:
    return {"type": "welcome", "protocol": PROTOCOL_VERSION, "worker_id": worker_id,
            "heartbeat_interval": heartbeat_interval}


def job_assign(*, job_id: str, model: str, model_digest: str, params: dict[str, Any],
               messages: list[dict] | None = None, prompt: str | None = None,
               sealed: dict | None = None, stream: bool = True) -> dict[str, Any]:
    """A chat job carries `messages` (the agent formats them, see worker/prompt.py); a raw
    completion job carries `prompt`, run as given. params: max_tokens, temperature, top_p,
    seed, stop (list of strings). A confidential job carries neither: `sealed` holds the request
    sealed to the enclave ({"enclave_key", "reply_key", "request"}), which only it opens.
    `stream`: whether the client reads the answer as it is made; when it does not, the agent may
    send the pieces after the first in batches (it is not part of params: not committed to)."""
    frame = {"type": "job.assign", "job_id": job_id, "model": model, "model_digest": model_digest,
             "messages": messages, "prompt": prompt, "params": params, "stream": stream}
    if sealed is not None:
        frame["sealed"] = sealed
    return frame


def attest_request(*, request_id: str, nonce: str, model_digest: str) -> dict[str, Any]:
    """Ask the agent's enclave for evidence over `nonce` (base64, 32 bytes) for one model;
    answered with attest.evidence or attest.error carrying the same request_id."""
    return {"type": "attest.request", "request_id": request_id, "nonce": nonce,
            "model_digest": model_digest}


def validate_assign(*, job_id: str, model: str, model_digest: str, params: dict[str, Any], output: str,
                    messages: list[dict] | None = None, prompt: str | None = None) -> dict[str, Any]:
    """Re-execute a job as a validator: the job as it was assigned, plus the claimed `output`.
    Answered with validate.done (the validator's own output, the claimed output's per-token
    log-probabilities under its model, the log-probability of ending there and, for a sampled
    job, `sampled_fit`: {tokens, excess, variance}, worker/backends.SampledFit) or job.error."""
    return {"type": "validate.assign", "job_id": job_id, "model": model, "model_digest": model_digest,
            "messages": messages, "prompt": prompt, "params": params, "output": output}


def embed_assign(*, job_id: str, model: str, model_digest: str,
                 input: list[str]) -> dict[str, Any]:
    """An embedding job: one vector per string of `input` (at most MAX_EMBED_INPUTS), answered
    with embed.done or job.error; there is no job.accepted and no job.delta."""
    return {"type": "embed.assign", "job_id": job_id, "model": model, "model_digest": model_digest,
            "input": list(input)}


def embed_done(*, job_id: str, model_digest: str, data: list[list[float]], prompt_tokens: int,
               commitment: str | None = None, signature: str | None = None) -> dict[str, Any]:
    """One chunk's vectors. `commitment`: the hash over this chunk (worker/embedding_commitment.py),
    `signature` the agent's Ed25519 signature of it; optional (older agents send neither), and
    required by the node on the verified tier."""
    frame = {"type": "embed.done", "job_id": job_id, "model_digest": model_digest, "data": data,
             "usage": {"prompt_tokens": prompt_tokens}}
    if signature is not None:
        frame.update(commitment=commitment, signature=signature)
    return frame


def job_cancel(*, job_id: str, reason: str) -> dict[str, Any]:
    return {"type": "job.cancel", "job_id": job_id, "reason": reason}


def error(*, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
