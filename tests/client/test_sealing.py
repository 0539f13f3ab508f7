"""HPKE sealing against RFC 9180's own test vectors, round trips, and an attacker's edits.

The vectors (tests/data/hpke/README.md) are the RFC's, so opening them shows that an envelope made
by any RFC 9180 implementation opens here. mallory relays the envelopes and may change any byte.
"""

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from client.sealing import (
    DEFAULT_SUITE, REQUEST_INFO, RESPONSE_INFO, SUITE_AES_128_GCM, SUITE_CHACHA20_POLY1305,
    SealingAuthenticationError, SealingFormatError, SealingKeyError, SealingSuiteError,
    keypair, open_sealed, public_key_raw, seal,
)

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "data" / "hpke" /
                      "rfc9180_base_x25519.json").read_text())
SUITE_BY_AEAD_ID = {1: SUITE_AES_128_GCM, 3: SUITE_CHACHA20_POLY1305}
PROMPT = b'{"messages": [{"role": "user", "content": "Summarise my medical file."}]}'


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def vector_envelope(vector, seq):
    encryption = vector["encryptions"][seq]
    return {"hpke": SUITE_BY_AEAD_ID[vector["aead_id"]], "enc": b64(bytes.fromhex(vector["enc"])),
            "ciphertext": b64(bytes.fromhex(encryption["ct"]))}


def vector_private_key(vector):
    return x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))


def flipped(text_b64: str, offset: int) -> str:
    raw = base64.b64decode(text_b64)
    return b64(raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1:])


@pytest.fixture
def enclave():
    return keypair()


by_section = pytest.mark.parametrize("vector", VECTORS, ids=[v["section"] for v in VECTORS])


@by_section
def test_it_opens_the_rfc_vectors_first_message(vector):
    encryption = vector["encryptions"][0]
    assert vector["mode"] == 0 and vector["kem_id"] == 0x20 and vector["kdf_id"] == 1

    plaintext = open_sealed(vector_private_key(vector), vector_envelope(vector, 0),
                            info=bytes.fromhex(vector["info"]), aad=bytes.fromhex(encryption["aad"]))

    assert plaintext == bytes.fromhex(encryption["pt"]) == b"Beauty is truth, truth beauty"


@by_section
def test_the_vectors_keys_are_the_ones_it_would_put_on_the_wire(vector):
    private_key = vector_private_key(vector)

    assert public_key_raw(b64(private_key.public_key().public_bytes_raw())).hex() == vector["pkRm"]
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skEm"]))
    assert ephemeral.public_key().public_bytes_raw().hex() == vector["enc"]


@by_section
def test_it_refuses_the_vectors_later_messages_as_one_shot_envelopes(vector):
    # The RFC seals every listed message in one context; message n uses base_nonce XOR n. An
    # envelope is its own context, always at n = 0, so only message 0 maps onto an envelope, and
    # a message cut out of a longer conversation must not open as one.
    for seq in (1, 2):
        with pytest.raises(SealingAuthenticationError):
            open_sealed(vector_private_key(vector), vector_envelope(vector, seq),
                        info=bytes.fromhex(vector["info"]),
                        aad=bytes.fromhex(vector["encryptions"][seq]["aad"]))


@by_section
def test_the_vectors_first_message_does_not_open_with_another_aad_or_info(vector):
    info, aad = bytes.fromhex(vector["info"]), bytes.fromhex(vector["encryptions"][0]["aad"])
    envelope = vector_envelope(vector, 0)

    with pytest.raises(SealingAuthenticationError):
        open_sealed(vector_private_key(vector), envelope, info=info, aad=b"Count-1")
    with pytest.raises(SealingAuthenticationError):
        open_sealed(vector_private_key(vector), envelope, info=info + b"!", aad=aad)


@pytest.mark.parametrize("suite", [SUITE_CHACHA20_POLY1305, SUITE_AES_128_GCM])
def test_a_sealed_prompt_opens_for_the_enclave_and_never_seals_the_same_twice(enclave, suite):
    private_key, public_b64 = enclave

    first, second = (seal(public_b64, PROMPT, info=REQUEST_INFO, aad=b"job 42", suite=suite)
                     for _ in range(2))

    assert first["enc"] != second["enc"] and first["ciphertext"] != second["ciphertext"]
    for envelope in (first, second):
        wire = json.loads(json.dumps(envelope))
        assert open_sealed(private_key, wire, info=REQUEST_INFO, aad=b"job 42") == PROMPT


def test_the_envelope_has_the_documented_shape(enclave):
    _, public_b64 = enclave

    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)

    assert set(envelope) == {"hpke", "enc", "ciphertext"}
    assert envelope["hpke"] == DEFAULT_SUITE == "X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
    assert len(base64.b64decode(envelope["enc"], validate=True)) == 32
    assert len(base64.b64decode(envelope["ciphertext"], validate=True)) == len(PROMPT) + 16


@pytest.mark.parametrize("plaintext", [b"", bytes(range(256)) * 4096], ids=["empty", "1 MiB"])
def test_it_seals_empty_and_large_messages(enclave, plaintext):
    private_key, public_b64 = enclave

    envelope = seal(public_b64, plaintext, info=RESPONSE_INFO)

    assert open_sealed(private_key, envelope, info=RESPONSE_INFO) == plaintext


def test_its_envelopes_and_cryptographys_public_hpke_are_interchangeable(enclave):
    # The aad route is a private cryptography function; with no aad it must equal the public one.
    private_key, public_b64 = enclave
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)
    sealed_by_public_api = suite.encrypt(PROMPT, private_key.public_key(), info=REQUEST_INFO)

    raw = base64.b64decode(envelope["enc"]) + base64.b64decode(envelope["ciphertext"])
    assert suite.decrypt(raw, private_key, info=REQUEST_INFO) == PROMPT
    foreign = {"hpke": DEFAULT_SUITE, "enc": b64(sealed_by_public_api[:32]),
               "ciphertext": b64(sealed_by_public_api[32:])}
    assert open_sealed(private_key, foreign, info=REQUEST_INFO) == PROMPT


@pytest.mark.parametrize("field,offset", [("enc", 0), ("enc", 31), ("ciphertext", 0),
                                          ("ciphertext", -1)])
def test_mallory_cannot_change_a_byte_of_enc_or_ciphertext(enclave, field, offset):
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)

    tampered = {**envelope, field: flipped(envelope[field], offset)}

    with pytest.raises(SealingAuthenticationError):
        open_sealed(private_key, tampered, info=REQUEST_INFO)


def test_mallory_cannot_relabel_the_suite(enclave):
    # Both suites are valid names; the AEAD id is part of the key schedule, so the relabelled
    # envelope derives other keys rather than opening under the weaker assumption.
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO, suite=SUITE_AES_128_GCM)

    with pytest.raises(SealingAuthenticationError):
        open_sealed(private_key, {**envelope, "hpke": SUITE_CHACHA20_POLY1305}, info=REQUEST_INFO)


@pytest.mark.parametrize("opener", [
    lambda key, env: open_sealed(keypair()[0], env, info=REQUEST_INFO, aad=b"job 42"),
    lambda key, env: open_sealed(key, env, info=RESPONSE_INFO, aad=b"job 42"),
    lambda key, env: open_sealed(key, env, info=REQUEST_INFO, aad=b"job 43"),
    lambda key, env: open_sealed(key, env, info=REQUEST_INFO),
], ids=["mallory's key", "as an answer", "another aad", "no aad"])
def test_it_opens_only_with_the_same_key_info_and_aad(enclave, opener):
    private_key, public_b64 = enclave

    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO, aad=b"job 42")

    assert (REQUEST_INFO, RESPONSE_INFO) == (b"peercycles/request/v1", b"peercycles/response/v1")
    with pytest.raises(SealingAuthenticationError):
        opener(private_key, envelope)


@pytest.mark.parametrize("name", ["X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM", "", None, ["x"]])
def test_it_refuses_a_suite_it_does_not_offer(enclave, name):
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)

    with pytest.raises(SealingSuiteError):
        open_sealed(private_key, {**envelope, "hpke": name}, info=REQUEST_INFO)
    if isinstance(name, str):
        with pytest.raises(SealingSuiteError):
            seal(public_b64, PROMPT, info=REQUEST_INFO, suite=name)


@pytest.mark.parametrize("field,value", [
    ("enc", "not base64!"), ("enc", "QUJ"), ("enc", 12), ("enc", "é"),
    ("enc", b64(bytes(31))), ("ciphertext", b64(bytes(15))),
])
def test_it_refuses_fields_that_are_not_what_the_format_says(enclave, field, value):
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)

    with pytest.raises(SealingFormatError):
        open_sealed(private_key, {**envelope, field: value}, info=REQUEST_INFO)


def test_it_refuses_a_second_spelling_of_the_same_enc(enclave):
    # 32 bytes leave 2 unused bits in the last base64 digit; a lenient decoder ignores them, so
    # setting one spells the same key differently.
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    enc = envelope["enc"]
    respelled = enc[:42] + alphabet[alphabet.index(enc[42]) | 1] + enc[43:]
    assert respelled != enc and base64.b64decode(respelled) == base64.b64decode(enc)

    with pytest.raises(SealingFormatError):
        open_sealed(private_key, {**envelope, "enc": respelled}, info=REQUEST_INFO)


def test_it_refuses_an_envelope_with_a_missing_or_unknown_field(enclave):
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)
    missing = {k: v for k, v in envelope.items() if k != "enc"}

    for broken in (missing, {**envelope, "kid": "x"}, [envelope], json.dumps(envelope)):
        with pytest.raises(SealingFormatError):
            open_sealed(private_key, broken, info=REQUEST_INFO)


@pytest.mark.parametrize("public_b64", [b64(bytes(31)), b64(bytes(33)), "%%%", b64(bytes(32))],
                         ids=["short", "long", "not base64", "low-order point"])
def test_it_refuses_to_seal_to_a_key_that_is_not_a_usable_x25519_key(public_b64):
    with pytest.raises(SealingKeyError):
        seal(public_b64, PROMPT, info=REQUEST_INFO)


def test_it_refuses_a_private_key_of_the_wrong_type(enclave):
    private_key, public_b64 = enclave
    envelope = seal(public_b64, PROMPT, info=REQUEST_INFO)

    with pytest.raises(SealingKeyError):
        open_sealed(private_key.public_key(), envelope, info=REQUEST_INFO)


def test_text_where_bytes_belong_is_a_type_error(enclave):
    private_key, public_b64 = enclave

    with pytest.raises(TypeError):
        seal(public_b64, "a prompt", info=REQUEST_INFO)
    with pytest.raises(TypeError):
        open_sealed(private_key, seal(public_b64, PROMPT, info=REQUEST_INFO), info="request")


