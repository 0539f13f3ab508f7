"""The simulated enclave: its evidence verifies only when allowed, says it is simulated, and no
change to it (or a signature by another key) passes."""

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.attestation.simulated import (
    REFUSED_PROBLEM, SIGNATURE_LABEL, SimulatedEnclave, SimulatedEvidenceError, SimulatedPolicy,
    signed_message, verify_simulated,
)
from client.binding import fresh_nonce, report_data
from client.sealing import (
    REQUEST_INFO, SealingAuthenticationError, open_sealed, public_key_raw, seal,
)

MODEL = "sha256:" + hashlib.sha256(b"llama-3.1-8b-instruct.Q4_K_M.gguf").hexdigest()
OTHER_MODEL = "sha256:" + "cd" * 32
CODE = "sha256:" + "ab" * 32


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def flipped(value_b64: str) -> str:
    raw = bytearray(base64.b64decode(value_b64))
    raw[0] ^= 1
    return b64(bytes(raw))


@pytest.fixture
def enclave():
    return SimulatedEnclave()


@pytest.fixture
def nonce():
    return fresh_nonce()


@pytest.fixture
def evidence(enclave, nonce):
    return enclave.evidence(model_digest=MODEL, code_measurement=CODE, nonce=nonce)


def allowing(nonce, **more):
    return SimulatedPolicy(allow_simulated=True, expected_nonce=nonce, **more)


def resigned_by_mallory(evidence: dict) -> dict:
    """The evidence as anyone can forge it: signed again with a key of their own."""
    mallory = ed25519.Ed25519PrivateKey.generate()
    forged = {**evidence, "platform_key": b64(mallory.public_key().public_bytes_raw())}
    return {**forged, "signature": b64(mallory.sign(signed_message(forged)))}


def test_its_evidence_verifies_when_simulation_is_allowed_and_the_nonce_matches(enclave, evidence,
                                                                                  nonce):
    verdict = verify_simulated(evidence, policy=allowing(
        nonce, allowed_model_digests={MODEL}, allowed_code_measurements={CODE},
        trusted_platform_keys={enclave.platform_public_key}))

    assert verdict.ok and verdict.signature_ok and verdict.binding_ok
    assert verdict.problems == ()
    assert verdict.simulated is True
    assert verdict.enclave_public_key == enclave.public_key == evidence["enclave_public_key"]
    assert verdict.signing_key == enclave.signing_key == evidence["signing_key"]


def test_the_evidence_carries_the_documented_fields_and_binding(enclave, evidence, nonce):
    assert evidence["kind"] == "simulated" and evidence["version"] == 1
    assert evidence["nonce"] == b64(nonce)
    assert evidence["report_data"] == b64(report_data(
        enclave_public_key=public_key_raw(enclave.public_key),
        signing_key=base64.b64decode(enclave.signing_key), model_digest=MODEL,
        code_measurement=CODE, nonce=nonce))
    assert evidence["signing_key"] == enclave.signing_key
    body = {k: v for k, v in evidence.items() if k != "signature"}
    spelled_out = SIGNATURE_LABEL + ("{" + ",".join(
        f'"{k}":{v}' if isinstance(v, int) else f'"{k}":"{v}"' for k, v in sorted(body.items()))
        + "}").encode()
    assert signed_message(evidence) == spelled_out
    platform_key = ed25519.Ed25519PublicKey.from_public_bytes(
        base64.b64decode(evidence["platform_key"]))
    platform_key.verify(base64.b64decode(evidence["signature"]), spelled_out)


def test_it_is_refused_by_default_for_exactly_being_simulated(evidence, nonce):
    verdict = verify_simulated(evidence, policy=SimulatedPolicy(expected_nonce=nonce))

    assert not verdict.ok
    assert verdict.simulated is True
    assert verdict.problems == (REFUSED_PROBLEM,)
    assert verdict.problems == ("simulated enclave: refused unless allowed",)


def test_it_refuses_another_nonce_as_stale(evidence):
    verdict = verify_simulated(evidence, policy=allowing(fresh_nonce()))

    assert not verdict.ok
    assert verdict.problems == ("nonce is not the expected one (stale or replayed evidence)",)


def test_it_refuses_a_model_or_code_the_policy_does_not_allow(evidence, nonce):
    verdict = verify_simulated(evidence, policy=allowing(
        nonce, allowed_model_digests={OTHER_MODEL}, allowed_code_measurements={"sha256:other"}))

    assert not verdict.ok
    assert verdict.problems == (f"model digest {MODEL} is not allowed",
                                f"code measurement {CODE!r} is not allowed")


@pytest.mark.parametrize("field, changed", [
    ("enclave_public_key", flipped),
    ("signing_key", flipped),
    ("model_digest", lambda _: OTHER_MODEL),
    ("code_measurement", lambda value: value + "0"),
    ("nonce", flipped),
    ("report_data", flipped),
])
def test_it_catches_any_changed_field(evidence, nonce, field, changed):
    tampered = {**evidence, field: changed(evidence[field])}

    verdict = verify_simulated(tampered, policy=allowing(nonce))

    assert not verdict.ok and not verdict.signature_ok
    assert "signature does not verify with the embedded platform key" in verdict.problems


@pytest.mark.parametrize("field, changed", [
    ("enclave_public_key", flipped),
    ("signing_key", flipped),
    ("model_digest", lambda _: OTHER_MODEL),
    ("code_measurement", lambda value: value + "0"),
    ("report_data", flipped),
])
def test_a_changed_field_resigned_by_another_key_still_fails_the_binding(evidence, nonce, field,
                                                                          changed):
    forged = resigned_by_mallory({**evidence, field: changed(evidence[field])})

    verdict = verify_simulated(forged, policy=allowing(nonce))

    assert verdict.signature_ok and not verdict.binding_ok and not verdict.ok
    assert verdict.problems == ("report_data does not bind the evidence's keys, digest, "
                                "measurement and nonce",)


def test_a_signature_by_another_key_does_not_verify(evidence, nonce):
    mallory = ed25519.Ed25519PrivateKey.generate()
    forged = {**evidence, "signature": b64(mallory.sign(signed_message(evidence)))}

    verdict = verify_simulated(forged, policy=allowing(nonce))

    assert verdict.problems == ("signature does not verify with the embedded platform key",)


def test_pinning_the_platform_key_refuses_a_self_made_one(enclave, evidence, nonce):
    forged = resigned_by_mallory(evidence)
    policy = allowing(nonce, trusted_platform_keys={enclave.platform_public_key})

    assert verify_simulated(evidence, policy=policy).ok
    assert verify_simulated(forged, policy=policy).problems == (
        "platform key is not one the policy trusts",)


@pytest.mark.parametrize("change", [
    lambda e: {k: v for k, v in e.items() if k != "nonce"},
    lambda e: {**e, "extra": 1},
    lambda e: {**e, "kind": "snp"},
    lambda e: {**e, "version": 2},
    lambda e: {**e, "version": True},
    lambda e: {**e, "nonce": "not base64!"},
    lambda e: {**e, "signature": e["signature"].rstrip("=")},
    lambda e: {**e, "enclave_public_key": b64(b"short")},
    lambda e: {**e, "model_digest": "md5:abc"},
    lambda e: {**e, "code_measurement": ""},
    lambda e: {**e, "report_data": 64},
    lambda e: [e],
], ids=["missing", "unknown", "kind", "version", "bool-version", "bad-base64", "unpadded",
        "short-key", "digest-format", "empty-code", "not-a-string", "not-an-object"])
def test_unreadable_evidence_raises(evidence, nonce, change):
    with pytest.raises(SimulatedEvidenceError):
        verify_simulated(change(evidence), policy=allowing(nonce))


def test_a_message_sealed_to_the_evidence_key_opens_with_the_enclave_key_only(enclave, evidence,
                                                                              nonce):
    verdict = verify_simulated(evidence, policy=allowing(nonce))
    envelope = seal(verdict.enclave_public_key, b"my private prompt", info=REQUEST_INFO)

    assert open_sealed(enclave.private_key, envelope, info=REQUEST_INFO) == b"my private prompt"
    with pytest.raises(SealingAuthenticationError):
        open_sealed(SimulatedEnclave().private_key, envelope, info=REQUEST_INFO)
