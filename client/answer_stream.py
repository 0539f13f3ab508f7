"""A confidential answer, sealed piece by piece by the enclave for the client (docs/confidential.md
§3): one HPKE envelope per answer, then a symmetric AEAD per piece.

Why not one HPKE envelope per piece: each envelope is a fresh X25519 key exchange and key
schedule, about 90 µs to seal and 50 µs to open here, so a 64-piece answer cost 9 ms of crypto
(tests/bench/bench_confidential.py); the tier's target is 1 ms a request. An AEAD per piece
costs microseconds.

    piece 0:   {"key": <HPKE envelope (client.sealing) of a fresh 32-byte answer key, sealed to
                        the client's reply key, info RESPONSE_INFO, aad KEY_AAD>,
                "ciphertext": b64(AES-256-GCM(answer key, nonce(0), piece, PIECE_AAD))}
    piece n>0: {"ciphertext": b64(AES-256-GCM(answer key, nonce(n), piece, PIECE_AAD))}
    nonce(n) = 4 zero bytes ‖ n as 8 bytes, big-endian

- The answer key is fresh per answer and travels only inside the envelope to the client's reply
  key (itself fresh per request), so a nonce never repeats under a key, and a piece of another
  answer does not open under this one's key.
- The receiver counts the pieces itself: a piece reordered, repeated or dropped is opened with
  the wrong nonce and fails; a second "key" is refused (no re-keying mid-answer). A cut after the
  last piece received is caught by the enclave's signature over the whole answer (client.proof).
- AES-256-GCM rather than ChaCha20-Poly1305 because browsers have it in WebCrypto: a confidential
  chat in a web page opens the envelope with an RFC 9180 library and the pieces natively.

Errors, as client.sealing's: SealingFormatError for what is not a piece, SealingAuthenticationError
for a piece that does not open (wrong key, nonce or content).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.sealing import (
    DEFAULT_SUITE, RESPONSE_INFO, SEQ_LIMIT, TAG_SIZE, SealingAuthenticationError, SealingFormatError, b64_canonical,
    b64_text, open_sealed, seal,
)

KEY_AAD = b"peercycles/answer-key/v1"
PIECE_AAD = b"peercycles/answer-piece/v1"
ANSWER_KEY_SIZE = 32


def piece_nonce(seq: int) -> bytes:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_LIMIT:
        raise ValueError(f"a piece number is an int in [0, 2**64), got {seq!r}")
    return bytes(4) + seq.to_bytes(8, "big")


class AnswerSealer:
    """The enclave's side of one answer: `seal_piece` for each piece of text, in order."""

    def __init__(self, reply_key_b64: str, *, suite: str = DEFAULT_SUITE) -> None:
        key = AESGCM.generate_key(bit_length=256)
        # Sealed now, so a reply key that cannot be sealed to fails before any generating.
        self._key_envelope = seal(reply_key_b64, key, info=RESPONSE_INFO, aad=KEY_AAD, suite=suite)
        self._aead = AESGCM(key)
        self._seq = 0

    def seal_piece(self, piece: bytes) -> dict:
        if not isinstance(piece, (bytes, bytearray)):
            raise TypeError(f"a piece is bytes, got {type(piece).__name__}")
        seq, self._seq = self._seq, self._seq + 1
        sealed = {"ciphertext": b64_text(self._aead.encrypt(piece_nonce(seq), bytes(piece), PIECE_AAD))}
        return {"key": self._key_envelope, **sealed} if seq == 0 else sealed


class AnswerOpener:
    """The client's side of one answer: `open_piece` for each sealed piece, in arrival order."""

    def __init__(self, reply_private_key: x25519.X25519PrivateKey) -> None:
        self._private_key = reply_private_key
        self._aead: AESGCM | None = None
        self._seq = 0

    def open_piece(self, sealed: object) -> bytes:
        if not isinstance(sealed, dict) or not isinstance(sealed.get("ciphertext"), str):
            raise SealingFormatError("a sealed piece is an object with a base64 ciphertext")
        expected = {"key", "ciphertext"} if self._aead is None else {"ciphertext"}
        if set(sealed) != expected:
            raise SealingFormatError(f"piece {self._seq} has exactly the fields {sorted(expected)}, "
                                     f"got {sorted(map(str, sealed))}")
        if self._aead is None:
            key = open_sealed(self._private_key, sealed["key"], info=RESPONSE_INFO, aad=KEY_AAD)
            if len(key) != ANSWER_KEY_SIZE:
                raise SealingFormatError(f"the answer key is {ANSWER_KEY_SIZE} bytes, got {len(key)}")
            self._aead = AESGCM(key)
        ciphertext = b64_canonical(sealed["ciphertext"], "ciphertext")
        if len(ciphertext) < TAG_SIZE:
            raise SealingFormatError(f"ciphertext is shorter than the {TAG_SIZE}-byte tag")
        try:
            piece = self._aead.decrypt(piece_nonce(self._seq), ciphertext, PIECE_AAD)
        except InvalidTag:
            raise SealingAuthenticationError(f"piece {self._seq} does not open: reordered, repeated, "
                                             "from another answer, or altered") from None
        self._seq += 1
        return piece
