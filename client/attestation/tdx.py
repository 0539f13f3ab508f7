"""Verify an Intel TDX (or SGX) DCAP quote against Intel's collateral, then a caller's policy.

Pure Python on top of `dcap-qvl` (Phala Network, MIT), no Django: the node and clients share it.
dcap-qvl does the cryptography and Intel's appraisal rules: the PCK chain to Intel's SGX root CA
(embedded in dcap-qvl), the root CA and PCK CRLs, the signed TCB info and QE identity, the QE
report, the attestation key's signature over header and body, and the TCB level that sets the
status (UpToDate, OutOfDate, ...). This module adds what a caller decides: which statuses, MRTDs
and REPORT_DATA it accepts, and whether a debug TD may pass.

Sources, by the names Intel gives them:
- Intel TDX DCAP Quote Generation Library and Quote Verification Library (API reference),
  appendix "Version 4 Quote Format": a 48-byte header, then the 584-byte TD quote body, whose
  TD_ATTRIBUTES is at body offset 120 (after TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48 and
  SEAMATTRIBUTES 8), then a u32 signature data length and the signature data. A version 5 quote
  puts a u16 body type and a u32 body size between header and body.
- Intel TDX Module ABI Specification (348551), TDATTRIBUTES: bits 7:0 are TUD ("TD under
  debug"); bit 0 is DEBUG, set when the host VMM can read the TD's CPU state and private memory.
- Intel SDM vol. 3D, SECS ATTRIBUTES: for an SGX enclave, bit 1 of ATTRIBUTES is DEBUG.
dcap-qvl 0.7.0 hands the TD attributes over as 8 raw bytes, so the DEBUG bit is read here.

What dcap-qvl 0.7.0 (src/verify.rs) refuses on its own, with no switch in its Python binding: a
Revoked platform, a debug or profiled TD (TUD bits 0 and 4-6), a migratable TD, SEPT_VE_DISABLE
clear, reserved TD attribute bits, a TD bound to service TDs, and a debug SGX enclave. It anchors
the PCK chain on its own copy of Intel's root CA, so the copy of the root inside a quote is not
trusted (nor checked); the PCK leaf and intermediate are.

Error design, as in `client.attestation.snp`: `verify_quote` raises a `TdxError` subclass only
for input it cannot read (bytes dcap-qvl cannot parse as a quote, collateral that is not the
QuoteCollateralV3 JSON). Everything else, dcap-qvl's refusals included (a bad signature, expired
collateral, a platform no TCB level matches), is a problem in the returned `TdxVerdict`, and
`verdict.ok` is true only when there are none.
"""

from __future__ import annotations

import string
import struct
from dataclasses import dataclass
from datetime import datetime

import dcap_qvl

# Every status Intel's TCB info and dcap-qvl's convergence rules can produce for a quote that
# passes. Revoked is absent on purpose: dcap-qvl refuses a revoked platform whatever the policy.
KNOWN_TCB_STATUSES = frozenset({
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
})
TEE_TDX = "TDX"
TEE_SGX = "SGX"

TRAILING_JUNK_PROBLEM = "non-zero bytes follow the signature data, where only padding may be"
REPORT_DATA_SIZE = 64
_MRTD_HEX_LENGTH = 96  # SHA-384
_HEADER_SIZE = 48
_BODY_SIZE_BY_VERSION = {3: 384, 4: 584}  # SGX report body, TD 1.0 quote body
_TD_DEBUG_BIT = 0x01  # TDATTRIBUTES bit 0, TUD.DEBUG
_SGX_DEBUG_BIT = 0x02  # ATTRIBUTES bit 1


class TdxError(Exception):
    """Base of everything this module raises."""


class TdxQuoteError(TdxError):
    """The bytes are not a DCAP quote dcap-qvl can parse."""


class TdxCollateralError(TdxError):
    """The collateral is not QuoteCollateralV3 JSON (text or UTF-8 bytes)."""


@dataclass(frozen=True)
class TdReport:
    """The TD quote body (TDREPORT 1.0 fields; 1.5 bodies carry these too). Bytes as quoted."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes  # 8 bytes, little-endian TDATTRIBUTES
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & _TD_DEBUG_BIT)


@dataclass(frozen=True)
class SgxReport:
    """The SGX enclave report body of a version 3 quote. Bytes as quoted."""

    cpu_svn: bytes
    attributes: bytes  # 16 bytes: FLAGS (little-endian u64), then XFRM
    mr_enclave: bytes
    mr_signer: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & _SGX_DEBUG_BIT)


@dataclass(frozen=True)
class TdxPolicy:
    """What a caller accepts beyond "Intel's collateral vouches for it".

    A quote carries no time, so freshness comes from `expected_report_data`: the 64 bytes the
    enclave asked the TDX module to sign (DESIGN.md §5 binds the HPKE key, model digest and the
    verifier's nonce there). `allowed_tcb_statuses` is compared with the status dcap-qvl derives
    from the TCB info and QE identity; admit e.g. "SWHardeningNeeded" only knowingly.
    `allow_debug` only governs this module's own DEBUG check: dcap-qvl 0.7.0 itself refuses a
    debug TD or enclave and its Python binding has no switch for that, so no debug quote passes.
    """

    allowed_mrtds: frozenset[str] = frozenset()  # hex, either case; empty allows any
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allow_debug: bool = False
    expected_report_data: bytes | None = None
    allowed_tees: frozenset[str] = frozenset({TEE_TDX})  # an SGX quote is refused by default

    def __post_init__(self):
        if self.expected_report_data is not None and \
                len(self.expected_report_data) != REPORT_DATA_SIZE:
            raise ValueError("expected_report_data must be the full 64-byte REPORT_DATA")
        for name in ("allowed_mrtds", "allowed_tcb_statuses", "allowed_tees"):
            # A bare string would otherwise become a set of its characters.
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} is a set of strings, not one string")
        mrtds = frozenset(value.lower() for value in self.allowed_mrtds)
        if any(len(value) != _MRTD_HEX_LENGTH or not _is_hex(value) for value in mrtds):
            raise ValueError("allowed_mrtds are 48-byte SHA-384 values in hex (96 characters)")
        object.__setattr__(self, "allowed_mrtds", mrtds)
        unknown = set(self.allowed_tcb_statuses) - KNOWN_TCB_STATUSES
        if unknown:
            raise ValueError(f"unknown TCB statuses {sorted(unknown)}; "
                             f"known: {sorted(KNOWN_TCB_STATUSES)}")
        object.__setattr__(self, "allowed_tcb_statuses", frozenset(self.allowed_tcb_statuses))
        if not set(self.allowed_tees) <= {TEE_TDX, TEE_SGX}:
            raise ValueError(f"allowed_tees holds {TEE_TDX!r} and/or {TEE_SGX!r}")
        object.__setattr__(self, "allowed_tees", frozenset(self.allowed_tees))


@dataclass(frozen=True)
class TdxVerdict:
    """The outcome. Fields come from the quote whether or not it verified; trust them only
    when `ok` (or at least `quote_verified`) is true."""

    ok: bool
    quote_verified: bool  # dcap-qvl accepted signatures, chains, CRLs and collateral at `now`
    tee: str  # TEE_TDX or TEE_SGX
    quote_version: int
    tcb_status: str | None  # None when dcap-qvl refused the quote
    advisory_ids: tuple[str, ...]
    td: TdReport | None  # set for a TDX quote
    enclave: SgxReport | None  # set for an SGX quote
    problems: tuple[str, ...]

    @property
    def report_data(self) -> bytes:
        return (self.td or self.enclave).report_data

    @property
    def debug(self) -> bool:
        return (self.td or self.enclave).debug


def verify_quote(quote: bytes, collateral_json: str | bytes, *, policy: TdxPolicy,
                 now: datetime) -> TdxVerdict:
    """Verify a DCAP quote with its collateral as of `now`, then apply `policy`.

    `now` must be timezone-aware; pin it to a time inside the collateral's validity to verify
    stored evidence. Raises TdxQuoteError or TdxCollateralError for unreadable input and
    ValueError for a naive or pre-1970 `now`; every failed check is a problem in the verdict.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_secs = int(now.timestamp())
    if now_secs < 0:
        raise ValueError("now is before 1970, which dcap-qvl cannot express")
    quote = bytes(quote)
    parsed = _parse_quote(quote)
    collateral = _load_collateral(collateral_json)
    # Dispatch on the body dcap-qvl decoded, not on the header's TEE type: a version 5 header
    # may claim SGX over a TD body, which dcap-qvl then refuses in verify().
    if isinstance(parsed.report, dcap_qvl.SgxEnclaveReport):
        tee, td, enclave = TEE_SGX, None, _enclave_fields(parsed.report)
    else:
        tee, td, enclave = TEE_TDX, _td_fields(parsed.report), None

    problems: list[str] = []
    tcb_status, advisory_ids = None, ()
    try:
        verified = dcap_qvl.verify(quote, collateral, now_secs)
    except ValueError as error:
        problems.append(f"dcap-qvl refused the quote: {_one_line(error)}")
    else:
        tcb_status, advisory_ids = verified.status, tuple(verified.advisory_ids)
    quote_verified = tcb_status is not None
    _check_trailing_bytes(quote, parsed.header.version, problems)
    _check_policy(policy, tee=tee, tcb_status=tcb_status, advisory_ids=advisory_ids,
                  report=td or enclave, problems=problems)
    return TdxVerdict(ok=not problems, quote_verified=quote_verified, tee=tee,
                      quote_version=parsed.header.version, tcb_status=tcb_status,
                      advisory_ids=advisory_ids, td=td, enclave=enclave,
                      problems=tuple(problems))


def _parse_quote(quote: bytes) -> dcap_qvl.Quote:
    try:
        return dcap_qvl.parse_quote(quote)
    except ValueError as error:
        raise TdxQuoteError(f"not a DCAP quote: {_one_line(error)}") from error


def _load_collateral(collateral_json: str | bytes) -> dcap_qvl.QuoteCollateralV3:
    if isinstance(collateral_json, (bytes, bytearray)):
        try:
            collateral_json = bytes(collateral_json).decode("utf-8")
        except UnicodeDecodeError as error:
            raise TdxCollateralError("collateral is not UTF-8 JSON") from error
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
    except (ValueError, TypeError) as error:
        raise TdxCollateralError(f"collateral is not QuoteCollateralV3 JSON: "
                                 f"{_one_line(error)}") from error


def _td_fields(report) -> TdReport:
    # dcap-qvl returns TdReport10, TdReport15 or TdReport15Ex; all carry the 1.0 fields.
    return TdReport(
        tee_tcb_svn=report.tee_tcb_svn, mr_seam=report.mr_seam,
        td_attributes=report.td_attributes, xfam=report.xfam, mr_td=report.mr_td,
        mr_config_id=report.mr_config_id, mr_owner=report.mr_owner,
        mr_owner_config=report.mr_owner_config,
        rtmr=(report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3),
        report_data=report.report_data,
    )


def _enclave_fields(report) -> SgxReport:
    return SgxReport(cpu_svn=report.cpu_svn, attributes=report.attributes,
                     mr_enclave=report.mr_enclave, mr_signer=report.mr_signer,
                     report_data=report.report_data)


def _check_trailing_bytes(quote: bytes, version: int, problems: list[str]) -> None:
    """Nothing signs the bytes after the signature data, and dcap-qvl ignores them. Quote
    buffers are often zero-padded, which is harmless; anything else there is refused so that
    no unsigned content rides along with a quote that verifies."""
    if version == 5:
        body_end = _HEADER_SIZE + 6 + struct.unpack_from("<I", quote, _HEADER_SIZE + 2)[0]
    else:
        body_end = _HEADER_SIZE + _BODY_SIZE_BY_VERSION.get(version, 0)
    if not _HEADER_SIZE < body_end <= len(quote) - 4:
        return  # dcap-qvl parsed it, so this cannot happen for versions 3-5
    signature_end = body_end + 4 + struct.unpack_from("<I", quote, body_end)[0]
    if any(quote[signature_end:]):
        problems.append(TRAILING_JUNK_PROBLEM)


def _check_policy(policy: TdxPolicy, *, tee: str, tcb_status: str | None,
                  advisory_ids: tuple[str, ...], report: TdReport | SgxReport,
                  problems: list[str]) -> None:
    if tee not in policy.allowed_tees:
        problems.append(f"the quote is {tee}; the policy accepts {sorted(policy.allowed_tees)}")
    if tcb_status is not None and tcb_status not in policy.allowed_tcb_statuses:
        advisories = f" (advisories {', '.join(advisory_ids)})" if advisory_ids else ""
        problems.append(f"TCB status {tcb_status}{advisories} is not one of "
                        f"{sorted(policy.allowed_tcb_statuses)}")
    if report.debug and not policy.allow_debug:
        what = "TD attributes set" if tee == TEE_TDX else "enclave attributes set"
        problems.append(f"{what} DEBUG, so the host can read its memory")
    if policy.allowed_mrtds:
        if tee != TEE_TDX:
            problems.append("the policy pins MRTD values, and an SGX quote has no MRTD")
        elif report.mr_td.hex() not in policy.allowed_mrtds:
            problems.append(f"MRTD {report.mr_td.hex()} is not allowed")
    if policy.expected_report_data is not None and \
            report.report_data != policy.expected_report_data:
        problems.append("REPORT_DATA is not the expected nonce binding")


def _one_line(error: Exception) -> str:
    """dcap-qvl's messages are anyhow chains over several lines ("Verification failed: X",
    "Caused by:", "Y"); a problem is one line."""
    text = str(error).removeprefix("Verification failed: ")
    parts = [line.strip() for line in text.splitlines()]
    return "; ".join(part for part in parts if part and part != "Caused by:")


def _is_hex(value: str) -> bool:
    # Not bytes.fromhex, which skips spaces and would let a value that can never match pass.
    return all(character in string.hexdigits for character in value)
