"""The DCAP quote verifier against real TDX and SGX quotes with Intel's real collateral.

The vectors (tests/data/attestation/README.md, "tdx/") were captured in 2025 and 2026 and their
collateral has since expired, so most tests pin `now` inside its validity window. Expected field
values below were read off the files with `xxd` at the offsets of Intel's quote layouts, not
with the module under test or dcap-qvl.
"""

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import dcap_qvl
import pytest

from client.attestation.tdx import (
    KNOWN_TCB_STATUSES, TRAILING_JUNK_PROBLEM, TdxCollateralError, TdxError, TdxPolicy,
    TdxQuoteError, verify_quote,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "attestation" / "tdx"
TDX_QUOTE = (DATA / "tdx_quote").read_bytes()
TDX_COLLATERAL = (DATA / "tdx_quote_collateral.json").read_text()
OUTDATED_QUOTE = (DATA / "tdx_quote_outdated").read_bytes()
OUTDATED_COLLATERAL = (DATA / "tdx_quote_outdated_collateral.json").read_text()
SGX_QUOTE = (DATA / "sgx_quote").read_bytes()
SGX_COLLATERAL = (DATA / "sgx_quote_collateral.json").read_text()

# Inside every validity window of each vector's collateral (see the README for the windows).
TDX_VALID_AT = datetime(2025, 6, 20, tzinfo=timezone.utc)
OUTDATED_VALID_AT = datetime(2026, 2, 19, tzinfo=timezone.utc)
SGX_VALID_AT = datetime(2025, 6, 20, tzinfo=timezone.utc)

# A version 4 quote: 48-byte header, then the TD quote body; offsets below are into the body.
V4_BODY = 48
V5_BODY = 48 + 6  # a version 5 quote puts a u16 body type and a u32 body size first
TD_ATTRIBUTES, MRTD, RTMR0, RTMR3, REPORT_DATA, TD_BODY_END = 120, 136, 328, 472, 520, 584
SGX_BODY = 48  # SGX report body: ATTRIBUTES at 48, MRENCLAVE 64, MRSIGNER 128, REPORTDATA 320

TDX_MRTD = ("91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
            "de03ae6dc5f87f27428b2538873118b7")
TDX_RTMR0 = ("44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c"
             "48aca29b220b80b6a540cf994b9bc9c0")
TDX_REPORT_DATA = bytes.fromhex(
    "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20")
# TDATTRIBUTES 0x10000000: SEPT_VE_DISABLE (bit 28) only; DEBUG (bit 0) clear.
TDX_ATTRIBUTES = bytes.fromhex("0000001000000000")
OUTDATED_MRTD = ("273828c46252fcbdd8ad2dd907130222b03466d52a2911d70c1a5950895d6bd1"
                 "ae451d382d5a9b1b4c0ed0e5ae9a3dbd")
SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
SGX_REPORT_DATA = b"Hello, world!".ljust(64, b"\0")
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
SGX_ONLY = TdxPolicy(allowed_tees=frozenset({"SGX"}))


def verify(quote=TDX_QUOTE, collateral=TDX_COLLATERAL, *, policy=None, now=TDX_VALID_AT):
    return verify_quote(quote, collateral, policy=policy or TdxPolicy(), now=now)


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1:]


def test_the_real_tdx_quote_verifies_as_up_to_date_inside_its_collateral_validity():
    verdict = verify()

    assert verdict.ok and verdict.quote_verified and verdict.problems == ()
    assert (verdict.tee, verdict.quote_version) == ("TDX", 4)
    assert verdict.tcb_status == "UpToDate" and verdict.advisory_ids == ()
    assert verdict.enclave is None


def test_it_exposes_the_td_report_fields_at_the_offsets_of_the_v4_layout():
    td = verify().td

    assert td.mr_td.hex() == TDX_MRTD == TDX_QUOTE[V4_BODY + MRTD:V4_BODY + MRTD + 48].hex()
    assert td.report_data == TDX_REPORT_DATA == TDX_QUOTE[V4_BODY + REPORT_DATA:V4_BODY + 584]
    assert td.rtmr[0].hex() == TDX_RTMR0
    assert td.rtmr[3] == TDX_QUOTE[V4_BODY + RTMR3:V4_BODY + REPORT_DATA] == bytes(48)
    assert td.td_attributes == TDX_ATTRIBUTES and not td.debug
    assert [len(value) for value in td.rtmr] == [48] * 4


def test_the_real_clock_refuses_it_because_its_collateral_expired():
    verdict = verify(now=datetime.now(timezone.utc))

    assert not verdict.ok and not verdict.quote_verified and verdict.tcb_status is None
    assert len(verdict.problems) == 1 and "CrlExpired" in verdict.problems[0]
    assert verdict.td.mr_td.hex() == TDX_MRTD  # still shown, for a person to read


@pytest.mark.parametrize("now, accepted, problem", [
    # The TCB info is issued at 10:16:03, the QE identity at 10:32:27, so the TCB info's issue
    # date alone is too early; the PCK CRL's nextUpdate (2025-07-19 10:00:35) ends the window.
    (datetime(2025, 6, 19, 10, 16, 3, tzinfo=timezone.utc), False, "issue date is in the future"),
    (datetime(2025, 6, 19, 10, 32, 26, tzinfo=timezone.utc), False, "issue date is in the future"),
    (datetime(2025, 6, 19, 10, 32, 27, tzinfo=timezone.utc), True, None),
    (datetime(2025, 7, 19, 10, 0, 34, tzinfo=timezone.utc), True, None),
    (datetime(2025, 7, 19, 10, 0, 35, tzinfo=timezone.utc), False, "CrlExpired"),
])
def test_it_accepts_the_quote_only_inside_the_collateral_window(now, accepted, problem):
    verdict = verify(now=now)

    assert verdict.ok is accepted
    if problem:
        assert len(verdict.problems) == 1 and problem in verdict.problems[0]


def test_the_outdated_quote_is_refused_because_no_tcb_level_matches_its_platform():
    verdict = verify(OUTDATED_QUOTE, OUTDATED_COLLATERAL, now=OUTDATED_VALID_AT)

    assert not verdict.ok and not verdict.quote_verified and verdict.tcb_status is None
    assert verdict.problems == ("dcap-qvl refused the quote: No matching TCB level found",)
    # Allowing every status cannot help: dcap-qvl found no level to give one (Intel's QVL
    # calls this TCB_NOT_SUPPORTED), not a level whose status the policy disliked.
    permissive = TdxPolicy(allowed_tcb_statuses=KNOWN_TCB_STATUSES)
    assert not verify(OUTDATED_QUOTE, OUTDATED_COLLATERAL, policy=permissive,
                      now=OUTDATED_VALID_AT).ok


def test_the_outdated_platforms_cpusvn_is_below_every_level_of_its_tcb_info():
    # Why the quote above has no status: the PCK certificate's CPUSVN must be >= a level's SGX
    # components, one by one, and component 7 is 3 where every level asks for 5.
    cpu_svn = dcap_qvl.parse_quote(OUTDATED_QUOTE).pck_extension().cpu_svn
    levels = json.loads(json.loads(OUTDATED_COLLATERAL)["tcb_info"])["tcbLevels"]

    assert cpu_svn[7] == 3
    for level in levels:
        required = [component["svn"] for component in level["tcb"]["sgxtcbcomponents"]]
        assert required[7] == 5 and any(have < need for have, need in zip(cpu_svn, required))


def test_the_outdated_quotes_v5_body_is_read_at_the_v5_offsets():
    verdict = verify(OUTDATED_QUOTE, OUTDATED_COLLATERAL, now=OUTDATED_VALID_AT)

    assert verdict.quote_version == 5 and struct.unpack_from("<H", OUTDATED_QUOTE, 48) == (3,)
    assert verdict.td.mr_td.hex() == OUTDATED_MRTD
    assert verdict.td.mr_td == OUTDATED_QUOTE[V5_BODY + MRTD:V5_BODY + MRTD + 48]
    assert verdict.td.report_data == OUTDATED_QUOTE[V5_BODY + REPORT_DATA:V5_BODY + TD_BODY_END]
    assert not verdict.td.debug


def test_the_sgx_quote_verifies_and_its_enclave_fields_come_out():
    verdict = verify(SGX_QUOTE, SGX_COLLATERAL, policy=SGX_ONLY, now=SGX_VALID_AT)

    assert verdict.quote_verified and (verdict.tee, verdict.quote_version) == ("SGX", 3)
    assert verdict.td is None
    enclave = verdict.enclave
    assert enclave.mr_enclave.hex() == SGX_MRENCLAVE == SGX_QUOTE[SGX_BODY + 64:SGX_BODY + 96].hex()
    assert enclave.mr_signer.hex() == SGX_MRSIGNER == SGX_QUOTE[SGX_BODY + 128:SGX_BODY + 160].hex()
    assert enclave.report_data == SGX_REPORT_DATA == SGX_QUOTE[SGX_BODY + 320:SGX_BODY + 384]
    # ATTRIBUTES.FLAGS 0x05: INIT and MODE64BIT; DEBUG (bit 1) clear.
    assert enclave.attributes == SGX_QUOTE[SGX_BODY + 48:SGX_BODY + 64]
    assert enclave.attributes[0] == 0x05 and not enclave.debug


def test_a_non_up_to_date_status_is_refused_by_default_and_accepted_when_allowed():
    # The SGX platform is ConfigurationAndSWHardeningNeeded: a real status other than UpToDate.
    refused = verify(SGX_QUOTE, SGX_COLLATERAL, policy=SGX_ONLY, now=SGX_VALID_AT)
    allowing = TdxPolicy(allowed_tees=frozenset({"SGX"}), allowed_tcb_statuses=frozenset(
        {"UpToDate", "ConfigurationAndSWHardeningNeeded"}))
    accepted = verify(SGX_QUOTE, SGX_COLLATERAL, policy=allowing, now=SGX_VALID_AT)

    assert refused.tcb_status == accepted.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert refused.advisory_ids == accepted.advisory_ids == SGX_ADVISORIES
    assert not refused.ok and len(refused.problems) == 1
    assert "TCB status ConfigurationAndSWHardeningNeeded" in refused.problems[0]
    assert accepted.ok, accepted.problems


def test_an_sgx_quote_is_refused_by_a_policy_that_expects_a_td():
    verdict = verify(SGX_QUOTE, SGX_COLLATERAL, policy=TdxPolicy(allowed_tcb_statuses=frozenset(
        {"ConfigurationAndSWHardeningNeeded"})), now=SGX_VALID_AT)

    assert verdict.quote_verified and not verdict.ok
    assert verdict.problems == ("the quote is SGX; the policy accepts ['TDX']",)


def test_a_v5_header_that_claims_sgx_over_a_td_body_is_refused_not_misread():
    claims_sgx = OUTDATED_QUOTE[:4] + bytes(4) + OUTDATED_QUOTE[8:]  # TEE type 0 is SGX

    verdict = verify(claims_sgx, OUTDATED_COLLATERAL, policy=TdxPolicy(allowed_tees=frozenset(
        {"SGX", "TDX"})), now=OUTDATED_VALID_AT)

    assert verdict.tee == "TDX" and verdict.td.mr_td.hex() == OUTDATED_MRTD
    assert not verdict.ok and not verdict.quote_verified


def test_a_policy_with_the_right_mrtd_and_report_data_accepts_the_quote():
    policy = TdxPolicy(allowed_mrtds=frozenset({TDX_MRTD.upper()}),
                       expected_report_data=TDX_REPORT_DATA)

    assert verify(policy=policy).ok


@pytest.mark.parametrize("policy, problem", [
    (TdxPolicy(allowed_mrtds=frozenset({"00" * 48})), f"MRTD {TDX_MRTD} is not allowed"),
    (TdxPolicy(allowed_mrtds=frozenset({OUTDATED_MRTD})), f"MRTD {TDX_MRTD} is not allowed"),
    (TdxPolicy(expected_report_data=bytes(64)), "REPORT_DATA is not the expected nonce binding"),
    (TdxPolicy(expected_report_data=flipped(TDX_REPORT_DATA, 63)),
     "REPORT_DATA is not the expected nonce binding"),
    (TdxPolicy(allowed_tcb_statuses=frozenset({"SWHardeningNeeded"})),
     "TCB status UpToDate is not one of ['SWHardeningNeeded']"),
])
def test_it_refuses_what_the_policy_does_not_allow(policy, problem):
    verdict = verify(policy=policy)

    assert verdict.quote_verified and not verdict.ok
    assert verdict.problems == (problem,)


@pytest.mark.parametrize("offset", [
    V4_BODY + 0,  # TEE_TCB_SVN
    V4_BODY + 16,  # MRSEAM
    V4_BODY + TD_ATTRIBUTES + 3,  # SEPT_VE_DISABLE's byte
    V4_BODY + MRTD, V4_BODY + MRTD + 47,
    V4_BODY + RTMR0, V4_BODY + RTMR3 + 47,
    V4_BODY + REPORT_DATA, V4_BODY + TD_BODY_END - 1,
])
def test_a_flipped_byte_in_the_td_report_breaks_the_quote_signature(offset):
    verdict = verify(flipped(TDX_QUOTE, offset))

    assert not verdict.ok and not verdict.quote_verified
    assert "ISV enclave report signature is invalid" in verdict.problems[0]


def test_setting_the_debug_bit_is_read_from_the_td_attributes_and_refused():
    forged = flipped(TDX_QUOTE, V4_BODY + TD_ATTRIBUTES, 0x01)  # TUD.DEBUG

    strict = verify(forged)
    lenient = verify(forged, policy=TdxPolicy(allow_debug=True))

    assert strict.td.debug and strict.debug
    assert "TD attributes set DEBUG, so the host can read its memory" in strict.problems
    # allow_debug drops only this module's own objection; the signature still fails.
    assert not lenient.ok and not any("DEBUG" in problem for problem in lenient.problems)


def test_no_single_byte_of_the_signed_header_and_body_can_change_unnoticed():
    refused_unread = set()
    for offset in range(V4_BODY + TD_BODY_END):
        try:
            verdict = verify(flipped(TDX_QUOTE, offset))
        except TdxQuoteError:
            refused_unread.add(offset)
            continue
        assert not verdict.ok, f"byte {offset} changed without the quote being refused"
    # Only the version (bytes 0-1) and the TEE type (4-7) make a quote it cannot read at all.
    assert refused_unread == {0, 1, 4, 5, 6, 7}


@pytest.mark.parametrize("offset, problem", [
    (636, "ISV enclave report signature is invalid"),  # the attestation key's ECDSA signature
    (700, "QE report hash mismatch"),  # the attestation key
    (770, "Signature is invalid for qe_report"),  # the QE report
    (1154, "Signature is invalid for qe_report"),  # the PCK's signature over it
    (1220, "QE report hash mismatch"),  # QE authentication data
    (1306, "certificate chain"),  # inside the PCK leaf certificate
])
def test_a_flipped_byte_in_the_signature_data_is_refused(offset, problem):
    verdict = verify(flipped(TDX_QUOTE, offset))

    assert not verdict.ok and problem in verdict.problems[0]


def test_junk_after_the_signature_data_is_refused_and_zero_padding_is_not():
    # The v4 vector ends in 70 zero bytes after its 4,300 bytes of signature data.
    assert struct.unpack_from("<I", TDX_QUOTE, V4_BODY + TD_BODY_END) == (4300,)
    assert TDX_QUOTE[4936:] == bytes(70)

    verdict = verify(flipped(TDX_QUOTE, len(TDX_QUOTE) - 1))

    assert verdict.quote_verified and not verdict.ok
    assert verdict.problems == (TRAILING_JUNK_PROBLEM,)


@pytest.mark.parametrize("quote, collateral, now", [
    (SGX_QUOTE, SGX_COLLATERAL, SGX_VALID_AT),
    (TDX_QUOTE, TDX_COLLATERAL, TDX_VALID_AT),
    (OUTDATED_QUOTE, OUTDATED_COLLATERAL, OUTDATED_VALID_AT),
])
def test_the_end_of_the_signature_data_is_found_in_quote_versions_3_4_and_5(quote, collateral,
                                                                            now):
    # Each version keeps the signature data length elsewhere: after a 384-byte SGX body (v3), a
    # 584-byte TD body (v4), or a body whose size the quote states (v5).
    padded = verify(quote + bytes(16), collateral, now=now)
    with_junk = verify(quote + b"\x01", collateral, now=now)

    assert TRAILING_JUNK_PROBLEM not in padded.problems
    assert TRAILING_JUNK_PROBLEM in with_junk.problems


@pytest.mark.parametrize("collateral, problem", [
    (SGX_COLLATERAL, "QE Identity"),  # another platform's collateral, for SGX
    (OUTDATED_COLLATERAL, "issue date is in the future"),  # another TD platform's, issued later
])
def test_collateral_for_another_platform_is_refused(collateral, problem):
    verdict = verify(collateral=collateral)

    assert not verdict.ok and problem in verdict.problems[0]


@pytest.mark.parametrize("field, old, new", [
    ("tcb_info", '"tcbStatus":"UpToDate"', '"tcbStatus":"OutOfDate"'),
    ("qe_identity", '"isvprodid":2', '"isvprodid":3'),
])
def test_a_tampered_collateral_document_fails_intels_signature(field, old, new):
    collateral = json.loads(TDX_COLLATERAL)
    assert old in collateral[field]
    collateral[field] = collateral[field].replace(old, new, 1)

    verdict = verify(collateral=json.dumps(collateral))

    assert not verdict.ok and "Signature is invalid" in verdict.problems[0]


@pytest.mark.parametrize("quote", [b"", b"garbage", TDX_QUOTE[:100], TDX_QUOTE[:700],
                                   TDX_QUOTE[:-100], SGX_QUOTE[:400]])
def test_bytes_that_are_not_a_quote_raise(quote):
    with pytest.raises(TdxQuoteError):
        verify(quote)


@pytest.mark.parametrize("collateral", ["", "not json", "{}", "[]", b"\xff\xfe",
                                        TDX_COLLATERAL.replace('"pck_crl": "', '"pck_crl": "zz')])
def test_collateral_that_is_not_quote_collateral_json_raises(collateral):
    with pytest.raises(TdxCollateralError):
        verify(collateral=collateral)


def test_collateral_may_come_as_utf8_bytes_and_errors_share_one_base():
    assert verify(collateral=TDX_COLLATERAL.encode()).ok
    assert issubclass(TdxQuoteError, TdxError) and issubclass(TdxCollateralError, TdxError)


@pytest.mark.parametrize("now", [datetime(2025, 6, 20),
                                 datetime(1969, 12, 31, tzinfo=timezone.utc)])
def test_now_must_be_timezone_aware_and_after_1970(now):
    with pytest.raises(ValueError):
        verify(now=now)


@pytest.mark.parametrize("settings, error", [
    ({"expected_report_data": b"nonce"}, ValueError),
    ({"allowed_mrtds": TDX_MRTD}, TypeError),
    ({"allowed_mrtds": frozenset({TDX_MRTD[:-2]})}, ValueError),
    ({"allowed_mrtds": frozenset({TDX_MRTD[:-2] + " 0"})}, ValueError),
    ({"allowed_tcb_statuses": frozenset({"UpToDate", "Uptodate"})}, ValueError),
    ({"allowed_tcb_statuses": frozenset({"Revoked"})}, ValueError),
    ({"allowed_tcb_statuses": "UpToDate"}, TypeError),
    ({"allowed_tees": frozenset({"SEV"})}, ValueError),
])
def test_a_policy_that_could_not_match_as_meant_is_refused_when_built(settings, error):
    with pytest.raises(error):
        TdxPolicy(**settings)
