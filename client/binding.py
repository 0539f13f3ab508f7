"""The report-data binding: the 64 bytes an enclave asks its TEE to sign, so that a verifier knows
the evidence speaks for this HPKE key, this signing key, this model and this agent code, and was
made just now.

DESIGN.md §5, "Attested": the evidence binds the enclave's HPKE public key, the model digest and a
fresh nonce in its report data. It binds the enclave's Ed25519 signing key too: that key signs
every confidential answer (`client.proof`), and only a key the evidence names proves anything. Intel TDX's REPORTDATA and AMD SEV-SNP's REPORT_DATA are 64 bytes
the guest chooses and the hardware signs; this module fills them. The standard library only.

Encoding, version 1 (every byte fixed here, so enclaves and verifiers agree without sharing code):

    report_data = SHA-256(statement) ‖ SHA-256(nonce)                            64 bytes
    statement   = field(STATEMENT_LABEL) ‖ field(enclave_public_key) ‖ field(signing_key)
                  ‖ field(model_digest as UTF-8) ‖ field(code_measurement as UTF-8)
    field(x)    = len(x) as 4 bytes, big-endian ‖ x

- Each field carries its length, so no two different inputs give the same statement: ("ab", "c")
  and ("a", "bc") differ in their length bytes. A plain concatenation would let one split pass for
  another.
- STATEMENT_LABEL keeps this hash apart from every other SHA-256 over similar fields (the job
  commitments of §5) and names the encoding's version; a new encoding takes a new label.
- The nonce has its own half: the first half stays the same for an enclave's lifetime, the second
  changes with every challenge, so a verifier can report which of the two failed.
- enclave_public_key is the raw 32-byte X25519 key (`client.sealing.public_key_raw` decodes the
  wire's base64); signing_key the raw 32-byte Ed25519 public key. model_digest is "sha256:" and 64 lowercase hex digits, one spelling per model.
  code_measurement is the agent code's measurement as text, compared byte for byte.

Wrong types, lengths or formats raise BindingError: they are a caller's mistake, never a verdict.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

STATEMENT_LABEL = b"peercycles/report-data/v1"
REPORT_DATA_SIZE = 64
ENCLAVE_KEY_SIZE = 32  # a raw X25519 public key
SIGNING_KEY_SIZE = 32  # a raw Ed25519 public key
NONCE_SIZE = 32
_MODEL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_LENGTH_BYTES = 4


class BindingError(ValueError):
    """An input of the wrong type, length or format."""


def fresh_nonce() -> bytes:
    """32 bytes from the operating system's CSPRNG: a verifier's challenge, used once."""
    return secrets.token_bytes(NONCE_SIZE)


def report_data(*, enclave_public_key: bytes, signing_key: bytes, model_digest: str,
                code_measurement: str, nonce: bytes) -> bytes:
    """The 64 bytes of report data for these inputs (encoding in the module docstring)."""
    statement = _length_prefixed(
        STATEMENT_LABEL,
        _exact_bytes(enclave_public_key, ENCLAVE_KEY_SIZE, "enclave_public_key"),
        _exact_bytes(signing_key, SIGNING_KEY_SIZE, "signing_key"),
        _model_digest_bytes(model_digest),
        _code_measurement_bytes(code_measurement),
    )
    nonce = _exact_bytes(nonce, NONCE_SIZE, "nonce")
    return hashlib.sha256(statement).digest() + hashlib.sha256(nonce).digest()


def binding_matches(report_data_64: bytes, *, enclave_public_key: bytes, signing_key: bytes,
                    model_digest: str, code_measurement: str, nonce: bytes) -> bool:
    """Whether signed report data binds exactly these inputs.

    `report_data_64` is the whole field from verified evidence (e.g. SnpReport.report_data); this
    checks the binding only, not the evidence's signature.
    """
    observed = _exact_bytes(report_data_64, REPORT_DATA_SIZE, "report data")
    expected = report_data(enclave_public_key=enclave_public_key, signing_key=signing_key,
                           model_digest=model_digest, code_measurement=code_measurement, nonce=nonce)
    # Nothing here is secret, but a constant-time compare costs nothing and ends the question.
    return hmac.compare_digest(observed, expected)


def _length_prefixed(*fields: bytes) -> bytes:
    return b"".join(len(field).to_bytes(_LENGTH_BYTES, "big") + field for field in fields)


def _exact_bytes(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        # A hex or base64 str here is the usual mistake; saying so beats a length error.
        raise BindingError(f"{name} must be {size} raw bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != size:
        raise BindingError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def _model_digest_bytes(model_digest: object) -> bytes:
    if not isinstance(model_digest, str) or not _MODEL_DIGEST.fullmatch(model_digest):
        raise BindingError(f"model_digest must be 'sha256:' and 64 lowercase hex digits, "
                           f"got {model_digest!r}")
    return model_digest.encode("ascii")


def _code_measurement_bytes(code_measurement: object) -> bytes:
    if not isinstance(code_measurement, str) or not code_measurement:
        raise BindingError(f"code_measurement must be a non-empty str, got {code_measurement!r}")
    try:
        return code_measurement.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        raise BindingError("code_measurement is not encodable as UTF-8") from None
