"""A SIMULATED enclave and its verifier, for development and tests only (DESIGN.md §5).

THIS PROVES NOTHING ABOUT HARDWARE. The "platform key" that signs simulated evidence is an
Ed25519 key the simulated enclave made for itself, in memory; anyone can make one and sign
anything. It exists so that development and tests run the same flow as a real TEE: evidence that
binds the enclave's HPKE key, the model digest, the code measurement and a fresh nonce
(`client.binding.report_data`), a verifier that checks all of it, and a verdict to route on.
The confidential tier must refuse it: `SimulatedPolicy.allow_simulated` is False by default, and
then no verdict is ok. Every verdict says `simulated=True`, so a proof shown to a person can too.

Evidence, a JSON object (base64 is RFC 4648's standard alphabet with padding, canonical only):

    {"kind": "simulated", "version": 1,
     "enclave_public_key": b64 (32-byte X25519), "signing_key": b64 (32-byte raw Ed25519,
     the key that signs answers, client.proof), "model_digest": "sha256:<64 hex>",
     "code_measurement": str, "nonce": b64 (32 bytes), "report_data": b64 (64 bytes),
     "platform_key": b64 (32-byte raw Ed25519 public key), "signature": b64 (64 bytes)}

The signature is Ed25519 by the platform key over SIGNATURE_LABEL followed by the canonical JSON
of every other field: sorted keys, separators "," and ":", ASCII only (`signed_message`).

Error design, as in `client.attestation.snp`: `verify_simulated` raises SimulatedEvidenceError
for evidence it cannot read (not an object, a missing or unknown field, another kind or version,
bad base64, a wrong length or format). Every other check is a problem in the SimulatedVerdict,
and `ok` is true only when there are none.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from client import binding, sealing

KIND = "simulated"
VERSION = 1
SIGNATURE_LABEL = b"peercycles/simulated-evidence/v1\n"
REFUSED_PROBLEM = "simulated enclave: refused unless allowed"
EVIDENCE_FIELDS = frozenset({"kind", "version", "enclave_public_key", "signing_key", "model_digest",
                             "code_measurement", "nonce", "report_data", "platform_key",
                             "signature"})
_SIZES = {"enclave_public_key": 32, "signing_key": 32, "nonce": binding.NONCE_SIZE,
          "report_data": binding.REPORT_DATA_SIZE, "platform_key": 32, "signature": 64}


class SimulatedEvidenceError(ValueError):
    """Evidence this module cannot read: shape, kind, version, base64, lengths or formats."""


class SimulatedEnclave:
    """An in-memory stand-in for a TEE guest. Its platform key is self-made: see the module
    docstring, this proves nothing about hardware.

    `private_key` opens what is sealed to `public_key` (client.sealing.open_sealed);
    `signing_private_key` signs answers (client.proof), its public half is `signing_key`.
    """

    def __init__(self) -> None:
        keys: tuple[x25519.X25519PrivateKey, str] = sealing.keypair()
        self.private_key, self.public_key = keys
        self.signing_private_key = ed25519.Ed25519PrivateKey.generate()
        self.signing_key = sealing.b64_text(self.signing_private_key.public_key().public_bytes_raw())
        self._platform_key = ed25519.Ed25519PrivateKey.generate()
        self.platform_public_key = sealing.b64_text(self._platform_key.public_key().public_bytes_raw())

    def evidence(self, *, model_digest: str, code_measurement: str, nonce: bytes) -> dict:
        """Signed simulated evidence for this challenge. A bad argument raises BindingError."""
        raw_key = sealing.public_key_raw(self.public_key)
        data = binding.report_data(enclave_public_key=raw_key,
                                   signing_key=sealing.b64_canonical(self.signing_key, "signing_key"),
                                   model_digest=model_digest, code_measurement=code_measurement,
                                   nonce=nonce)
        fields = {"kind": KIND, "version": VERSION, "enclave_public_key": self.public_key,
                  "signing_key": self.signing_key,
                  "model_digest": model_digest, "code_measurement": code_measurement,
                  "nonce": sealing.b64_text(bytes(nonce)), "report_data": sealing.b64_text(data),
                  "platform_key": self.platform_public_key}
        signature = self._platform_key.sign(signed_message(fields))
        return {**fields, "signature": sealing.b64_text(signature)}


@dataclass(frozen=True)
class SimulatedPolicy:
    """What a caller accepts. Empty sets allow any; `expected_nonce` None skips freshness
    (as SnpPolicy.expected_report_data does), which only a test should want."""

    allow_simulated: bool = False
    expected_nonce: bytes | None = None
    allowed_model_digests: frozenset[str] = frozenset()
    allowed_code_measurements: frozenset[str] = frozenset()
    trusted_platform_keys: frozenset[str] = frozenset()  # b64; pins one dev enclave's key

    def __post_init__(self):
        if self.expected_nonce is not None and len(self.expected_nonce) != binding.NONCE_SIZE:
            raise ValueError(f"expected_nonce must be {binding.NONCE_SIZE} bytes")
        for name in ("allowed_model_digests", "allowed_code_measurements",
                     "trusted_platform_keys"):
            if isinstance(getattr(self, name), str):  # a bare str would become its characters
                raise TypeError(f"{name} is a set of strings, not one string")
            object.__setattr__(self, name, frozenset(getattr(self, name)))


@dataclass(frozen=True)
class SimulatedVerdict:
    ok: bool
    simulated: bool  # always True: this evidence proves nothing about hardware
    enclave_public_key: str  # b64, what a client seals to if it accepts the verdict
    signing_key: str  # b64, the key whose answer signatures (client.proof) the verdict vouches for
    signature_ok: bool
    binding_ok: bool  # report_data binds the evidence's own key, digest, measurement, nonce
    problems: tuple[str, ...]


def signed_message(fields: dict) -> bytes:
    """The bytes the signature covers: SIGNATURE_LABEL ‖ canonical JSON of all but "signature"."""
    body = {name: value for name, value in fields.items() if name != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return SIGNATURE_LABEL + canonical.encode("ascii")


def verify_simulated(evidence: dict, *, policy: SimulatedPolicy) -> SimulatedVerdict:
    """Check simulated evidence's signature, binding and the caller's policy.

    Raises SimulatedEvidenceError only for unreadable evidence (module docstring).
    """
    raw = _parse(evidence)
    problems: list[str] = []
    if not policy.allow_simulated:
        problems.append(REFUSED_PROBLEM)
    platform_key, model_digest = evidence["platform_key"], evidence["model_digest"]
    if policy.trusted_platform_keys and platform_key not in policy.trusted_platform_keys:
        problems.append("platform key is not one the policy trusts")
    signature_ok = _check_signature(evidence, raw, problems)
    binding_ok = binding.binding_matches(
        raw["report_data"], enclave_public_key=raw["enclave_public_key"],
        signing_key=raw["signing_key"], model_digest=evidence["model_digest"], code_measurement=evidence["code_measurement"],
        nonce=raw["nonce"])
    if not binding_ok:
        problems.append("report_data does not bind the evidence's keys, digest, measurement "
                        "and nonce")
    if policy.expected_nonce is not None and not hmac.compare_digest(raw["nonce"],
                                                                     policy.expected_nonce):
        problems.append("nonce is not the expected one (stale or replayed evidence)")
    if policy.allowed_model_digests and model_digest not in policy.allowed_model_digests:
        problems.append(f"model digest {model_digest} is not allowed")
    if (policy.allowed_code_measurements
            and evidence["code_measurement"] not in policy.allowed_code_measurements):
        problems.append(f"code measurement {evidence['code_measurement']!r} is not allowed")
    return SimulatedVerdict(ok=not problems, simulated=True,
                            enclave_public_key=evidence["enclave_public_key"],
                            signing_key=evidence["signing_key"],
                            signature_ok=signature_ok, binding_ok=binding_ok,
                            problems=tuple(problems))


def _parse(evidence: object) -> dict[str, bytes]:
    if not isinstance(evidence, dict):
        raise SimulatedEvidenceError(f"evidence is a JSON object, got {type(evidence).__name__}")
    missing, unknown = EVIDENCE_FIELDS - evidence.keys(), evidence.keys() - EVIDENCE_FIELDS
    if missing or unknown:
        raise SimulatedEvidenceError(
            f"evidence has exactly the fields {sorted(EVIDENCE_FIELDS)}; "
            f"missing {sorted(missing)}, unknown {sorted(map(str, unknown))}")
    # `True == 1` in Python, so the version's type is checked too.
    kind, version = evidence["kind"], evidence["version"]
    if kind != KIND or type(version) is not int or version != VERSION:
        raise SimulatedEvidenceError(f"not {KIND!r} evidence version {VERSION}: "
                                     f"{kind!r} version {version!r}")
    raw = {name: _b64decode(evidence[name], name, size) for name, size in _SIZES.items()}
    try:
        # Formats only; the values come from the evidence, so a mismatch is a problem later.
        binding.report_data(enclave_public_key=raw["enclave_public_key"],
                            signing_key=raw["signing_key"], model_digest=evidence["model_digest"],
                            code_measurement=evidence["code_measurement"], nonce=raw["nonce"])
    except binding.BindingError as error:
        raise SimulatedEvidenceError(str(error)) from None
    return raw


def _check_signature(evidence: dict, raw: dict[str, bytes], problems: list[str]) -> bool:
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw["platform_key"])
        key.verify(raw["signature"], signed_message(evidence))
    except (InvalidSignature, ValueError):
        problems.append("signature does not verify with the embedded platform key")
        return False
    return True


def _b64decode(value: object, field: str, size: int) -> bytes:
    raw = sealing.b64_canonical(value, field, error=SimulatedEvidenceError)
    if len(raw) != size:
        raise SimulatedEvidenceError(f"{field} must be {size} bytes, got {len(raw)}")
    return raw
