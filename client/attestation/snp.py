"""Verify an AMD SEV-SNP attestation report against AMD's certificate chain.

Pure Python (standard library and `cryptography`), no Django: the node and clients share it.

Sources, by the names AMD gives them (table numbers move between revisions):
- SEV Secure Nested Paging Firmware ABI Specification (AMD pub. 56860): section 7.3
  "Attestation", table "ATTESTATION_REPORT Structure" (Table 22 in rev. 1.55) for every offset
  below, the guest policy table for POLICY, the TCB_VERSION structure, and the ECDSA P-384
  signature format (R and S little-endian, 72 bytes each).
- Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification (AMD pub.
  57230), chapter 3: ARK, ASK and VCEK are signed with RSASSA-PSS (SHA-384, MGF1-SHA-384,
  48-byte salt) and the VCEK carries the TCB it was issued for and the chip's hwID as extensions.

Error design: `parse_report` raises an `SnpError` subclass for bytes that are not a report this
module can decode, and `verify_report` raises `SnpCertificateError` for bytes that are not DER
certificates. Nothing else raises: every check `verify_report` makes lands in the returned
`SnpVerdict` (signature_ok, chain_ok, tcb_ok and the list of problems), and `verdict.ok` is true
only when the list is empty. A caller can route on `ok` and show `problems` to a person.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

REPORT_SIZE = 0x4A0  # 1,184 bytes
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F
# Later versions fill bytes that version 2 reserved (3: CPUID at 0x188; 5: mitigation vectors
# after 0x1F8) and move nothing decoded here; 4 is accepted on the same footing.
SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5})
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK = 0
_SIGNING_KEY_NAMES = {0: "the VCEK", 1: "a VLEK", 7: "no key"}  # SIGNING_KEY, bits 4:2 at 0x48
# CPUID family 19h is Milan and Genoa, whose TCB_VERSION layout this module decodes. Turin (1Ah)
# reorders the bytes (an FMC SVN first), so its reports are refused rather than misread.
CPUID_FAMILY_MILAN_GENOA = 0x19

_ECDSA_FIELD_SIZE = 72  # R then S, little-endian, each zero-padded from 48 to 72 bytes
_SIGNATURE_END = SIGNED_SIZE + 2 * _ECDSA_FIELD_SIZE

# SHA-256 of the DER of AMD's Milan ARK (CN=ARK-Milan, valid 2020-10-22 to 2045-10-22), the root
# KDS serves at https://kdsintf.amd.com/vcek/v1/Milan/cert_chain. Computed from
# tests/data/attestation/snp/milan_ark.der; pin another product's ARK through SnpPolicy.
MILAN_ARK_SHA256 = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"

_AMD_CERT_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

_OID_BOOTLOADER_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
_OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
_OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
_OID_MICROCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
_OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
_CHIP_ID_SIZE = 64


class SnpError(Exception):
    """Base of everything this module raises."""


class SnpReportSizeError(SnpError):
    """The input is not exactly one 1,184-byte ATTESTATION_REPORT."""


class SnpUnsupportedReportError(SnpError):
    """A report version, signature algorithm or processor family this module does not decode."""


class SnpMalformedReportError(SnpError):
    """Bytes the specification reserves (must be zero) are not zero."""


class SnpCertificateError(SnpError):
    """A certificate is not DER X.509, or a VCEK lacks a readable AMD extension."""


@dataclass(frozen=True)
class TcbVersion:
    """TCB_VERSION (56860), Milan/Genoa layout: byte 0 bootloader SVN, 1 TEE (PSP OS),
    2-5 reserved, 6 SNP firmware, 7 microcode."""

    bootloader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> TcbVersion:
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def at_least(self, minimum: TcbVersion) -> bool:
        return all(getattr(self, part) >= getattr(minimum, part)
                   for part in ("bootloader", "tee", "snp", "microcode"))


@dataclass(frozen=True)
class GuestPolicy:
    """POLICY bits (56860 guest policy table): 7:0 ABI minor, 15:8 ABI major, 16 SMT,
    17 reserved (one), 18 MIGRATE_MA, 19 DEBUG, 20 SINGLE_SOCKET."""

    abi_minor: int
    abi_major: int
    smt_allowed: bool
    migrate_ma_allowed: bool
    debug_allowed: bool
    single_socket: bool

    @classmethod
    def from_int(cls, value: int) -> GuestPolicy:
        return cls(abi_minor=value & 0xFF, abi_major=(value >> 8) & 0xFF,
                   smt_allowed=bool(value >> 16 & 1), migrate_ma_allowed=bool(value >> 18 & 1),
                   debug_allowed=bool(value >> 19 & 1), single_socket=bool(value >> 20 & 1))


@dataclass(frozen=True)
class SnpReport:
    """One ATTESTATION_REPORT, decoded. Byte fields are as the firmware wrote them."""

    version: int
    guest_svn: int
    policy: int
    guest_policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    mask_chip_id: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_family: int | None  # None before report version 3
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_firmware: tuple[int, int, int]  # (major, minor, build)
    committed_firmware: tuple[int, int, int]
    launch_tcb: TcbVersion
    signed_bytes: bytes
    signature_r: int
    signature_s: int

    @property
    def smt_enabled(self) -> bool:
        return bool(self.platform_info & 1)

    @property
    def tsme_enabled(self) -> bool:
        return bool(self.platform_info >> 1 & 1)


def parse_report(data: bytes) -> SnpReport:
    """Decode an ATTESTATION_REPORT (56860 §7.3). Checks the shape only, not the signature.

    Raises SnpReportSizeError, SnpUnsupportedReportError or SnpMalformedReportError.
    """
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise SnpReportSizeError(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(data)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise SnpUnsupportedReportError(f"report version {version} is not one of "
                                        f"{sorted(SUPPORTED_VERSIONS)}")
    vmpl, signature_algo = struct.unpack_from("<II", data, 0x30)
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise SnpUnsupportedReportError(f"signature algorithm {signature_algo} is not "
                                        "ECDSA P-384 with SHA-384 (1)")
    cpuid = (data[0x188], data[0x189], data[0x18A]) if version >= 3 else (None, None, None)
    if cpuid[0] is not None and cpuid[0] != CPUID_FAMILY_MILAN_GENOA:
        raise SnpUnsupportedReportError(f"CPUID family {cpuid[0]:#x} has a TCB layout this "
                                        "module does not decode (Milan/Genoa only)")
    # Nothing signs the bytes after S, so a verifier that ignored them would accept any junk
    # there; the specification reserves them, so they must be zero.
    if any(data[_SIGNATURE_END:]):
        raise SnpMalformedReportError("reserved bytes after the signature's S are not zero")
    platform_info, signer_info = struct.unpack_from("<QI", data, 0x40)
    return SnpReport(
        version=version, guest_svn=guest_svn, policy=policy,
        guest_policy=GuestPolicy.from_int(policy),
        family_id=data[0x10:0x20], image_id=data[0x20:0x30],
        vmpl=vmpl, signature_algo=signature_algo,
        current_tcb=TcbVersion.from_bytes(data[0x38:0x40]),
        platform_info=platform_info,
        author_key_en=bool(signer_info & 1), mask_chip_id=bool(signer_info >> 1 & 1),
        signing_key=signer_info >> 2 & 0b111,
        report_data=data[0x50:0x90], measurement=data[0x90:0xC0], host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110], author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160], report_id_ma=data[0x160:0x180],
        reported_tcb=TcbVersion.from_bytes(data[0x180:0x188]),
        cpuid_family=cpuid[0], cpuid_model=cpuid[1], cpuid_stepping=cpuid[2],
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=TcbVersion.from_bytes(data[0x1E0:0x1E8]),
        # Stored build, minor, major (one byte each, then one reserved byte).
        current_firmware=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_firmware=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=TcbVersion.from_bytes(data[0x1F0:0x1F8]),
        signed_bytes=data[:SIGNED_SIZE],
        # All 72 bytes are read, so non-zero padding yields an out-of-range R or S and fails.
        signature_r=int.from_bytes(data[SIGNED_SIZE:SIGNED_SIZE + _ECDSA_FIELD_SIZE], "little"),
        signature_s=int.from_bytes(data[SIGNED_SIZE + _ECDSA_FIELD_SIZE:_SIGNATURE_END], "little"),
    )


@dataclass(frozen=True)
class SnpPolicy:
    """What a caller accepts beyond "AMD signed it".

    SNP reports carry no time, so freshness comes from `expected_report_data`: the verifier's
    nonce (with whatever the enclave binds next to it), exactly the 64 bytes the guest asked the
    firmware to sign. `minimum_tcb` is compared with REPORTED_TCB, the TCB the VCEK certifies.
    """

    allowed_measurements: frozenset[str] = frozenset()  # hex, either case; empty allows any
    minimum_tcb: TcbVersion = TcbVersion(bootloader=0, tee=0, snp=0, microcode=0)
    allow_debug: bool = False
    allow_migration_agent: bool = False
    expected_report_data: bytes | None = None
    trusted_ark_sha256: frozenset[str] = frozenset({MILAN_ARK_SHA256})

    def __post_init__(self):
        if self.expected_report_data is not None and len(self.expected_report_data) != 64:
            raise ValueError("expected_report_data must be the full 64-byte REPORT_DATA")
        for name in ("allowed_measurements", "trusted_ark_sha256"):
            # A bare string would otherwise become a set of its characters.
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} is a set of hex strings, not one string")
            object.__setattr__(self, name, frozenset(h.lower() for h in getattr(self, name)))


@dataclass(frozen=True)
class SnpVerdict:
    ok: bool
    report: SnpReport
    signature_ok: bool  # the VCEK's key signed bytes 0x000..0x29F
    chain_ok: bool  # VCEK <- ASK <- pinned, self-signed ARK, all valid at `now`
    tcb_ok: bool  # the VCEK was issued for this report's REPORTED_TCB and CHIP_ID
    problems: tuple[str, ...]


def verify_report(data: bytes, vcek_der: bytes, ask_der: bytes, ark_der: bytes, *,
                  policy: SnpPolicy, now: datetime) -> SnpVerdict:
    """Check a report's signature, AMD chain, VCEK binding and the caller's policy.

    `ark_der` is the root the caller trusts; its SHA-256 must also be in
    `policy.trusted_ark_sha256`. `now` must be timezone-aware. Raises only for unreadable input
    (see the module docstring); every failed check is a problem in the verdict.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = parse_report(data)
    vcek, ask, ark = (_load_certificate(der, name) for der, name in
                      ((vcek_der, "VCEK"), (ask_der, "ASK"), (ark_der, "ARK")))
    problems: list[str] = []
    signature_ok = _check_report_signature(report, vcek, problems)
    chain_ok = _check_chain(vcek, ask, ark, now=now, policy=policy, problems=problems)
    tcb_ok = _check_vcek_matches_report(report, vcek, problems)
    _check_policy(report, policy, problems)
    return SnpVerdict(ok=not problems, report=report, signature_ok=signature_ok,
                      chain_ok=chain_ok, tcb_ok=tcb_ok, problems=tuple(problems))


def _load_certificate(der: bytes, name: str) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            # KDS issues VCEKs with serial number 0, which cryptography only warns about.
            warnings.filterwarnings("ignore", message=".*serial number.*")
            return x509.load_der_x509_certificate(bytes(der))
    except ValueError as error:
        raise SnpCertificateError(f"{name} is not a DER X.509 certificate: {error}") from error


def _check_report_signature(report: SnpReport, vcek: x509.Certificate, problems: list[str]) -> bool:
    key = vcek.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)):
        problems.append("VCEK key is not ECDSA P-384")
        return False
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        problems.append("report signature does not verify with the VCEK key")
        return False
    return True


def _check_chain(vcek: x509.Certificate, ask: x509.Certificate, ark: x509.Certificate, *,
                 now: datetime, policy: SnpPolicy, problems: list[str]) -> bool:
    found_before = len(problems)
    fingerprint = ark.fingerprint(hashes.SHA256()).hex()
    if fingerprint not in policy.trusted_ark_sha256:
        problems.append(f"ARK {fingerprint} is not a pinned AMD root")
    for name, cert, issuer_name, issuer in (("ARK", ark, "ARK", ark), ("ASK", ask, "ARK", ark),
                                            ("VCEK", vcek, "ASK", ask)):
        if cert.issuer != issuer.subject:
            problems.append(f"{name} names another issuer than the {issuer_name}")
        elif not _signed_by(cert, issuer):
            problems.append(f"{name} signature does not verify with the {issuer_name} key")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            problems.append(f"{name} is not valid at {now.isoformat()} (valid "
                            f"{cert.not_valid_before_utc.isoformat()} to "
                            f"{cert.not_valid_after_utc.isoformat()})")
    for name, cert in (("ARK", ark), ("ASK", ask)):
        if not _is_certificate_authority(cert):
            problems.append(f"{name} is not a CA certificate")
    return len(problems) == found_before


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _AMD_CERT_PADDING, hashes.SHA384())
    except InvalidSignature:
        return False
    return True


def _is_certificate_authority(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_vcek_matches_report(report: SnpReport, vcek: x509.Certificate,
                               problems: list[str]) -> bool:
    """The VCEK is derived from the chip and REPORTED_TCB (56860 §7.3), so a VCEK for another
    chip or TCB is the wrong certificate even where its chain is sound."""
    found_before = len(problems)
    if report.signing_key != SIGNING_KEY_VCEK:
        signer = _SIGNING_KEY_NAMES.get(report.signing_key, f"key kind {report.signing_key}")
        problems.append(f"report says it was signed by {signer}, not a VCEK")
    try:
        certified_tcb = vcek_tcb(vcek)
        hwid = _extension_bytes(vcek, _OID_HWID, "hwID")
    except SnpCertificateError as error:
        problems.append(str(error))
        return False
    if report.reported_tcb != certified_tcb:
        problems.append(f"REPORTED_TCB {report.reported_tcb} differs from the VCEK's "
                        f"{certified_tcb}")
    if report.mask_chip_id:
        problems.append("CHIP_ID is masked, so the report cannot be tied to the VCEK's chip")
    elif len(hwid) != _CHIP_ID_SIZE or report.chip_id != hwid:
        problems.append("CHIP_ID differs from the VCEK's hwID")
    return len(problems) == found_before


def vcek_tcb(vcek: x509.Certificate) -> TcbVersion:
    """The TCB a VCEK was issued for, from its 57230 chapter 3 extensions (DER INTEGERs)."""
    def svn(oid: x509.ObjectIdentifier, name: str) -> int:
        return _der_small_integer(_extension_bytes(vcek, oid, name), name)

    return TcbVersion(bootloader=svn(_OID_BOOTLOADER_SPL, "blSPL"),
                      tee=svn(_OID_TEE_SPL, "teeSPL"), snp=svn(_OID_SNP_SPL, "snpSPL"),
                      microcode=svn(_OID_MICROCODE_SPL, "ucodeSPL"))


def _extension_bytes(cert: x509.Certificate, oid: x509.ObjectIdentifier, name: str) -> bytes:
    """The content of the extnValue OCTET STRING; hwID's is the 64 raw chip id bytes."""
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise SnpCertificateError(f"VCEK has no {name} extension ({oid.dotted_string})") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise SnpCertificateError(f"VCEK {name} extension is not an AMD extension")
    return value.value


def _der_small_integer(encoded: bytes, name: str) -> int:
    # An SVN is one byte, so its DER INTEGER is 02 01 xx, or 02 02 00 xx from 0x80 up.
    if not (3 <= len(encoded) <= 4 and encoded[0] == 0x02 and encoded[1] == len(encoded) - 2):
        raise SnpCertificateError(f"VCEK {name} extension is not a DER INTEGER")
    value = int.from_bytes(encoded[2:], "big", signed=True)
    if not 0 <= value <= 0xFF:
        raise SnpCertificateError(f"VCEK {name} value {value} is not an SVN (0-255)")
    return value


def _check_policy(report: SnpReport, policy: SnpPolicy, problems: list[str]) -> None:
    if report.guest_policy.debug_allowed and not policy.allow_debug:
        problems.append("guest policy allows debugging")
    if report.guest_policy.migrate_ma_allowed and not policy.allow_migration_agent:
        problems.append("guest policy allows a migration agent")
    measurement = report.measurement.hex()
    if policy.allowed_measurements and measurement not in policy.allowed_measurements:
        problems.append(f"measurement {measurement} is not allowed")
    if not report.reported_tcb.at_least(policy.minimum_tcb):
        problems.append(f"REPORTED_TCB {report.reported_tcb} is below the minimum "
                        f"{policy.minimum_tcb}")
    if policy.expected_report_data is not None and \
            report.report_data != policy.expected_report_data:
        problems.append("REPORT_DATA is not the expected nonce binding")
