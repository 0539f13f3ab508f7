"""Seal messages to a public key with HPKE (RFC 9180), for the confidential tier (DESIGN.md §5).

The client seals a prompt to the attested enclave's key; only the enclave opens it. The enclave
seals its answer back to a key the client supplied with the request. The node and the worker's host
process see envelopes only. The standard library and `cryptography`, no Django.

Suite: base mode (no PSK, no sender key), DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, and
ChaCha20-Poly1305 (RFC ids 0x0020, 0x0001, 0x0003) by default; AES-128-GCM (0x0001) by name.

Envelope, the JSON object that travels:

    {"hpke": "X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305",
     "enc": "<base64: the 32-byte encapsulated key>",
     "ciphertext": "<base64: the AEAD ciphertext, 16-byte tag included>"}

base64 is RFC 4648's standard alphabet with padding, one canonical spelling only. Exactly these
three fields. One envelope is one HPKE context and one Seal at sequence number 0 (the RFC's
single-shot API, §6.1), so any RFC 9180 implementation (e.g. @hpke/core in a browser) can make or
open one: Seal(pkR, info, aad, pt) gives (enc, ciphertext).

`info` says what a message is, so a sealed request can never be opened as an answer or the other
way round: REQUEST_INFO for a request's messages, RESPONSE_INFO for answers. A streamed answer is
one envelope carrying an answer key and an AEAD per piece: client.answer_stream.

Why a private `cryptography` function: 50.0's public Suite.encrypt/decrypt take no aad (pyca/
cryptography#14203 removed it, citing RFC 9180 §8.1). The aad path stays as
hpke._encrypt_with_aad/_decrypt_with_aad, which cryptography keeps to run the RFC's vectors. Our
aad must reach the AEAD exactly as RFC 9180's Seal(aad, pt) does, or no other implementation could
make a chunk this module opens. requirements.txt pins cryptography==50.0.2; a version without the
two functions fails at import here rather than sealing differently.

Error design: the caller's own mistakes raise TypeError (text where bytes belong) or ValueError (a
sequence number outside [0, 2**64)). What arrives from elsewhere raises a `SealingError` subclass: SealingFormatError (not an envelope: fields, base64, lengths),
SealingSuiteError (a suite this module does not offer), SealingKeyError (a public key that is not a
usable X25519 key, a private key of the wrong type) and SealingAuthenticationError (the envelope
does not open). A wrong private key, a wrong info or aad and a changed enc or ciphertext are one
error on purpose: the AEAD tag cannot tell them apart, and an opener that guessed would be an oracle.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as _rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

# See the module docstring: the only aad-taking HPKE calls in cryptography 50.0.2.
_encrypt_with_aad = _rust_openssl.hpke._encrypt_with_aad
_decrypt_with_aad = _rust_openssl.hpke._decrypt_with_aad

REQUEST_INFO = b"peercycles/request/v1"
RESPONSE_INFO = b"peercycles/response/v1"

SUITE_CHACHA20_POLY1305 = "X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
SUITE_AES_128_GCM = "X25519-HKDF-SHA256/HKDF-SHA256/AES-128-GCM"
DEFAULT_SUITE = SUITE_CHACHA20_POLY1305
_SUITES = {
    SUITE_CHACHA20_POLY1305: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256,
                                        hpke.AEAD.CHACHA20_POLY1305),
    SUITE_AES_128_GCM: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
}

ENVELOPE_FIELDS = frozenset({"hpke", "enc", "ciphertext"})
ENC_SIZE = hpke.KEM.X25519.enc_length()  # Nenc: the ephemeral X25519 public key, 32 bytes
PUBLIC_KEY_SIZE = 32  # Npk for X25519
TAG_SIZE = 16  # Nt of both AEADs
SEQ_LIMIT = 2 ** 64  # answer pieces are numbered in 8 bytes (client.answer_stream)


class SealingError(Exception):
    """Base of everything this module raises for input it refuses."""


class SealingFormatError(SealingError):
    """Not an envelope: a missing or unknown field, bad base64, an enc or ciphertext too short."""


class SealingSuiteError(SealingError):
    """A suite name this module does not offer."""


class SealingKeyError(SealingError):
    """A public key that is not 32 bytes of usable X25519, or a private key of the wrong type."""


class SealingAuthenticationError(SealingError):
    """The envelope does not open: a wrong key, info or aad, or a changed enc or ciphertext."""


def keypair() -> tuple[x25519.X25519PrivateKey, str]:
    """A fresh X25519 key pair: the private key, and the public key as base64 for the wire."""
    private_key = x25519.X25519PrivateKey.generate()
    return private_key, b64_text(private_key.public_key().public_bytes_raw())


def public_key_raw(public_key_b64: str) -> bytes:
    """The 32 raw bytes of a base64 X25519 public key (what binding.report_data takes)."""
    try:
        raw = b64_canonical(public_key_b64, "public key")
    except SealingFormatError as error:
        raise SealingKeyError(str(error)) from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise SealingKeyError(f"an X25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return raw


def seal(public_key_b64: str, plaintext: bytes, *, info: bytes, aad: bytes = b"",
         suite: str = DEFAULT_SUITE) -> dict:
    """Seal `plaintext` to the holder of `public_key_b64`; returns an envelope (module docstring).

    Every call draws a fresh ephemeral key, so sealing the same plaintext twice gives different
    envelopes. The receiver must open with the same `info` and `aad`; neither travels.
    """
    _require_bytes(plaintext=plaintext, info=info, aad=aad)
    hpke_suite = _suite(suite)
    public_key = x25519.X25519PublicKey.from_public_bytes(public_key_raw(public_key_b64))
    try:
        sealed = _encrypt_with_aad(hpke_suite, plaintext, public_key, info=info, aad=aad)
    except ValueError:
        # OpenSSL refuses a low-order point, whose shared secret would be all zeros
        # (RFC 9180 §7.1.4): a sealer must not send to such a key.
        raise SealingKeyError("the public key is a low-order X25519 point") from None
    return {"hpke": suite, "enc": b64_text(sealed[:ENC_SIZE]),
            "ciphertext": b64_text(sealed[ENC_SIZE:])}


def open_sealed(private_key: x25519.X25519PrivateKey, envelope: dict, *, info: bytes,
                aad: bytes = b"") -> bytes:
    """The plaintext of `envelope`, sealed to `private_key`'s public key with `info` and `aad`.

    The suite is the envelope's own: a changed "hpke" field either names no suite
    (SealingSuiteError) or derives other keys and fails to open (SealingAuthenticationError).
    """
    _require_bytes(info=info, aad=aad)
    hpke_suite, enc, ciphertext = _parse_envelope(envelope)
    if not isinstance(private_key, x25519.X25519PrivateKey):
        raise SealingKeyError(f"expected an X25519PrivateKey, got {type(private_key).__name__}")
    try:
        return _decrypt_with_aad(hpke_suite, enc + ciphertext, private_key, info=info, aad=aad)
    except InvalidTag:
        raise SealingAuthenticationError(
            "the envelope does not open: wrong key, info or aad, or a changed enc or ciphertext"
        ) from None


def envelope_plaintext_size(envelope: object) -> int:
    """How many bytes `envelope` opens to, checking only its form (fields, suite, base64,
    lengths): what a relay that cannot open it may know. Raises as open_sealed does for a
    malformed envelope."""
    _, _, ciphertext = _parse_envelope(envelope)
    return len(ciphertext) - TAG_SIZE


def _parse_envelope(envelope: dict) -> tuple[hpke.Suite, bytes, bytes]:
    if not isinstance(envelope, dict):
        raise SealingFormatError(f"an envelope is a JSON object, got {type(envelope).__name__}")
    missing, unknown = ENVELOPE_FIELDS - envelope.keys(), envelope.keys() - ENVELOPE_FIELDS
    if missing or unknown:
        raise SealingFormatError(f"an envelope has exactly the fields {sorted(ENVELOPE_FIELDS)}; "
                                 f"missing {sorted(missing)}, unknown {sorted(map(str, unknown))}")
    hpke_suite = _suite(envelope["hpke"])
    enc = b64_canonical(envelope["enc"], "enc")
    if len(enc) != ENC_SIZE:
        # cryptography splits enc ‖ ciphertext at 32 bytes: a short enc would silently borrow
        # ciphertext bytes, so the length is checked here, where the error can say so.
        raise SealingFormatError(f"enc is {ENC_SIZE} bytes for X25519, got {len(enc)}")
    ciphertext = b64_canonical(envelope["ciphertext"], "ciphertext")
    if len(ciphertext) < TAG_SIZE:
        raise SealingFormatError(f"ciphertext is shorter than the {TAG_SIZE}-byte tag")
    return hpke_suite, enc, ciphertext


def _suite(name: object) -> hpke.Suite:
    try:
        return _SUITES[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value, e.g. a list, from JSON
        raise SealingSuiteError(f"unknown HPKE suite {name!r}; this module offers "
                                f"{sorted(_SUITES)}") from None


def b64_text(raw: bytes) -> str:
    """Standard base64 with padding, as every field of the envelopes and evidence is written."""
    return base64.b64encode(raw).decode("ascii")


def b64_canonical(value: object, field: str, *, error: type[Exception] | None = None) -> bytes:
    """The bytes of a base64 field written as `b64_text` writes it, or `error` (default
    SealingFormatError) naming `field`. Shared with client.attestation.simulated."""
    error = error or SealingFormatError
    if not isinstance(value, str):
        raise error(f"{field} must be a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise error(f"{field} is not standard base64 with padding") from None
    # b64decode ignores set bits after the last full byte; one spelling per value keeps
    # envelopes comparable and logs unambiguous.
    if b64_text(raw) != value:
        raise error(f"{field} is not canonical base64")
    return raw


def _require_bytes(**values: object) -> None:
    for name, value in values.items():
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
