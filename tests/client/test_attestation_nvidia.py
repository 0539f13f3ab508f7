"""The Hopper verifier against NVIDIA's sample H100 report, its real device chain, and forgeries.

Expected values were read off the files with `xxd` and `openssl x509 -text`, not with the module
under test (tests/data/attestation/README.md, "nvidia/"). Offsets are into the decoded report:
request 0-36, response header 37-44, 64 measurement blocks of 55 bytes from 45, the responder's
nonce at 3565, opaque data 3599-4020, the signature 4021-4116.
"""

from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from client.attestation.nvidia import (
    NVIDIA_DEVICE_ROOT_SHA256, GpuCertificateError, GpuEvidenceError, GpuMalformedReportError,
    GpuPolicy, GpuUnsupportedReportError, leaf_fwid, parse_attestation_report, verify_evidence,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "attestation" / "nvidia"
REPORT_HEX = (DATA / "hopperAttestationReport.txt").read_text()
REPORT = bytes.fromhex(REPORT_HEX)
CHAIN = (DATA / "hopperCertChain.txt").read_bytes()  # leaf first, NVIDIA's root last
ROOT = (DATA / "verifier_device_root.pem").read_bytes()
CHAIN_WITHOUT_ROOT = b"".join(cert.public_bytes(Encoding.PEM)
                              for cert in x509.load_pem_x509_certificates(CHAIN)[:-1])
SIGNED_SIZE = len(REPORT) - 96

# All five certificates are valid until 9999-12-31; the latest start is the Provisioner ICA's,
# 2022-03-01. NVIDIA's own tests pair this sample with NONCE, driver 550.90.07 and VBIOS
# 96.00.9F.00.01 (nvtrust MockGpuEvidenceData).
INSIDE_VALIDITY = datetime(2030, 1, 1, tzinfo=timezone.utc)
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")  # 4-35
RESPONDER_NONCE = "b4b8a06aaaa35542839388e159d447a5d6f6194998fd86513e2d591ccf640985"
MEASUREMENT_2 = ("8048dfd18fe229bf16eb9d30cca0f11a24dafe6eb731de1462984645a0b189b7"
                 "7c4e4e17de727a5e19e3d07de51da338")  # bytes 107-154
FWID = ("f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f72754"
        "94ba94bb5cdfdb3055ee051762b1f75d")  # opaque field 20, bytes 3968-4015
DRIVER, VBIOS = "550.90.07", "96.00.9F.00.01"  # opaque fields 3 (at 3669) and 6 (at 3603)


def verify(report=REPORT_HEX, chain=CHAIN, root=ROOT, *, policy=None, now=INSIDE_VALIDITY):
    return verify_evidence(report, chain, root, policy=policy or GpuPolicy(), now=now)


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


def test_it_decodes_the_request_the_measurements_and_the_opaque_data_of_the_sample():
    report = parse_attestation_report(REPORT)

    request = report.request
    assert (request.spdm_version, request.attributes, request.operation) == (0x11, 0x01, 0xFF)
    assert report.nonce == NONCE and request.slot_id == 0
    assert report.spdm_version == 0x11 and report.responder_nonce.hex() == RESPONDER_NONCE
    assert sorted(report.measurements) == list(range(1, 65))
    assert all(len(block.value) == 48 and block.value_type == 1 and not block.raw_bit_stream
               for block in report.measurements.values())  # SHA-384 digests of firmware
    assert report.measurements[1].value == bytes(48)
    assert report.measurements[2].value.hex() == MEASUREMENT_2
    assert report.driver_version == DRIVER and report.vbios_version == VBIOS
    assert report.fwid.hex() == FWID == leaf_fwid(x509.load_pem_x509_certificates(CHAIN)[0]).hex()
    assert (report.opaque_text(17), report.opaque_text(18), report.opaque_text(15)) == \
        ("1010", "0200", "882")  # project, project SKU, chip SKU: they name the VBIOS RIM
    assert report.signed_bytes == REPORT[:SIGNED_SIZE] and report.signature == REPORT[-96:]


def test_the_sample_verifies_against_nvidias_chain_with_a_policy_naming_what_it_holds():
    policy = GpuPolicy(expected_nonce=NONCE, allowed_driver_versions=frozenset({DRIVER}),
                       allowed_vbios_versions=frozenset({VBIOS.lower()}),
                       expected_measurements={2: MEASUREMENT_2.upper(), 9: "00" * 48})

    verdict = verify(policy=policy)

    assert (verdict.signature_ok, verdict.chain_ok, verdict.fwid_ok) == (True, True, True)
    assert verdict.ok and verdict.problems == ()


@pytest.mark.parametrize("report", [REPORT_HEX, REPORT_HEX.encode(), REPORT,
                                    REPORT_HEX.upper() + "\n"])
def test_it_reads_the_report_as_hex_text_or_raw_bytes(report):
    assert verify(report, policy=GpuPolicy(expected_nonce=NONCE)).ok


def test_the_chain_may_leave_out_the_root_the_caller_pins():
    assert verify(chain=CHAIN_WITHOUT_ROOT).ok


def test_the_pinned_fingerprint_is_the_shipped_device_roots():
    root = x509.load_pem_x509_certificate(ROOT)

    assert root.fingerprint(hashes.SHA256()).hex() == NVIDIA_DEVICE_ROOT_SHA256
    assert root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"


def test_another_nonce_is_refused_while_everything_else_verifies():
    verdict = verify(policy=GpuPolicy(expected_nonce=bytes(32)))

    assert verdict.signature_ok and verdict.chain_ok and not verdict.ok
    assert verdict.problems == (f"request nonce {NONCE.hex()} is not the expected nonce",)


@pytest.mark.parametrize("policy, problem", [
    (GpuPolicy(allowed_driver_versions=frozenset({"550.90.08"})), "driver version 550.90.07"),
    (GpuPolicy(allowed_vbios_versions=frozenset({"96.00.9F.00.02"})), "VBIOS version 96.00"),
    (GpuPolicy(expected_measurements={2: "00" * 48}), f"measurement 2 is {MEASUREMENT_2}"),
    (GpuPolicy(expected_measurements={65: "00" * 48}), "measurement 65 is absent"),
])
def test_it_refuses_versions_and_measurements_the_policy_does_not_allow(policy, problem):
    verdict = verify(policy=policy)

    assert verdict.signature_ok and verdict.chain_ok
    assert not verdict.ok and len(verdict.problems) == 1 and problem in verdict.problems[0]


@pytest.mark.parametrize("settings, error", [
    ({"expected_nonce": b"nonce"}, ValueError),
    ({"allowed_driver_versions": DRIVER}, TypeError),
    ({"expected_measurements": {2: "not hex"}}, ValueError),
])
def test_a_policy_that_could_not_match_as_meant_is_refused_when_built(settings, error):
    with pytest.raises(error):
        GpuPolicy(**settings)


@pytest.mark.parametrize("offset", [
    4, 35,  # the request nonce
    36,  # the request's slot id
    40,  # the response's Param2
    107, 154,  # measurement 2's value
    45 + 55 * 63 + 7,  # measurement 64's value (all zero)
    3565, 3596,  # the responder's nonce
    3603, 3669,  # VBIOS and driver versions
    3968,  # the FWID
    SIGNED_SIZE - 1,  # the last signed byte
])
def test_flipping_a_byte_of_the_signed_part_breaks_the_signature(offset):
    verdict = verify(flipped(REPORT, offset))

    assert not verdict.signature_ok and verdict.chain_ok and not verdict.ok
    assert "report signature does not verify with the GH100 A01 GSP FMC LF key" in \
        verdict.problems


def test_bytes_sampled_across_the_signed_part_cannot_change_unnoticed():
    # Every 7th byte: coprime with the 55-byte blocks, so each field of a block is hit.
    refused_unread = set()
    for offset in range(0, SIGNED_SIZE, 7):
        try:
            verdict = verify(flipped(REPORT, offset))
        except GpuEvidenceError:
            refused_unread.add(offset)  # a version, code or length it will not read at all
            continue
        assert not verdict.signature_ok, f"byte {offset} changed without breaking the signature"
    assert {0, 42} <= refused_unread and len(refused_unread) < 100


@pytest.mark.parametrize("offset", [SIGNED_SIZE, SIGNED_SIZE + 47, SIGNED_SIZE + 48,
                                    len(REPORT) - 1])
def test_flipping_a_byte_of_r_or_s_breaks_the_signature(offset):
    verdict = verify(flipped(REPORT, offset))

    assert not verdict.signature_ok and verdict.chain_ok and not verdict.ok


@pytest.mark.parametrize("data", [b"", REPORT[:36], REPORT[:37 + 8], REPORT[:-1],
                                  REPORT[:SIGNED_SIZE], REPORT + b"\0"])
def test_truncated_or_overlong_input_raises(data):
    with pytest.raises(GpuMalformedReportError):
        parse_attestation_report(data)


@pytest.mark.parametrize("offset, value, repeated", [
    (100, 1, "measurement index 1"),  # block 2 renumbered 1
    (3599, 14, "opaque field 14"),  # the VBIOS field (the first) retyped as the board id
])
def test_a_report_stating_one_measurement_or_field_twice_raises(offset, value, repeated):
    # Two values under one name would let each reader pick the one it prefers.
    with pytest.raises(GpuMalformedReportError, match=f"{repeated} appears twice"):
        parse_attestation_report(REPORT[:offset] + bytes([value]) + REPORT[offset + 1:])


@pytest.mark.parametrize("report", [REPORT_HEX[:-1], REPORT_HEX[:100] + "zz" + REPORT_HEX[102:]])
def test_text_that_is_not_whole_hex_raises(report):
    with pytest.raises(GpuMalformedReportError):
        verify(report)


@pytest.mark.parametrize("offset, value", [(0, 0x12), (37, 0x12), (1, 0x81), (38, 0x7F),
                                           (2, 0x00), (46, 0x02)])
def test_it_refuses_spdm_versions_messages_and_formats_it_does_not_decode(offset, value):
    # 1.2 (signed differently), GET_DIGESTS, ERROR, no signature requested, block 1 not DMTF.
    with pytest.raises(GpuUnsupportedReportError):
        parse_attestation_report(REPORT[:offset] + bytes([value]) + REPORT[offset + 1:])


def test_certificates_that_are_not_pem_raise_and_now_must_carry_a_time_zone():
    with pytest.raises(GpuCertificateError, match="certificate chain"):
        verify(chain=b"not a certificate")
    with pytest.raises(GpuCertificateError, match="device root"):
        verify(root=x509.load_pem_x509_certificate(ROOT).public_bytes(Encoding.DER))
    with pytest.raises(ValueError):
        verify(now=datetime(2030, 1, 1))


@pytest.mark.parametrize("now, expired", [
    (datetime(2021, 6, 1, tzinfo=timezone.utc),
     {"NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity", "NVIDIA Device Identity CA"}),
    (datetime(2022, 2, 1, tzinfo=timezone.utc), {"NVIDIA GH100 Provisioner ICA 1"}),
    (datetime(2019, 1, 1, tzinfo=timezone.utc),
     {"GH100 A01 GSP FMC LF", "GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1",
      "NVIDIA GH100 Identity", "NVIDIA Device Identity CA"}),
])
def test_a_time_before_a_certificates_validity_fails_the_chain(now, expired):
    verdict = verify(now=now)

    assert verdict.signature_ok and not verdict.chain_ok and not verdict.ok
    assert {problem.split(" is not valid at ")[0] for problem in verdict.problems} == expired


# A chain of our own, shaped like NVIDIA's: ECDSA P-384 certificates, the leaf carrying the
# sample's FWID extension, and the sample report re-signed with the forged leaf key.

def _certificate(subject, issuer, public_key, signing_key, *, ca, path_length=None,
                 extensions=(), not_after=INSIDE_VALIDITY + timedelta(days=1)):
    if isinstance(subject, str):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(INSIDE_VALIDITY - timedelta(days=1)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                              critical=True))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, x509.KeyUsage))
    return builder.sign(signing_key, hashes.SHA384())


def key_usage(**allowed) -> x509.KeyUsage:
    usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
              "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{usage: allowed.get(usage, False) for usage in usages})


@lru_cache(maxsize=None)
def foreign_root(path_length=None):
    """A freshly generated, self-signed P-384 CA."""
    key = ec.generate_private_key(ec.SECP384R1())
    return _certificate("Mallory Device Identity CA", None, key.public_key(), key, ca=True,
                        path_length=path_length), key


def forged_evidence(*, root_path_length=None, intermediate_is_ca=True, intermediate_usage=(),
                    leaf_usage=(), fwid_extension=None, **leaf_settings):
    root, root_key = foreign_root(root_path_length)
    ica_key, leaf_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(2))
    ica = _certificate("Mallory ICA", root.subject, ica_key.public_key(), root_key,
                       ca=intermediate_is_ca, extensions=intermediate_usage)
    sample_leaf = x509.load_pem_x509_certificates(CHAIN)[0]
    fwid = fwid_extension or sample_leaf.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("2.23.133.5.4.1")).value
    leaf = _certificate("Mallory GSP", ica.subject, leaf_key.public_key(), ica_key, ca=False,
                        extensions=[fwid, *leaf_usage], **leaf_settings)
    r, s = decode_dss_signature(leaf_key.sign(REPORT[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    report = REPORT[:SIGNED_SIZE] + r.to_bytes(48, "big") + s.to_bytes(48, "big")
    chain = b"".join(cert.public_bytes(Encoding.PEM) for cert in (leaf, ica, root))
    return report, chain, root.public_bytes(Encoding.PEM)


def pinning(root_pem: bytes, **settings) -> GpuPolicy:
    fingerprint = x509.load_pem_x509_certificate(root_pem).fingerprint(hashes.SHA256()).hex()
    return GpuPolicy(trusted_root_sha256=frozenset({fingerprint}), **settings)


def test_a_foreign_root_fails_nvidias_chain_even_when_the_caller_pins_it():
    foreign = foreign_root()[0].public_bytes(Encoding.PEM)

    for policy in (GpuPolicy(), pinning(foreign)):
        verdict = verify(root=foreign, policy=policy)
        assert verdict.signature_ok and not verdict.chain_ok and not verdict.ok
        assert ("NVIDIA Device Identity CA names another issuer than "
                "Mallory Device Identity CA") in verdict.problems
    assert any("is not a pinned NVIDIA root" in problem
               for problem in verify(root=foreign).problems)


def test_a_forged_root_carrying_nvidias_name_fails_the_signature_of_the_cert_below_it():
    key = ec.generate_private_key(ec.SECP384R1())
    nvidia_name = x509.load_pem_x509_certificate(ROOT).subject
    impostor = _certificate(nvidia_name, None, key.public_key(), key,
                            ca=True).public_bytes(Encoding.PEM)

    # With the evidence's own copy of the root, that copy is what the impostor cannot sign.
    for chain, first_signed_by_it in ((CHAIN, "NVIDIA Device Identity CA"),
                                      (CHAIN_WITHOUT_ROOT, "NVIDIA GH100 Identity")):
        verdict = verify(chain=chain, root=impostor, policy=pinning(impostor))
        assert verdict.signature_ok and not verdict.chain_ok
        assert verdict.problems == (f"{first_signed_by_it} signature does not verify with the "
                                    "NVIDIA Device Identity CA key (ECDSA P-384, SHA-384)",)


def test_a_whole_forged_chain_is_refused_unless_its_root_is_pinned():
    report, chain, root = forged_evidence()

    refused = verify(report, chain, root, policy=GpuPolicy(expected_nonce=NONCE))
    accepted = verify(report, chain, root, policy=pinning(root, expected_nonce=NONCE))

    assert refused.signature_ok and not refused.chain_ok and len(refused.problems) == 1
    assert "is not a pinned NVIDIA root" in refused.problems[0]
    assert accepted.ok, accepted.problems


def test_a_genuine_root_above_a_forged_chain_fails_it():
    report, chain, _ = forged_evidence()

    verdict = verify(report, chain, ROOT)

    assert verdict.signature_ok and not verdict.chain_ok
    assert "Mallory Device Identity CA names another issuer than NVIDIA Device Identity CA" in \
        verdict.problems


@pytest.mark.parametrize("settings, problem", [
    ({"intermediate_is_ca": False}, "Mallory ICA is not a CA certificate"),
    ({"root_path_length": 0}, "Mallory Device Identity CA allows 0 CAs below it"),
    ({"intermediate_usage": [key_usage(digital_signature=True)]},
     "Mallory ICA may not sign certificates (key usage)"),
    ({"leaf_usage": [key_usage(key_cert_sign=True)]}, "Mallory GSP may not sign (key usage)"),
])
def test_certificates_used_beyond_their_constraints_fail_the_chain(settings, problem):
    report, chain, root = forged_evidence(**settings)
    allowed = forged_evidence(intermediate_usage=[key_usage(key_cert_sign=True)],
                              leaf_usage=[key_usage(digital_signature=True)],
                              root_path_length=1)

    verdict = verify(report, chain, root, policy=pinning(root))

    assert verdict.signature_ok and not verdict.chain_ok and verdict.problems == (problem,)
    assert verify(*allowed, policy=pinning(allowed[2])).ok


def test_a_time_after_a_certificates_validity_fails_the_chain():
    report, chain, root = forged_evidence(not_after=INSIDE_VALIDITY)

    verdict = verify(report, chain, root, policy=pinning(root),
                     now=INSIDE_VALIDITY + timedelta(hours=1))

    assert not verdict.chain_ok and len(verdict.problems) == 1
    assert verdict.problems[0].startswith("Mallory GSP is not valid at 2030-01-01T01:00:00")


def test_a_leaf_certified_for_other_firmware_fails_the_fwid_binding():
    # SEQUENCE { SEQUENCE { id-sha384, OCTET STRING (48 zero bytes) } }
    other = bytes.fromhex("303f303d0609608648016503040202" "0430") + bytes(48)
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), other)
    report, chain, root = forged_evidence(fwid_extension=extension)

    verdict = verify(report, chain, root, policy=pinning(root))

    assert verdict.signature_ok and verdict.chain_ok and not verdict.fwid_ok
    assert verdict.problems == (f"report FWID {FWID} differs from the Mallory GSP "
                                f"certificate's {'00' * 48}",)
