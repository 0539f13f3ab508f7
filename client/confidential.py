"""The client's half of the confidential tier (docs/confidential.md): attest, seal, open, check.

A client that wants a prompt to reach nobody but an attested enclave does four things, each a
function here, and trusts the node for none of them:

1. `attest`: challenge every enclave serving a model with a fresh nonce of its own and verify the
   evidence itself (never the node's "verdict"), under the caller's `AttestationPolicy`.
2. `sealed_request`: seal the whole OpenAI request body to one verified enclave, with a reply key
   fresh for this request; `clear_fields` is what may travel next to it unsealed.
3. open each sealed piece of the answer (client.answer_stream), counting the pieces itself.
4. `answer_ok`: check the enclave's signature over the exact sealed bytes and the joined answer,
   with the signing key the verified evidence binds. `SealedAnswer` does 3 and 4 for one answer.

`EnclaveCache` keeps verified enclaves for a while, so that not every request pays for a
challenge. No Django, and no I/O except through the httpx.Client that `attest` is given (its
base_url is the node, its headers carry the API key). The local proxy (client/proxy.py) is the
caller this was written for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from client import binding, proof, sealing
from client.answer_stream import AnswerOpener
from client.attestation.enclave import EvidencePolicy, verify_enclave_evidence
from client.attestation.simulated import REFUSED_PROBLEM as SIMULATED_REFUSED
from client.sealing import REQUEST_INFO

CONFIDENTIAL_TIER = "confidential"
# What routing and billing need (docs/confidential.md §2); everything else is content and sealed.
CLEAR_FIELDS = ("model", "max_tokens", "max_completion_tokens", "stream", "stream_options",
                "temperature", "top_p", "seed")
DEFAULT_TTL_SECONDS = 300.0


class UpstreamError(Exception):
    """The node answered an error (or something unreadable); `body` is OpenAI's error shape."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"upstream answered {status}")
        self.status, self.body = status, body


class SealedAnswerError(ValueError):
    """A piece of the answer that does not open as the next chunk, or is not UTF-8."""


# What the caller accepts: client.attestation.enclave's policy (empty sets allow any digest or
# measurement; simulated enclaves prove nothing about hardware and are refused unless allowed).
AttestationPolicy = EvidencePolicy


@dataclass(frozen=True)
class AttestedEnclave:
    """An enclave whose evidence this client verified itself, over its own nonce. The keys are
    the evidence's (they equal what the node listed, or the enclave was refused)."""

    worker: str
    enclave_key: str  # b64 X25519: what requests are sealed to
    signing_key: str  # b64 Ed25519: what the answers' signatures are checked with
    model_digest: str
    code_measurement: str
    kind: str
    simulated: bool
    nonce: str  # b64, the challenge the evidence answered
    verified_at: float  # time.monotonic() when verified


def attest(http: httpx.Client, model: str, *,
           policy: AttestationPolicy) -> tuple[list[AttestedEnclave], list[str]]:
    """Challenge the enclaves serving `model` with a fresh nonce and verify each one's evidence.

    Returns the enclaves that pass and, per refused enclave, a problem in words. An enclave whose
    evidence cannot be read is refused, not raised. An error from the node (or an answer that is
    not an attestation listing) raises UpstreamError.
    """
    nonce = binding.fresh_nonce()
    nonce_b64 = sealing.b64_text(nonce)
    response = http.get("/v1/attestation", params={"model": model, "nonce": nonce_b64})
    listing = json_object(response)
    if response.status_code >= 400:
        raise UpstreamError(response.status_code, listing)
    enclaves = listing.get("enclaves")
    if not isinstance(enclaves, list):
        raise UpstreamError(502, upstream_invalid("the node's attestation answer has no "
                                                  "'enclaves' list"))
    verified, problems = [], []
    for entry in enclaves:
        outcome = _verify_entry(entry, nonce, policy)
        if isinstance(outcome, AttestedEnclave):
            verified.append(outcome)
        else:
            problems.append(outcome)
    return verified, problems


def refused_only_as_simulated(problems: list[str]) -> bool:
    """Whether every refusal `attest` reported was only "simulated, not allowed": then allowing
    simulated enclaves (development) is the one thing that would have changed the answer."""
    return bool(problems) and all(problem.endswith(f": {SIMULATED_REFUSED}")
                                  for problem in problems)


def _verify_entry(entry: object, nonce: bytes, evidence_policy: EvidencePolicy) -> AttestedEnclave | str:
    """The verified enclave, or "worker W: what is wrong" (the form refused_only_as_simulated
    reads). Any kind client.attestation.enclave verifies: simulated, sev-snp, tdx."""
    if not isinstance(entry, dict):
        return f"worker ?: an enclave listing is a JSON object, got {type(entry).__name__}"
    worker = str(entry.get("worker"))
    evidence = entry.get("evidence")
    verdict = verify_enclave_evidence(evidence, expected_nonce=nonce, policy=evidence_policy,
                                      now=datetime.now(timezone.utc))
    if not verdict.enclave_key:  # unreadable: nothing of it can be compared
        return f"worker {worker}: {'; '.join(verdict.problems)}"
    problems = list(verdict.problems)
    # The node lists the keys next to the evidence; only the evidence's are verified, so a
    # listing that differs is the node pointing at another enclave than the one attested.
    if verdict.enclave_key != entry.get("enclave_key"):
        problems.append("the evidence's enclave key is not the listed enclave_key")
    if verdict.signing_key != entry.get("signing_key"):
        problems.append("the evidence's signing key is not the listed signing_key")
    if not _usable_enclave_key(verdict.enclave_key):
        problems.append("the enclave key is a low-order X25519 point: nothing can be sealed to it")
    if problems:
        return f"worker {worker}: {'; '.join(problems)}"
    return AttestedEnclave(worker=worker, enclave_key=verdict.enclave_key, signing_key=verdict.signing_key,
                           model_digest=verdict.model_digest, code_measurement=verdict.code_measurement,
                           kind=verdict.kind, simulated=verdict.simulated, nonce=sealing.b64_text(nonce),
                           verified_at=time.monotonic())


def _usable_enclave_key(enclave_key: str) -> bool:
    # Checked once here rather than failing every request's seal later (client.sealing.seal
    # refuses such a key); one X25519 exchange per attestation.
    try:
        X25519PrivateKey.generate().exchange(
            X25519PublicKey.from_public_bytes(sealing.public_key_raw(enclave_key)))
    except ValueError:
        return False
    return True


def sealed_request(enclave: AttestedEnclave, body: bytes) -> tuple[dict, X25519PrivateKey]:
    """The `peer_sealed` object for `body` (the exact bytes the answer's signature will cover)
    and the reply key's private half. The reply key is fresh per request: chunks are separate
    HPKE contexts, and only the key keeps one answer's chunks out of another (client.sealing)."""
    reply_private_key, reply_key = sealing.keypair()
    peer_sealed = {"enclave_key": enclave.enclave_key, "reply_key": reply_key,
                   "request": sealing.seal(enclave.enclave_key, body, info=REQUEST_INFO)}
    return peer_sealed, reply_private_key


def clear_fields(body: dict) -> dict:
    """What of an OpenAI request travels unsealed: the routing and billing fields present, and
    the tier."""
    clear = {name: body[name] for name in CLEAR_FIELDS if name in body}
    return {**clear, "peer_tier": CONFIDENTIAL_TIER}


def answer_ok(enclave: AttestedEnclave, body: bytes, answer: str, signature: object) -> bool:
    """Whether `signature` is the attested enclave's over the sealed `body` and `answer`."""
    return proof.answer_signature_ok(signing_key=enclave.signing_key, signature=signature,
                                     request_body=body, response_text=answer)


class SealedAnswer:
    """The answer to one sealed request, opened piece by piece as it arrives (streamed or not):
    counts the sequence numbers itself and checks the signature over all it opened."""

    def __init__(self, enclave: AttestedEnclave, request_body: bytes,
                 reply_private_key: X25519PrivateKey):
        self.enclave, self.request_body = enclave, request_body
        self.opener = AnswerOpener(reply_private_key)
        self.pieces: list[str] = []

    def open_next(self, sealed: object) -> str:
        """The next piece's text; SealedAnswerError if `sealed` is not that piece."""
        seq = len(self.pieces)
        try:
            piece = self.opener.open_piece(sealed).decode("utf-8")
        except sealing.SealingError as error:
            raise SealedAnswerError(f"piece {seq} does not open: {error}") from None
        except UnicodeDecodeError:
            raise SealedAnswerError(f"piece {seq} is not UTF-8 text") from None
        self.pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def signature_ok(self, signature: object) -> bool:
        """Whether `signature` is the enclave's over the request and every piece opened."""
        return answer_ok(self.enclave, self.request_body, self.text, signature)


def verified_marker(enclave: AttestedEnclave) -> dict:
    """What a checked answer's `peer` gains: this client verified attestation and signature."""
    return {"attestation": True, "signature": True, "simulated": enclave.simulated}


# What this client refuses, in OpenAI's error shape, so that any OpenAI SDK shows it.

def openai_error(message: str, code: str | None, *, type_: str = "invalid_request_error",
                 param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def upstream_invalid(message: str) -> dict:
    """An answer from the node that this client cannot read."""
    return openai_error(message, "upstream_invalid", type_="server_error")


def sealed_answer_invalid(error: SealedAnswerError) -> dict:
    return openai_error(f"the sealed answer does not open: {error}", "sealed_answer_invalid",
                        type_="server_error")


def signature_invalid() -> dict:
    return openai_error("the answer's signature is not the attested enclave's over this request "
                        "and answer; it was not passed on", "enclave_signature_invalid",
                        type_="server_error")


def no_attested_enclave(model: str, problems: list[str]) -> dict:
    """No enclave to seal to: why, per enclave refused, and the way out when the only reason
    was simulation."""
    if problems:
        message = (f"no enclave serving {model!r} passed this client's attestation checks: "
                   + "; ".join(problems))
    else:
        message = f"no attested enclave serves {model!r} that this request has not tried"
    if refused_only_as_simulated(problems):
        message += (". Only simulated enclaves are on offer, which prove nothing about hardware; "
                    "allow them for development only (the proxy's --allow-simulated)")
    return openai_error(message, "no_attested_enclave", type_="service_unavailable")


def json_object(response: httpx.Response) -> dict:
    """The node's answer as a JSON object: an error's body in OpenAI's shape whatever it sent,
    or, for a success that is not a JSON object, UpstreamError (502)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    if response.status_code >= 400:
        return {"error": {"message": f"the node answered {response.status_code}",
                          "type": "server_error", "param": None, "code": None}}
    raise UpstreamError(502, upstream_invalid("the node's answer is not a JSON object"))


class EnclaveCache:
    """Verified enclaves per model, each kept `ttl` seconds after its verification. Safe to share
    between threads."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS):
        self.ttl = ttl
        self._enclaves: dict[str, list[AttestedEnclave]] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> list[AttestedEnclave]:
        """The model's enclaves still within their ttl (a new list; empty when none)."""
        now = time.monotonic()
        with self._lock:
            fresh = [enclave for enclave in self._enclaves.get(model, ())
                     if now - enclave.verified_at < self.ttl]
            self._enclaves[model] = fresh
            return list(fresh)

    def put(self, model: str, enclaves: list[AttestedEnclave]) -> None:
        """Replace the model's enclaves with a fresh attestation's."""
        with self._lock:
            self._enclaves[model] = list(enclaves)

    def forget(self, model: str, enclave_key: str) -> None:
        """Drop one enclave, e.g. after the node said it is unavailable."""
        with self._lock:
            self._enclaves[model] = [enclave for enclave in self._enclaves.get(model, ())
                                     if enclave.enclave_key != enclave_key]
