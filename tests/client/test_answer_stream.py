"""A confidential answer sealed piece by piece (client/answer_stream.py): it opens in order for
the holder of the reply key only, and nothing reordered, dropped, replayed, spliced or re-keyed
passes. The format is checked byte for byte against the docstring with `cryptography` directly."""

import base64

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.answer_stream import KEY_AAD, PIECE_AAD, AnswerOpener, AnswerSealer, piece_nonce
from client.sealing import (
    REQUEST_INFO, RESPONSE_INFO, SealingAuthenticationError, SealingFormatError, SealingKeyError, keypair,
    open_sealed,
)

PIECES = [b"The ", b"answer ", b"is ", b"42."]


def sealed_answer(reply_public_b64, pieces=PIECES):
    sealer = AnswerSealer(reply_public_b64)
    return [sealer.seal_piece(piece) for piece in pieces]


def test_an_answer_opens_piece_by_piece_for_the_reply_key():
    reply_private, reply_public = keypair()

    opener = AnswerOpener(reply_private)

    assert [opener.open_piece(piece) for piece in sealed_answer(reply_public)] == PIECES


def test_the_format_is_one_key_envelope_then_aes_gcm_with_the_piece_number_as_nonce():
    reply_private, reply_public = keypair()
    sealed = sealed_answer(reply_public)

    assert set(sealed[0]) == {"key", "ciphertext"} and all(set(s) == {"ciphertext"} for s in sealed[1:])
    key = open_sealed(reply_private, sealed[0]["key"], info=RESPONSE_INFO, aad=KEY_AAD)
    assert len(key) == 32
    for seq, piece in enumerate(sealed):
        nonce = bytes(4) + seq.to_bytes(8, "big")
        assert AESGCM(key).decrypt(nonce, base64.b64decode(piece["ciphertext"]), PIECE_AAD) == PIECES[seq]
    assert piece_nonce(2 ** 64 - 1) == bytes(4) + b"\xff" * 8


@pytest.mark.parametrize("edit", [
    lambda s: [s[0], s[2], s[1], s[3]],
    lambda s: [s[0], s[2], s[3]],
    lambda s: [s[0], s[1], s[1], s[2]],
], ids=["reordered", "dropped", "replayed"])
def test_a_piece_reordered_dropped_or_replayed_does_not_open(edit):
    reply_private, reply_public = keypair()
    opener = AnswerOpener(reply_private)
    edited = edit(sealed_answer(reply_public))

    assert opener.open_piece(edited[0]) == b"The "
    with pytest.raises(SealingAuthenticationError):
        for piece in edited[1:]:
            opener.open_piece(piece)


def test_a_piece_of_another_answer_to_the_same_key_does_not_open():
    reply_private, reply_public = keypair()
    first, second = sealed_answer(reply_public), sealed_answer(reply_public)
    opener = AnswerOpener(reply_private)
    opener.open_piece(first[0])

    with pytest.raises(SealingAuthenticationError):
        opener.open_piece(second[1])


def test_a_second_key_mid_answer_and_a_first_piece_without_one_are_refused():
    reply_private, reply_public = keypair()
    sealed = sealed_answer(reply_public)

    with pytest.raises(SealingFormatError):
        AnswerOpener(reply_private).open_piece(sealed[1])
    opener = AnswerOpener(reply_private)
    opener.open_piece(sealed[0])
    with pytest.raises(SealingFormatError):
        opener.open_piece({**sealed[1], "key": sealed[0]["key"]})


def test_only_the_reply_key_opens_it_and_an_answer_is_not_a_request():
    _, reply_public = keypair()
    mallory_private, _ = keypair()
    sealed = sealed_answer(reply_public)

    with pytest.raises(SealingAuthenticationError):
        AnswerOpener(mallory_private).open_piece(sealed[0])
    with pytest.raises(SealingAuthenticationError):
        open_sealed(mallory_private, sealed[0]["key"], info=REQUEST_INFO, aad=KEY_AAD)


@pytest.mark.parametrize("piece", [
    None, "text", {}, {"ciphertext": 3}, {"ciphertext": "not base64!"}, {"ciphertext": "AAAA"},
    {"ciphertext": "AA==", "extra": 1},
], ids=["none", "string", "empty", "number", "bad base64", "shorter than the tag", "unknown field"])
def test_what_is_not_a_piece_is_a_format_error(piece):
    reply_private, reply_public = keypair()
    opener = AnswerOpener(reply_private)
    opener.open_piece(sealed_answer(reply_public)[0])

    with pytest.raises(SealingFormatError):
        opener.open_piece(piece)


def test_a_flipped_ciphertext_byte_does_not_open():
    reply_private, reply_public = keypair()
    sealed = sealed_answer(reply_public)
    raw = bytearray(base64.b64decode(sealed[1]["ciphertext"]))
    raw[0] ^= 1
    opener = AnswerOpener(reply_private)
    opener.open_piece(sealed[0])

    with pytest.raises(SealingAuthenticationError):
        opener.open_piece({"ciphertext": base64.b64encode(bytes(raw)).decode()})


def test_a_reply_key_that_cannot_be_sealed_to_fails_before_any_piece():
    with pytest.raises(SealingKeyError):
        AnswerSealer(base64.b64encode(bytes(32)).decode())  # the all-zero point has low order
    with pytest.raises(TypeError):
        AnswerSealer(keypair()[1]).seal_piece("text")
