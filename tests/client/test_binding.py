"""The report-data binding: its encoding byte for byte, and that nothing else passes for it.

The expected bytes are built here from the encoding the module's docstring states, with hashlib
and nothing of the module, so a change to the encoding fails these tests instead of moving both.
"""

import hashlib

import pytest

from client.binding import (
    REPORT_DATA_SIZE, STATEMENT_LABEL, BindingError, _length_prefixed, binding_matches,
    fresh_nonce, report_data,
)
from client.sealing import keypair, public_key_raw

ENCLAVE_KEY = bytes(range(32))
SIGNING_KEY = bytes(range(50, 82))
MODEL = "sha256:" + hashlib.sha256(b"llama-3.1-8b-instruct.Q4_K_M.gguf").hexdigest()
CODE = "sha256:" + "ab" * 32
NONCE = bytes(range(100, 132))
INPUTS = dict(enclave_public_key=ENCLAVE_KEY, signing_key=SIGNING_KEY, model_digest=MODEL, code_measurement=CODE,
              nonce=NONCE)


def spelled_out(*, enclave_public_key, signing_key, model_digest, code_measurement, nonce):
    """The documented encoding, written out independently of the module."""
    def field(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw

    statement = (field(b"peercycles/report-data/v1") + field(enclave_public_key) + field(signing_key)
                 + field(model_digest.encode()) + field(code_measurement.encode()))
    return hashlib.sha256(statement).digest() + hashlib.sha256(nonce).digest()


def test_it_fills_the_64_bytes_exactly_as_documented():
    data = report_data(**INPUTS)

    assert len(data) == REPORT_DATA_SIZE == 64
    assert data == spelled_out(**INPUTS)
    assert data[32:] == hashlib.sha256(NONCE).digest()
    assert STATEMENT_LABEL == b"peercycles/report-data/v1"


def test_the_same_inputs_always_give_the_same_bytes():
    assert report_data(**INPUTS) == report_data(**dict(INPUTS))
    assert report_data(**{**INPUTS, "enclave_public_key": bytearray(ENCLAVE_KEY)}) == \
        report_data(**INPUTS)


@pytest.mark.parametrize("changed", [
    {"enclave_public_key": bytes(31) + b"\x01"},
    {"signing_key": bytes(32)},
    {"model_digest": "sha256:" + "0" * 64},
    {"code_measurement": CODE + " "},
    {"nonce": NONCE[:-1] + b"\x00"},
], ids=["enclave key", "signing key", "model digest", "code measurement", "nonce"])
def test_changing_any_input_changes_the_report_data(changed):
    other = {**INPUTS, **changed}

    assert report_data(**other) != report_data(**INPUTS)
    assert report_data(**other) == spelled_out(**other)


def test_moving_the_boundary_between_fields_changes_the_encoding():
    # Without the lengths both splits would be b"abc".
    assert _length_prefixed(b"ab", b"c") != _length_prefixed(b"a", b"bc")
    assert _length_prefixed(b"", b"abc") != _length_prefixed(b"abc", b"")
    assert _length_prefixed(b"ab", b"c") == b"\0\0\0\x02ab\0\0\0\x01c"


def test_binding_matches_the_inputs_it_was_made_from():
    assert binding_matches(report_data(**INPUTS), **INPUTS)


@pytest.mark.parametrize("changed", [
    {"enclave_public_key": bytes(32)},
    {"model_digest": "sha256:" + "f" * 64},
    {"code_measurement": "sha256:" + "cd" * 32},
    {"nonce": fresh_nonce()},
], ids=["another enclave key", "another model", "other code", "an old nonce"])
def test_binding_does_not_match_other_inputs(changed):
    data = report_data(**INPUTS)

    assert not binding_matches(data, **{**INPUTS, **changed})


def test_binding_does_not_match_report_data_with_a_flipped_byte():
    data = report_data(**INPUTS)

    for offset in (0, 31, 32, 63):
        forged = data[:offset] + bytes([data[offset] ^ 0x80]) + data[offset + 1:]
        assert not binding_matches(forged, **INPUTS)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_binding_refuses_report_data_of_the_wrong_length(size):
    data = report_data(**INPUTS)

    with pytest.raises(BindingError):
        binding_matches((data * 2)[:size], **INPUTS)
    with pytest.raises(BindingError):
        binding_matches(data.hex(), **INPUTS)


@pytest.mark.parametrize("changed", [
    {"enclave_public_key": bytes(31)},
    {"enclave_public_key": bytes(33)},
    {"enclave_public_key": ENCLAVE_KEY.hex()},  # hex text, not the raw key
    {"signing_key": bytes(31)},
    {"nonce": bytes(31)},
    {"nonce": bytes(33)},
    {"nonce": NONCE.hex()},
], ids=["key 31", "key 33", "key as hex", "signing key 31", "nonce 31", "nonce 33", "nonce as hex"])
def test_it_refuses_keys_and_nonces_of_the_wrong_length_or_type(changed):
    with pytest.raises(BindingError):
        report_data(**{**INPUTS, **changed})
    with pytest.raises(BindingError):
        binding_matches(bytes(64), **{**INPUTS, **changed})


@pytest.mark.parametrize("model_digest", [
    "sha256:" + MODEL.removeprefix("sha256:").upper(), MODEL.removeprefix("sha256:"), MODEL[:-1], MODEL + "0", "sha512:" + "0" * 64,
    "sha256:" + "g" * 64, b"sha256:" + b"0" * 64, None,
], ids=["upper case", "no prefix", "63 digits", "65 digits", "sha512", "not hex", "bytes", "None"])
def test_it_refuses_a_model_digest_in_another_spelling(model_digest):
    with pytest.raises(BindingError):
        report_data(**{**INPUTS, "model_digest": model_digest})


@pytest.mark.parametrize("code_measurement", ["", None, b"sha256:00", "\ud800"])
def test_it_refuses_a_code_measurement_that_is_not_text(code_measurement):
    with pytest.raises(BindingError):
        report_data(**{**INPUTS, "code_measurement": code_measurement})


def test_a_fresh_nonce_is_32_bytes_and_never_repeats():
    nonces = {fresh_nonce() for _ in range(64)}

    assert len(nonces) == 64
    assert all(isinstance(n, bytes) and len(n) == 32 for n in nonces)


def test_it_binds_the_key_the_enclave_seals_with():
    _, public_b64 = keypair()
    enclave_key = public_key_raw(public_b64)
    nonce = fresh_nonce()

    data = report_data(enclave_public_key=enclave_key, signing_key=SIGNING_KEY, model_digest=MODEL,
                       code_measurement=CODE, nonce=nonce)

    assert binding_matches(data, enclave_public_key=enclave_key, signing_key=SIGNING_KEY,
                           model_digest=MODEL, code_measurement=CODE, nonce=nonce)
    _, other_public_b64 = keypair()
    assert not binding_matches(data, enclave_public_key=public_key_raw(other_public_b64),
                               signing_key=SIGNING_KEY, model_digest=MODEL, code_measurement=CODE, nonce=nonce)
