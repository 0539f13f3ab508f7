"""The SEV-SNP verifier against a real Milan report, its real AMD chain, and forgeries of both.

The vector (tests/data/attestation/README.md) is a guest launched with DEBUG allowed, so a strict
policy must refuse it while every signature still verifies. Expected values below were read off
the files with `xxd` and `openssl asn1parse`, not with the module under test.
"""

import hashlib
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from client.attestation.snp import (
    MILAN_ARK_SHA256, SIGNED_SIZE, SnpCertificateError, SnpError, SnpMalformedReportError,
    SnpPolicy, SnpReportSizeError, SnpUnsupportedReportError, TcbVersion, parse_report,
    verify_report,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "attestation" / "snp"
REPORT = (DATA / "attestation.bin").read_bytes()
VCEK = (DATA / "kds_vcek.der").read_bytes()
ASK = (DATA / "milan_ask.der").read_bytes()
ARK = (DATA / "milan_ark.der").read_bytes()

# VCEK valid 2026-08-28..2033-08-28; ASK and ARK 2020-10-22..2045-10-22.
INSIDE_VALIDITY = datetime(2030, 1, 1, tzinfo=timezone.utc)
# Bytes 0x90..0xBF of attestation.bin.
MEASUREMENT = ("b07af9620f3b839b47996422ddec6058338951d984e3121151"
               "31ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01")
NONCE = bytes([1, 2, 3, 4, 5]).ljust(64, b"\0")  # bytes 0x50..0x8F
# The VCEK's blSPL, teeSPL, snpSPL and ucodeSPL extensions: 02 01 02, 02 01 00, 02 01 05, 02 01 44.
VECTOR_TCB = TcbVersion(bootloader=2, tee=0, snp=5, microcode=0x44)
PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def verify(report=REPORT, vcek=VCEK, ask=ASK, ark=ARK, *, policy=None, now=INSIDE_VALIDITY):
    return verify_report(report, vcek, ask, ark, policy=policy or SnpPolicy(), now=now)


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


def test_it_decodes_the_fields_of_the_milan_vector():
    report = parse_report(REPORT)

    assert report.version == 2
    assert report.signature_algo == 1  # ECDSA P-384 with SHA-384
    assert report.policy == 0x0B0000  # SMT, the must-be-one bit 17, DEBUG
    assert report.guest_policy.debug_allowed and report.guest_policy.smt_allowed
    assert not report.guest_policy.migrate_ma_allowed
    assert report.reported_tcb == VECTOR_TCB == report.current_tcb == report.launch_tcb
    assert report.measurement.hex() == MEASUREMENT
    assert report.report_data == NONCE
    assert report.chip_id.hex().startswith("3ac3fe21e13fb099")  # the VCEK's hwID extension
    assert report.chip_id.hex().endswith("8b006b5d")
    assert report.signing_key == 0 and not report.mask_chip_id  # signed by a VCEK
    assert report.cpuid_family is None  # version 2 has no CPUID fields
    assert report.signed_bytes == REPORT[:0x2A0]
    assert 0 < report.signature_r < 2**384 and 0 < report.signature_s < 2**384


def test_the_default_policy_refuses_the_vector_only_because_it_allows_debugging():
    verdict = verify()

    assert (verdict.signature_ok, verdict.chain_ok, verdict.tcb_ok) == (True, True, True)
    assert verdict.problems == ("guest policy allows debugging",)
    assert not verdict.ok


def test_a_policy_allowing_debug_with_the_right_measurement_nonce_and_tcb_accepts_it():
    policy = SnpPolicy(allow_debug=True, allowed_measurements=frozenset({MEASUREMENT.upper()}),
                       expected_report_data=NONCE, minimum_tcb=VECTOR_TCB)

    verdict = verify(policy=policy)

    assert verdict.ok and verdict.problems == ()


@pytest.mark.parametrize("policy, problem", [
    (SnpPolicy(allow_debug=True, allowed_measurements=frozenset({"00" * 48})), "measurement"),
    (SnpPolicy(allow_debug=True, expected_report_data=bytes(64)), "REPORT_DATA"),
    (SnpPolicy(allow_debug=True, minimum_tcb=TcbVersion(bootloader=2, tee=0, snp=6, microcode=0)),
     "below the minimum"),
])
def test_it_refuses_what_the_policy_does_not_allow(policy, problem):
    verdict = verify(policy=policy)

    assert verdict.signature_ok and verdict.chain_ok
    assert not verdict.ok and len(verdict.problems) == 1 and problem in verdict.problems[0]


@pytest.mark.parametrize("settings, error", [
    ({"expected_report_data": b"nonce"}, ValueError),
    ({"allowed_measurements": MEASUREMENT}, TypeError),
])
def test_a_policy_that_could_not_match_as_meant_is_refused_when_built(settings, error):
    with pytest.raises(error):
        SnpPolicy(**settings)


def test_the_pinned_milan_ark_fingerprint_is_the_shipped_arks():
    assert hashlib.sha256(ARK).hexdigest() == MILAN_ARK_SHA256


@pytest.mark.parametrize("offset", [0x04, 0x08, 0x0A, 0x38, 0x50, 0x8F, 0x90, 0xBF, 0x140,
                                    0x180, 0x1A0, 0x1DF, 0x1E8, 0x1F0, SIGNED_SIZE - 1])
def test_flipping_a_byte_of_the_signed_part_breaks_the_signature(offset):
    # guest_svn, policy (abi, debug byte), current_tcb, report_data, measurement, report_id,
    # reported_tcb, chip_id, firmware version, launch_tcb, the last signed byte.
    verdict = verify(flipped(REPORT, offset), policy=SnpPolicy(allow_debug=True))

    assert not verdict.signature_ok and not verdict.ok
    assert "report signature does not verify with the VCEK key" in verdict.problems


def test_no_single_byte_of_the_signed_part_can_change_unnoticed():
    refused_unread = set()
    for offset in range(SIGNED_SIZE):
        try:
            verdict = verify(flipped(REPORT, offset))
        except SnpError:
            refused_unread.add(offset)
            continue
        assert not verdict.signature_ok, f"byte {offset:#x} changed without breaking the signature"
    # Only VERSION and SIGNATURE_ALGO turn into values it refuses to read at all.
    assert refused_unread == {0, 1, 2, 3, 0x34, 0x35, 0x36, 0x37}


@pytest.mark.parametrize("offset", [0x2A0, 0x2CF, 0x2D0, 0x2E8, 0x317, 0x32F])
def test_flipping_a_byte_of_r_or_s_or_their_padding_breaks_the_signature(offset):
    verdict = verify(flipped(REPORT, offset))

    assert not verdict.signature_ok and verdict.chain_ok


@pytest.mark.parametrize("offset", [0x330, 0x49F])
def test_junk_in_the_reserved_bytes_after_the_signature_is_refused(offset):
    with pytest.raises(SnpMalformedReportError):
        parse_report(flipped(REPORT, offset))


@pytest.mark.parametrize("data", [b"", REPORT[:-1], REPORT + b"\0", REPORT * 2])
def test_it_refuses_input_that_is_not_one_report_long(data):
    with pytest.raises(SnpReportSizeError):
        verify(data)


@pytest.mark.parametrize("offset, value", [(0x00, 1), (0x00, 6), (0x34, 2), (0x34, 0)])
def test_it_refuses_report_versions_and_signature_algorithms_it_does_not_know(offset, value):
    data = REPORT[:offset] + value.to_bytes(4, "little") + REPORT[offset + 4:]

    with pytest.raises(SnpUnsupportedReportError):
        parse_report(data)


def test_a_version_3_report_from_turin_is_refused_and_one_from_milan_decodes_its_cpuid():
    version_3 = (3).to_bytes(4, "little") + REPORT[4:]

    with pytest.raises(SnpUnsupportedReportError, match="CPUID family"):
        parse_report(version_3[:0x188] + bytes([0x1A, 0x02, 0x00]) + version_3[0x18B:])
    milan = parse_report(version_3[:0x188] + bytes([0x19, 0x01, 0x01]) + version_3[0x18B:])
    assert (milan.cpuid_family, milan.cpuid_model, milan.cpuid_stepping) == (0x19, 0x01, 0x01)


def test_certificates_that_are_not_der_raise():
    with pytest.raises(SnpCertificateError, match="ASK"):
        verify(ask=b"-----BEGIN CERTIFICATE-----")


def test_now_must_carry_a_time_zone():
    with pytest.raises(ValueError):
        verify(now=datetime(2030, 1, 1))


# A chain of our own, shaped like AMD's: RSA-PSS certificates and a VCEK with the KDS extensions.

def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, *, ca, extensions=()):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(INSIDE_VALIDITY - timedelta(days=1))
               .not_valid_after(INSIDE_VALIDITY + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    for oid, value in extensions:
        extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing_key, hashes.SHA384(), rsa_padding=PSS_SHA384)


@lru_cache(maxsize=None)
def forged_root():
    """A self-signed RSA root carrying AMD's Milan ARK name, and an ASK under it."""
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    amd_ark_name = x509.load_der_x509_certificate(ARK).subject
    ark = _certificate(amd_ark_name, amd_ark_name, ark_key.public_key(), ark_key, ca=True)
    ask = _certificate(_name("SEV-Milan"), amd_ark_name, ask_key.public_key(), ark_key, ca=True)
    return ark, ask, ask_key


def forged_chain(report: bytes, *, tcb: TcbVersion, hwid: bytes):
    """A VCEK for `tcb` and `hwid` under forged_root(), and `report` re-signed with its key."""
    ark, ask, ask_key = forged_root()
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    extensions = [("1.3.6.1.4.1.3704.1.3.1", svn(tcb.bootloader)),
                  ("1.3.6.1.4.1.3704.1.3.2", svn(tcb.tee)),
                  ("1.3.6.1.4.1.3704.1.3.3", svn(tcb.snp)),
                  ("1.3.6.1.4.1.3704.1.3.8", svn(tcb.microcode)),
                  ("1.3.6.1.4.1.3704.1.4", hwid)]
    vcek = _certificate(_name("SEV-VCEK"), ask.subject, vcek_key.public_key(), ask_key, ca=False,
                        extensions=extensions)
    r, s = decode_dss_signature(vcek_key.sign(report[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    signed = report[:SIGNED_SIZE] + r.to_bytes(72, "little") + s.to_bytes(72, "little")
    signed += bytes(len(report) - len(signed))
    return signed, *(cert.public_bytes(Encoding.DER) for cert in (vcek, ask, ark))


def svn(value: int) -> bytes:
    """An SVN as KDS encodes it: a DER INTEGER, with a leading zero byte from 0x80 up."""
    return b"\x02\x02\x00" + bytes([value]) if value >= 0x80 else b"\x02\x01" + bytes([value])


def pinning(ark_der: bytes, **policy) -> SnpPolicy:
    fingerprint = hashlib.sha256(ark_der).hexdigest()
    return SnpPolicy(allow_debug=True, trusted_ark_sha256=frozenset({fingerprint}), **policy)


def test_a_forged_ark_with_amds_name_fails_the_chain_even_when_pinned():
    forged_ark = forged_root()[0].public_bytes(Encoding.DER)

    for policy in (SnpPolicy(), pinning(forged_ark)):
        verdict = verify(ark=forged_ark, policy=policy)
        assert verdict.signature_ok and not verdict.chain_ok and not verdict.ok
        assert "ASK signature does not verify with the ARK key" in verdict.problems
    assert any("not a pinned AMD root" in problem for problem in verify(ark=forged_ark).problems)


def test_a_whole_forged_chain_is_refused_unless_its_root_is_pinned():
    report, vcek, ask, ark = forged_chain(REPORT, tcb=VECTOR_TCB, hwid=REPORT[0x1A0:0x1E0])

    refused = verify(report, vcek, ask, ark, policy=SnpPolicy(allow_debug=True))
    accepted = verify(report, vcek, ask, ark, policy=pinning(ark))

    assert refused.signature_ok and not refused.chain_ok and len(refused.problems) == 1
    assert accepted.ok, accepted.problems


def test_a_microcode_svn_from_0x80_up_is_read_from_its_two_byte_der_integer():
    tcb = TcbVersion(bootloader=9, tee=0, snp=23, microcode=0xD1)
    with_tcb = REPORT[:0x180] + bytes([9, 0, 0, 0, 0, 0, 23, 0xD1]) + REPORT[0x188:]

    report, vcek, ask, ark = forged_chain(with_tcb, tcb=tcb, hwid=REPORT[0x1A0:0x1E0])

    verdict = verify(report, vcek, ask, ark, policy=pinning(ark, minimum_tcb=tcb))
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("tcb, hwid, problem", [
    (TcbVersion(bootloader=2, tee=0, snp=4, microcode=0x44), None, "REPORTED_TCB"),
    (TcbVersion(bootloader=2, tee=0, snp=5, microcode=0x45), None, "REPORTED_TCB"),
    (VECTOR_TCB, bytes(64), "hwID"),
])
def test_a_vcek_issued_for_another_tcb_or_chip_is_refused(tcb, hwid, problem):
    report, vcek, ask, ark = forged_chain(REPORT, tcb=tcb, hwid=hwid or REPORT[0x1A0:0x1E0])

    verdict = verify(report, vcek, ask, ark, policy=pinning(ark))

    assert verdict.signature_ok and verdict.chain_ok and not verdict.tcb_ok
    assert len(verdict.problems) == 1 and problem in verdict.problems[0]


@pytest.mark.parametrize("signer_info, problem", [
    (0b010, "CHIP_ID is masked, so the report cannot be tied to the VCEK's chip"),
    (0b100, "report says it was signed by a VLEK, not a VCEK"),
])
def test_a_report_that_does_not_name_this_chip_and_its_vcek_is_refused(signer_info, problem):
    # Bits at 0x48: 0 AUTHOR_KEY_EN, 1 MASK_CHIP_ID, 4:2 SIGNING_KEY (0 VCEK, 1 VLEK).
    altered = REPORT[:0x48] + signer_info.to_bytes(4, "little") + REPORT[0x4C:]
    report, vcek, ask, ark = forged_chain(altered, tcb=VECTOR_TCB, hwid=REPORT[0x1A0:0x1E0])

    verdict = verify(report, vcek, ask, ark, policy=pinning(ark))

    assert verdict.signature_ok and verdict.chain_ok and not verdict.tcb_ok
    assert verdict.problems == (problem,)


def test_a_guest_that_allows_a_migration_agent_is_refused_unless_the_policy_allows_it():
    # POLICY bit 18 is MIGRATE_MA; a migration agent can read the guest's memory.
    policy = (int.from_bytes(REPORT[0x08:0x10], "little") | 1 << 18).to_bytes(8, "little")
    report, vcek, ask, ark = forged_chain(REPORT[:0x08] + policy + REPORT[0x10:], tcb=VECTOR_TCB,
                                          hwid=REPORT[0x1A0:0x1E0])

    refused = verify(report, vcek, ask, ark, policy=pinning(ark))
    accepted = verify(report, vcek, ask, ark, policy=pinning(ark, allow_migration_agent=True))

    assert refused.problems == ("guest policy allows a migration agent",)
    assert accepted.ok, accepted.problems


def test_swapping_the_ask_and_the_ark_fails_the_chain():
    verdict = verify(ask=ARK, ark=ASK)

    assert verdict.signature_ok and not verdict.chain_ok and not verdict.ok


@pytest.mark.parametrize("now, expired", [
    (datetime(2026, 8, 1, tzinfo=timezone.utc), {"VCEK"}),
    (datetime(2034, 1, 1, tzinfo=timezone.utc), {"VCEK"}),
    (datetime(2046, 1, 1, tzinfo=timezone.utc), {"VCEK", "ASK", "ARK"}),
    (datetime(2019, 1, 1, tzinfo=timezone.utc), {"VCEK", "ASK", "ARK"}),
])
def test_a_time_outside_a_certificates_validity_fails_the_chain(now, expired):
    verdict = verify(now=now, policy=SnpPolicy(allow_debug=True))

    assert verdict.signature_ok and not verdict.chain_ok and not verdict.ok
    assert {problem.split()[0] for problem in verdict.problems} == expired
