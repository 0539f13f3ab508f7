"""What runs inside the enclave: open a sealed chat request, generate, seal the answer back, sign.

Pure logic, no I/O of its own: `__main__.py` feeds it lines from the host and writes what it
returns. It holds the enclave's keys (a `SimulatedEnclave`, which proves nothing about hardware,
or a `worker.enclave.tsm.TsmEnclave` in a confidential VM), the chat backends and the agent's
code measurement.

Everything it hands out is safe for the host to see: envelopes sealed to the client's reply key,
token counts, a finish reason, a signature. Plaintext (the request body, the answer) never goes
into a message, an exception's text or a log line, so an error cannot leak what a sealed request
said; the messages say which rule a request broke, never the value that broke it.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from client import binding, proof, sealing
from client.answer_stream import AnswerSealer
from client.attestation.simulated import SimulatedEnclave
from worker.backends import BackendError, Finish, ModelInfo, Request
from worker.measurement import code_measurement as agent_code_measurement
from worker.prompt import job_prompt

log = logging.getLogger(__name__)

KIND = "simulated"
ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4  # as OpenAI's API
INVALID = "sealed_request_invalid"


class EnclaveError(Exception):
    """A request the enclave refuses or cannot run; `code` travels to the node, as a job.error's.
    `message` never contains plaintext."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SealedChat:
    """The parts of a sealed OpenAI chat request body the enclave generates with."""

    messages: list[dict]
    stop: list[str]
    temperature: float | None
    top_p: float | None
    seed: int | None
    max_tokens: int | None


@dataclass(frozen=True)
class _Served:
    backend: Any
    model: ModelInfo


class EnclaveRuntime:
    def __init__(self, backends: list[Any], *, enclave: Any = None,
                 code_measurement: str | None = None) -> None:
        self.enclave = enclave or SimulatedEnclave()
        self.code_measurement = code_measurement or agent_code_measurement()
        self._served: dict[str, _Served] = {}
        for backend in backends:
            for model in backend.models:
                if model.kind != "chat":
                    continue  # embeddings have no confidential form (docs/confidential.md §2)
                if not model.digest.startswith("sha256:"):
                    # Evidence binds a weights digest; "unverified:<id>" names no weights.
                    log.warning("%s is not served confidentially: its digest is unverified",
                                model.id)
                    continue
                self._served.setdefault(model.digest, _Served(backend, model))

    @property
    def models(self) -> list[ModelInfo]:
        return [served.model for served in self._served.values()]

    def ready_message(self) -> dict[str, Any]:
        """The first line the enclave process writes: its keys, measurement and models."""
        return {"op": "ready", "kind": getattr(self.enclave, "kind", KIND), "enclave_key": self.enclave.public_key,
                "signing_key": self.enclave.signing_key,
                "code_measurement": self.code_measurement,
                "models": [{**model.announce(), "confidential": True} for model in self.models]}

    def evidence(self, nonce_b64: str, model_digest: str) -> dict[str, Any]:
        """Evidence (simulated or the hardware's) binding this enclave's keys, `model_digest`, the
        code measurement and the verifier's nonce (32 bytes, canonical base64)."""
        try:
            nonce = sealing.b64_canonical(nonce_b64, "nonce")
        except sealing.SealingFormatError as error:
            raise EnclaveError("invalid_nonce", str(error)) from None
        if len(nonce) != binding.NONCE_SIZE:
            raise EnclaveError("invalid_nonce", f"nonce must be {binding.NONCE_SIZE} bytes, "
                                                f"got {len(nonce)}")
        self._served_model(model_digest)
        return self.enclave.evidence(model_digest=model_digest,
                                     code_measurement=self.code_measurement, nonce=nonce)

    def run(self, job_id: str, model_digest: str, sealed: dict[str, Any], params: dict[str, Any],
            cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """Open and check the request now (raising EnclaveError before any output), and return
        the job's messages: "chunk" per piece of text, sealed to the reply key, then "done".

        `params` are the job's clear params; its max_tokens is what the node holds credits for,
        so the enclave never generates more, whatever the sealed body asks.
        """
        served = self._served_model(model_digest)
        reply_key, request_body = self._open(sealed)
        chat = parse_chat_body(request_body)
        gen_params = generation_params(chat, params)
        # The answer key travels in the suite the client sealed with: a browser's HPKE library
        # may offer AES-GCM only.
        suite = sealed["request"]["hpke"]
        return self._generate(job_id, served, chat, gen_params, reply_key, request_body, cancel, suite)

    def _served_model(self, model_digest: object) -> _Served:
        served = self._served.get(model_digest) if isinstance(model_digest, str) else None
        if served is None:
            raise EnclaveError("model_unavailable",
                               f"this enclave does not serve the model {model_digest!r}")
        return served

    def _open(self, sealed: object) -> tuple[str, bytes]:
        if not isinstance(sealed, dict):
            raise EnclaveError(INVALID, "sealed must be an object with request and reply_key")
        reply_key = sealed.get("reply_key")
        try:
            # A trial seal catches a key that parses but cannot be sealed to (a low-order point)
            # here, before generating, rather than at the first chunk.
            sealing.seal(reply_key, b"", info=sealing.RESPONSE_INFO)
        except (sealing.SealingError, TypeError):
            raise EnclaveError(INVALID, "reply_key is not a usable base64 X25519 public key") from None
        try:
            body = sealing.open_sealed(self.enclave.private_key, sealed.get("request"),
                                       info=sealing.REQUEST_INFO)
        except sealing.SealingAuthenticationError:
            raise EnclaveError(INVALID, "the request does not open with this enclave's key "
                                        "(another key, another info, or altered)") from None
        except sealing.SealingError:
            raise EnclaveError(INVALID, "the request is not an HPKE envelope this enclave "
                                        "reads") from None
        return reply_key, body

    def _generate(self, job_id: str, served: _Served, chat: SealedChat, gen_params: dict[str, Any],
                  reply_key: str, request_body: bytes, cancel: threading.Event,
                  suite: str = sealing.DEFAULT_SUITE) -> Iterator[dict[str, Any]]:
        log.info("job %s: confidential, on %s (max_tokens=%s)", job_id, served.model.id,
                 gen_params["max_tokens"])
        pieces: list[str] = []
        finish: Finish | None = None
        generation: Any = None
        sealer = AnswerSealer(reply_key, suite=suite)
        try:
            generation = served.backend.generate(served.model.id, Request(messages=chat.messages),
                                                 gen_params, cancel)
            for item in generation:
                if isinstance(item, Finish):
                    finish = item
                    continue  # run the generator to its end: the builtin one holds a lock till then
                if not item or finish is not None:
                    continue
                sealed = sealer.seal_piece(item.encode("utf-8"))
                yield {"op": "chunk", "job_id": job_id, "seq": len(pieces), "sealed": sealed}
                pieces.append(item)
        except BackendError as error:
            raise EnclaveError(error.code, error.message) from None
        except EnclaveError:
            raise
        except Exception as error:
            # The exception's text could quote the prompt; only its type leaves the enclave.
            log.error("job %s: backend failure (%s)", job_id, type(error).__name__)
            raise EnclaveError("backend_error", f"the backend failed ({type(error).__name__})") from None
        finally:
            getattr(generation, "close", lambda: None)()  # also when our consumer stops early
        if finish is None:
            raise EnclaveError("backend_error", "the backend ended without finishing")
        log.info("job %s: %s, %d tokens", job_id, finish.reason, finish.completion_tokens)
        yield {"op": "done", "job_id": job_id, "finish_reason": finish.reason,
               "usage": {"prompt_tokens": prompt_tokens(served.backend, chat.messages),
                         "completion_tokens": finish.completion_tokens},
               "enclave_signature": proof.answer_sign(self.enclave.signing_private_key,
                                                      request_body, "".join(pieces))}


def prompt_tokens(backend: Any, messages: list[dict]) -> int:
    """The prompt's size in tokens: the backend's own count when it has one, else an estimate
    (4 bytes a token). The node cannot count a prompt it never saw, so this is what it bills."""
    text = job_prompt(messages=messages, prompt=None)[0]
    count_tokens = getattr(backend, "count_tokens", None)
    if callable(count_tokens):
        return int(count_tokens(text))
    return len(text.encode("utf-8")) // 4 + 1


def generation_params(chat: SealedChat, params: dict[str, Any]) -> dict[str, Any]:
    """The backend's params: sampling from the sealed body, max_tokens at most the clear one."""
    if not isinstance(params, dict):
        raise EnclaveError("invalid_params", "params must be an object")
    clear_max = params.get("max_tokens")
    if clear_max is not None and not _positive_int(clear_max):
        raise EnclaveError("invalid_params", "max_tokens must be a positive integer")
    clear_seed = params.get("seed")
    if clear_seed is not None and not _int(clear_seed, minimum=0):
        raise EnclaveError("invalid_params", "seed must be a non-negative integer")
    limits = [limit for limit in (chat.max_tokens, clear_max) if limit is not None]
    return {"max_tokens": min(limits) if limits else None,
            "temperature": 1.0 if chat.temperature is None else chat.temperature,
            "top_p": 1.0 if chat.top_p is None else chat.top_p,
            "seed": clear_seed if chat.seed is None else chat.seed,
            "stop": list(chat.stop)}


def parse_chat_body(request_body: bytes) -> SealedChat:
    """Check the opened plaintext as an OpenAI chat request body; EnclaveError(INVALID) names
    the rule broken, never the value."""
    try:
        body = json.loads(request_body)
    except ValueError:  # UnicodeDecodeError included
        raise EnclaveError(INVALID, "the request body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise EnclaveError(INVALID, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EnclaveError(INVALID, "messages must be a non-empty list")
    checked = [_message(index, message) for index, message in enumerate(messages)]
    max_tokens = [body[name] for name in ("max_tokens", "max_completion_tokens")
                  if body.get(name) is not None]
    if not all(_positive_int(value) for value in max_tokens):
        raise EnclaveError(INVALID, "max_tokens and max_completion_tokens must be positive integers")
    seed = body.get("seed")
    if seed is not None and not _int(seed, minimum=0):
        raise EnclaveError(INVALID, "seed must be a non-negative integer")
    return SealedChat(messages=checked, stop=_stops(body.get("stop")),
                      temperature=_number(body, "temperature", 0.0, 2.0),
                      top_p=_number(body, "top_p", 0.0, 1.0), seed=seed,
                      max_tokens=min(max_tokens) if max_tokens else None)


def _message(index: int, message: object) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise EnclaveError(INVALID, f"{where} must be an object")
    if message.get("role") not in ROLES:
        raise EnclaveError(INVALID, f"{where}.role must be one of {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise EnclaveError(INVALID, f"{where}.content parts must be text parts")
    elif not isinstance(content, str):
        raise EnclaveError(INVALID, f"{where}.content must be a string or a list of text parts")
    return {"role": message["role"], "content": content}


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(stop, str) for stop in stops)):
        raise EnclaveError(INVALID, f"stop must be a string or a list of at most {MAX_STOPS} strings")
    return [stop for stop in stops if stop]


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise EnclaveError(INVALID, f"{name} must be a number in [{low:g}, {high:g}]")
    return float(value)


def _int(value: object, *, minimum: int) -> bool:
    # bool is an int in Python; `true` in JSON is not a number.
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _positive_int(value: object) -> bool:
    return _int(value, minimum=1)
