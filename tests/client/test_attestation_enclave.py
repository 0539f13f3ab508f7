"""The shared enclave-evidence verifier (client/attestation/enclave.py) on real hardware evidence.

The SEV-SNP and TDX vectors (tests/data/attestation/, real reports from real machines) were made
for other report data than our binding, so no statement can make them pass: what these tests show
is that the whole path runs (certificate table, AMD chain, dcap-qvl, the report-data comparison)
and refuses exactly for the reasons it should, and that a flipped byte breaks the signature."""

import base64
import hashlib
import struct
import uuid
from datetime import datetime, timezone

import pytest

from client.attestation.enclave import (
    EvidenceFormatError, EvidencePolicy, snp_certificate_table, verify_enclave_evidence,
)
from client.attestation.simulated import SimulatedEnclave
from client.sealing import keypair
from tests.support.attestation import (
    ARK, ASK, GPU_CHAIN_PEM, GPU_REPORT_HEX, GUIDS, SNP_NOW, SNP_REPORT, TDX_COLLATERAL, TDX_NOW, TDX_QUOTE, VCEK,
    cert_table,
)

MODEL = "sha256:" + hashlib.sha256(b"model").hexdigest()
CODE = "sha256:" + "ab" * 32
NONCE = bytes(range(32))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def statement(nonce=NONCE):
    return {"version": 1, "enclave_public_key": keypair()[1], "signing_key": b64(bytes(range(40, 72))),
            "model_digest": MODEL, "code_measurement": CODE, "nonce": b64(nonce)}


def snp_evidence(report=SNP_REPORT, certs=None):
    return {"kind": "sev-snp", **statement(), "report": b64(report),
            "certificates": b64(cert_table(certs or {"vcek": VCEK, "ask": ASK, "ark": ARK}))}


def tdx_evidence(quote=TDX_QUOTE):
    return {"kind": "tdx", **statement(), "quote": b64(quote), "collateral": TDX_COLLATERAL}


def test_a_real_snp_report_runs_the_whole_path_and_is_refused_for_debug_and_the_binding():
    verdict = verify_enclave_evidence(snp_evidence(), expected_nonce=NONCE, policy=EvidencePolicy(), now=SNP_NOW)

    assert not verdict.ok and verdict.kind == "sev-snp" and not verdict.simulated
    assert set(verdict.problems) == {"guest policy allows debugging", "REPORT_DATA is not the expected nonce binding"}


def test_a_flipped_byte_of_the_snp_report_breaks_its_signature():
    report = bytearray(SNP_REPORT)
    report[0x90] ^= 1  # the launch measurement

    verdict = verify_enclave_evidence(snp_evidence(bytes(report)), expected_nonce=NONCE, policy=EvidencePolicy(),
                                      now=SNP_NOW)

    assert "report signature does not verify with the VCEK key" in verdict.problems


def test_an_snp_chain_to_another_root_is_refused():
    verdict = verify_enclave_evidence(snp_evidence(certs={"vcek": VCEK, "ask": ASK, "ark": ASK}),
                                      expected_nonce=NONCE, policy=EvidencePolicy(), now=SNP_NOW)

    assert not verdict.ok and any("pinned AMD root" in p for p in verdict.problems)


@pytest.mark.parametrize("certificates", [
    b64(cert_table({"vcek": VCEK, "ask": ASK})),  # no ARK
    b64(bytes(23)),  # no terminating entry
    b64(uuid.UUID(GUIDS["vcek"]).bytes + struct.pack("<II", 48, 10**6) + bytes(24)),  # past the end
    "not base64!",
], ids=["no ark", "no terminator", "entry past the end", "bad base64"])
def test_an_unreadable_certificate_table_is_a_refusal_not_an_exception(certificates):
    evidence = {**snp_evidence(), "certificates": certificates}

    verdict = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(), now=SNP_NOW)

    assert not verdict.ok and verdict.problems[0].startswith("unreadable evidence")


def test_the_certificate_table_is_read_as_the_ghcb_spec_lays_it_out():
    table = cert_table({"ark": ARK, "vcek": VCEK, "ask": ASK})

    assert snp_certificate_table(table) == {"vcek": VCEK, "ask": ASK, "ark": ARK}
    with pytest.raises(EvidenceFormatError):
        snp_certificate_table(table[:30])


def test_a_real_tdx_quote_verifies_with_dcap_and_is_refused_only_for_the_binding():
    verdict = verify_enclave_evidence(tdx_evidence(), expected_nonce=NONCE, policy=EvidencePolicy(), now=TDX_NOW)

    assert not verdict.ok and verdict.kind == "tdx"
    assert verdict.problems == ("REPORT_DATA is not the expected nonce binding",)


def test_a_tdx_quote_with_the_real_clock_is_refused_for_its_expired_collateral():
    verdict = verify_enclave_evidence(tdx_evidence(), expected_nonce=NONCE, policy=EvidencePolicy(),
                                      now=datetime.now(timezone.utc))

    assert any(p.startswith("dcap-qvl refused the quote") for p in verdict.problems)


def test_a_flipped_byte_of_the_tdx_quote_is_refused():
    quote = bytearray(TDX_QUOTE)
    quote[48 + 136] ^= 1  # MRTD, inside the signed TD report

    verdict = verify_enclave_evidence(tdx_evidence(bytes(quote)), expected_nonce=NONCE, policy=EvidencePolicy(),
                                      now=TDX_NOW)

    assert not verdict.ok and any("dcap-qvl refused" in p for p in verdict.problems)


@pytest.mark.parametrize("change, problem", [
    (lambda e: {**e, "extra": 1}, "unreadable evidence"),
    (lambda e: {**e, "version": 2}, "unreadable evidence"),
    (lambda e: {**e, "signing_key": b64(bytes(31))}, "unreadable evidence"),
    (lambda e: {**e, "kind": "cca"}, "not one this verifier knows"),
    (lambda e: "evidence", "not one this verifier knows"),
], ids=["unknown field", "version", "short signing key", "unknown kind", "not an object"])
def test_malformed_hardware_evidence_is_refused_with_a_reason(change, problem):
    verdict = verify_enclave_evidence(change(tdx_evidence()), expected_nonce=NONCE, policy=EvidencePolicy(),
                                      now=TDX_NOW)

    assert not verdict.ok and problem in verdict.problems[0]


def test_the_allowlists_apply_to_hardware_evidence_too():
    policy = EvidencePolicy(allowed_model_digests={"sha256:" + "00" * 32}, allowed_code_measurements={"other"})

    verdict = verify_enclave_evidence(tdx_evidence(), expected_nonce=NONCE, policy=policy, now=TDX_NOW)

    assert f"model digest {MODEL} is not allowed" in verdict.problems
    assert f"code measurement {CODE!r} is not allowed" in verdict.problems


def test_simulated_evidence_is_refused_unless_allowed_and_then_verifies():
    enclave = SimulatedEnclave()
    evidence = enclave.evidence(model_digest=MODEL, code_measurement=CODE, nonce=NONCE)

    refused = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(), now=TDX_NOW)
    allowed = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(allow_simulated=True),
                                      now=TDX_NOW)
    stale = verify_enclave_evidence(evidence, expected_nonce=bytes(32), policy=EvidencePolicy(allow_simulated=True),
                                    now=TDX_NOW)

    assert refused.problems == ("simulated enclave: refused unless allowed",) and refused.simulated
    assert allowed.ok and allowed.enclave_key == enclave.public_key and allowed.signing_key == enclave.signing_key
    assert not stale.ok


def test_gpu_evidence_runs_nvidias_checks_and_must_answer_the_same_challenge():
    evidence = {**tdx_evidence(), "gpus": [{"report": GPU_REPORT_HEX, "certificates": GPU_CHAIN_PEM}]}

    verdict = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(), now=TDX_NOW)

    # The real H100 report verifies up to NVIDIA's pinned root; its SPDM nonce is NVIDIA's sample
    # nonce, not SHA-256 of our report data, so it is refused for exactly that.
    gpu_problems = [p for p in verdict.problems if p.startswith("GPU 0: ")]
    assert len(gpu_problems) == 1 and "is not the expected nonce" in gpu_problems[0]


def test_a_flipped_byte_of_the_gpu_report_breaks_its_signature():
    report = bytearray.fromhex(GPU_REPORT_HEX)
    report[1000] ^= 1  # inside a measurement block the response signs
    evidence = {**tdx_evidence(), "gpus": [{"report": report.hex(), "certificates": GPU_CHAIN_PEM}]}

    verdict = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(), now=TDX_NOW)

    assert any(p.startswith("GPU 0: report signature does not verify") for p in verdict.problems)


@pytest.mark.parametrize("gpus", [{"report": "00"}, [{"report": "00"}], [{"report": 1, "certificates": ""}]],
                         ids=["not a list", "no certificates", "report not text"])
def test_malformed_gpu_evidence_is_refused_as_unreadable(gpus):
    verdict = verify_enclave_evidence({**tdx_evidence(), "gpus": gpus}, expected_nonce=NONCE,
                                      policy=EvidencePolicy(), now=TDX_NOW)

    assert not verdict.ok and verdict.problems[0].startswith("unreadable evidence")
