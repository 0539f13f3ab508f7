"""The enclave's signature over a confidential answer (DESIGN.md §5; issue 6, "Proof with the
response"): every confidential answer carries it, so a client checks what ran without a second call.

    message   = SIGNATURE_LABEL ‖ SHA-256(request body) ‖ SHA-256(response)        32 + 64 bytes
    signature = Ed25519 by the enclave's signing key over `message`, 64 bytes, base64

- *request body* is the plaintext the client sealed to the enclave: the whole OpenAI request body
  as the client wrote it (model, messages, max_tokens, ...), byte for byte. Only the client and the
  enclave know it; the node saw it sealed.
- *response* is the answer's text, UTF-8: every chunk the enclave sealed, in order, joined. A
  stream cut short, a chunk dropped or an answer from another request does not match.
- The signing key is the one the enclave's evidence binds in its report data (`client.binding`):
  a signature by any other key proves nothing.

The standard library and `cryptography`, no Django.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.sealing import SealingFormatError, b64_canonical, b64_text

SIGNATURE_LABEL = b"peercycles/enclave-answer/v1\n"
SIGNATURE_SIZE = 64
SIGNING_KEY_SIZE = 32


def signed_message(request_body: bytes, response_text: str) -> bytes:
    """The bytes the enclave signs for this request and answer."""
    if not isinstance(request_body, (bytes, bytearray)):
        raise TypeError(f"request_body must be bytes, got {type(request_body).__name__}")
    if not isinstance(response_text, str):
        raise TypeError(f"response_text must be str, got {type(response_text).__name__}")
    return (SIGNATURE_LABEL + hashlib.sha256(bytes(request_body)).digest()
            + hashlib.sha256(response_text.encode("utf-8")).digest())


def answer_sign(private_key: ed25519.Ed25519PrivateKey, request_body: bytes, response_text: str) -> str:
    """The enclave's signature (base64) over this request and answer."""
    return b64_text(private_key.sign(signed_message(request_body, response_text)))


def answer_signature_ok(*, signing_key: str, signature: object, request_body: bytes,
                        response_text: str) -> bool:
    """Whether `signature` (base64, from the answer) is the enclave's over this request and
    answer. `signing_key` is the base64 raw Ed25519 key the verified evidence binds. A signature
    that is not base64 or not 64 bytes is simply not a match."""
    try:
        raw_signature = b64_canonical(signature, "signature")
        raw_key = b64_canonical(signing_key, "signing_key")
    except SealingFormatError:
        return False
    if len(raw_signature) != SIGNATURE_SIZE or len(raw_key) != SIGNING_KEY_SIZE:
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw_key).verify(
            raw_signature, signed_message(request_body, response_text))
    except (InvalidSignature, ValueError):
        return False
    return True
