"""Verify NVIDIA Hopper (H100) GPU attestation evidence against NVIDIA's device certificate chain.

Pure Python (standard library and `cryptography`), no Django: the node and clients share it.

Sources: DMTF DSP0274 (SPDM) 1.1 for the GET_MEASUREMENTS request and MEASUREMENTS response
(layouts at `parse_attestation_report`; SPDM 1.1 signs the transcript itself, request then
response up to the signature, where 1.2 signs a prefixed hash); NVIDIA's evidence as
nv-local-gpu-verifier (nvtrust, `verifier/attestation/`) reads it: the 37-byte request then the
response, signed with ECDSA P-384 (R then S, 48 big-endian bytes each) by the chain's first
certificate, and opaque data that is a run of (type, size, value) fields: 3 the driver version,
6 the VBIOS version, 20 the FWID, which must equal the one in the leaf's TCG DICE extension.

Offline scope: this checks that a genuine NVIDIA GPU signed these measurements in answer to the
caller's nonce. It neither fetches NVIDIA's Reference Integrity Manifests (golden measurements
per driver and VBIOS, signed under the RIM root) nor asks NVIDIA's OCSP responder whether a
device certificate was revoked: both are remote services. `HopperReport.measurements` holds
every block by index for a caller with RIMs to compare; `GpuPolicy.expected_measurements`
compares values the caller already trusts.

Error design: `parse_attestation_report` raises a `GpuEvidenceError` subclass for bytes that are
not a report it can decode; `verify_evidence` also raises `GpuCertificateError` for certificates
that are not PEM. Nothing else raises: every check lands in the returned `GpuVerdict`, whose
`ok` is true only when its list of problems is empty.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_SIZE = 37  # header 4, nonce 32, slot id 1
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384: R and S, 48 bytes each
_RESPONSE_HEADER_SIZE = 8
_SIGNATURE_REQUESTED = 0x01  # Param1 bit 0 of GET_MEASUREMENTS
_DMTF_MEASUREMENT_SPECIFICATION = 0x01
_RAW_BIT_STREAM = 0x80

# Opaque data field types, as NVIDIA numbers them (15 chip SKU, 17 project, 18 project SKU...).
OPAQUE_DRIVER_VERSION, OPAQUE_VBIOS_VERSION, OPAQUE_FWID = 3, 6, 20

# SHA-256 of the DER of NVIDIA's device identity root (CN=NVIDIA Device Identity CA, valid
# 2021-11-05 to 9999-12-31), certs/verifier_device_root.pem of nv-local-gpu-verifier. Computed
# from tests/data/attestation/nvidia/verifier_device_root.pem.
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

_OID_TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
_FWID_SIZE = 48  # SHA-384
_ECDSA_WITH_SHA384 = x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384
_HEX_TEXT = frozenset(string.hexdigits + string.whitespace)


class GpuEvidenceError(Exception):
    """Base of everything this module raises."""


class GpuMalformedReportError(GpuEvidenceError):
    """Not hex, truncated, or lengths inside the report that do not add up."""


class GpuUnsupportedReportError(GpuEvidenceError):
    """An SPDM version, message or measurement format this module does not decode."""


class GpuCertificateError(GpuEvidenceError):
    """A certificate chain or root that is not PEM X.509, or an unreadable FWID extension."""


@dataclass(frozen=True)
class MeasurementRequest:
    spdm_version: int
    attributes: int  # Param1
    operation: int  # Param2: the index asked for, 0xFF for all
    nonce: bytes  # the requester's: freshness comes from here
    slot_id: int


@dataclass(frozen=True)
class MeasurementBlock:
    index: int
    value_type: int  # DMTF value type, bits 6:0 (1: mutable firmware, 2: hardware config...)
    raw_bit_stream: bool  # False: `value` is a digest
    value: bytes


@dataclass(frozen=True)
class HopperReport:
    """One attestation report, decoded. Byte fields are as the GPU wrote them."""

    request: MeasurementRequest
    spdm_version: int
    measurements: Mapping[int, MeasurementBlock]  # by SPDM index, from 1
    responder_nonce: bytes  # the GPU's own randomness, not the verifier's
    opaque_fields: Mapping[int, bytes]  # by NVIDIA field type, undecoded
    vbios_version: str | None  # "96.00.9F.00.01"
    signed_bytes: bytes
    signature: bytes

    @property
    def nonce(self) -> bytes:
        return self.request.nonce

    @property
    def driver_version(self) -> str | None:  # "550.90.07"
        return self.opaque_text(OPAQUE_DRIVER_VERSION)

    @property
    def fwid(self) -> bytes | None:
        return self.opaque_fields.get(OPAQUE_FWID)

    def opaque_text(self, field_type: int) -> str | None:
        """A NUL-padded ASCII field (project, SKUs: they name the RIM files to fetch)."""
        value = self.opaque_fields.get(field_type)
        return None if value is None else value.split(b"\0", 1)[0].decode("ascii", "replace")


def parse_attestation_report(raw: bytes) -> HopperReport:
    """Decode a report; checks the shape, not the signature. Raises GpuMalformedReportError
    or GpuUnsupportedReportError.

    DSP0274 1.1, integers little-endian. GET_MEASUREMENTS: version, code 0xE0, Param1 (bit 0:
    signature requested), Param2 (an index, 0xFF for all), Nonce (32), SlotID. MEASUREMENTS:
    version, code 0x60, Param1, Param2, NumberOfBlocks, MeasurementRecordLength (3), the blocks,
    the responder's Nonce (32), OpaqueLength (2), OpaqueData, Signature. A block: Index,
    MeasurementSpecification (bit 0: DMTF), MeasurementSize (2), then the DMTF value type (bit 7:
    raw bits rather than a digest), value size (2) and value.
    """
    raw = bytes(raw)
    if len(raw) < REQUEST_SIZE + _RESPONSE_HEADER_SIZE:
        raise GpuMalformedReportError(f"{len(raw)} bytes cannot hold a request and a response")
    request = MeasurementRequest(spdm_version=raw[0], attributes=raw[2], operation=raw[3],
                                 nonce=raw[4:4 + NONCE_SIZE], slot_id=raw[36])
    version, code = raw[REQUEST_SIZE], raw[REQUEST_SIZE + 1]
    if (request.spdm_version, version) != (SPDM_VERSION_1_1, SPDM_VERSION_1_1):
        raise GpuUnsupportedReportError(f"SPDM versions {request.spdm_version:#x} and "
                                        f"{version:#x}; only 1.1 (0x11) is decoded")
    if (raw[1], code) != (GET_MEASUREMENTS, MEASUREMENTS):
        raise GpuUnsupportedReportError(f"messages {raw[1]:#x} and {code:#x} are not "
                                        "GET_MEASUREMENTS (0xe0) and MEASUREMENTS (0x60)")
    if not request.attributes & _SIGNATURE_REQUESTED:
        raise GpuUnsupportedReportError("the request did not ask for a signature")
    reader = _Reader(raw, REQUEST_SIZE + 4)
    block_count = reader.integer(1)
    measurements = _parse_measurement_blocks(_Reader(reader.take(reader.integer(3))),
                                             block_count)
    responder_nonce = reader.take(NONCE_SIZE)
    opaque_fields = _parse_opaque_fields(_Reader(reader.take(reader.integer(2))))
    signed_end = reader.offset
    signature = reader.take(SIGNATURE_SIZE)
    if not reader.done:
        raise GpuMalformedReportError(f"{len(raw) - reader.offset} bytes after the signature")
    return HopperReport(
        request=request, spdm_version=version, measurements=MappingProxyType(measurements),
        responder_nonce=responder_nonce, opaque_fields=MappingProxyType(opaque_fields),
        vbios_version=_vbios_version(opaque_fields.get(OPAQUE_VBIOS_VERSION)),
        signed_bytes=raw[:signed_end], signature=signature)


class _Reader:
    """Reads little-endian fields in order and refuses to run past the end."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.offset = data, offset

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise GpuMalformedReportError(f"truncated: {size} bytes wanted at offset "
                                          f"{self.offset}, {len(self.data)} present")
        self.offset += size
        return self.data[self.offset - size:self.offset]

    def integer(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    @property
    def done(self) -> bool:
        return self.offset == len(self.data)


def _parse_measurement_blocks(record: _Reader, block_count: int) -> dict[int, MeasurementBlock]:
    blocks: dict[int, MeasurementBlock] = {}
    for _ in range(block_count):
        index, specification = record.integer(1), record.integer(1)
        body = _Reader(record.take(record.integer(2)))
        if not specification & _DMTF_MEASUREMENT_SPECIFICATION:
            raise GpuUnsupportedReportError(f"measurement {index} is not in DMTF format")
        value_type = body.integer(1)
        value = body.take(body.integer(2))
        if not body.done:
            raise GpuMalformedReportError(f"measurement {index} has bytes after its value")
        # Two blocks with one index would let a reader pick the value it prefers.
        if index in blocks:
            raise GpuMalformedReportError(f"measurement index {index} appears twice")
        blocks[index] = MeasurementBlock(index=index, value_type=value_type & 0x7F,
                                         raw_bit_stream=bool(value_type & _RAW_BIT_STREAM),
                                         value=value)
    if not record.done:
        raise GpuMalformedReportError("measurement record is longer than its blocks")
    return blocks


def _parse_opaque_fields(opaque: _Reader) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    while not opaque.done:
        field_type = opaque.integer(2)
        value = opaque.take(opaque.integer(2))
        if field_type in fields:
            raise GpuMalformedReportError(f"opaque field {field_type} appears twice")
        fields[field_type] = value
    return fields


def _vbios_version(value: bytes | None) -> str | None:
    """As NVIDIA's verifier and nvidia-smi print it ("96.00.9F.00.01"): the first 32-bit word
    from its high byte down, then byte 4."""
    if value is None:
        return None
    if len(value) != 8:
        raise GpuMalformedReportError(f"VBIOS version is {len(value)} bytes, not 8")
    return ".".join(f"{byte:02X}" for byte in (value[3], value[2], value[1], value[0], value[4]))


@dataclass(frozen=True)
class GpuPolicy:
    """What a caller accepts beyond "an NVIDIA GPU signed it".

    Freshness comes from `expected_nonce`: the 32 bytes the verifier asked the driver to put in
    GET_MEASUREMENTS. Versions compare as the report states them ("550.90.07", and VBIOS in
    upper case, "96.00.9F.00.01"); an empty set allows any. `expected_measurements` maps an
    SPDM index to the hex value the caller trusts (from a RIM it verified itself).
    """

    expected_nonce: bytes | None = None
    allowed_driver_versions: frozenset[str] = frozenset()
    allowed_vbios_versions: frozenset[str] = frozenset()
    expected_measurements: Mapping[int, str] = field(default_factory=dict)
    trusted_root_sha256: frozenset[str] = frozenset({NVIDIA_DEVICE_ROOT_SHA256})

    def __post_init__(self):
        if self.expected_nonce is not None and len(self.expected_nonce) != NONCE_SIZE:
            raise ValueError("expected_nonce must be the 32-byte SPDM nonce")
        for name in ("allowed_driver_versions", "allowed_vbios_versions", "trusted_root_sha256"):
            # A bare string would otherwise become a set of its characters.
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} is a set of strings, not one string")
        normalized = {
            "allowed_driver_versions": frozenset(self.allowed_driver_versions),
            "allowed_vbios_versions": frozenset(v.upper() for v in self.allowed_vbios_versions),
            "trusted_root_sha256": frozenset(h.lower() for h in self.trusted_root_sha256),
            "expected_measurements": MappingProxyType({  # bytes.fromhex refuses bad hex
                int(index): bytes.fromhex(value).hex()
                for index, value in self.expected_measurements.items()})}
        for name, value in normalized.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class GpuVerdict:
    ok: bool
    report: HopperReport
    signature_ok: bool  # the leaf's key signed the request and the response
    chain_ok: bool  # leaf <- ... <- pinned NVIDIA root, ECDSA P-384, CA flags, valid at `now`
    fwid_ok: bool  # the report's FWID is the one the leaf certificate was issued for
    problems: tuple[str, ...]


def verify_evidence(report_hex_or_bytes: str | bytes, cert_chain_pem: str | bytes,
                    device_root_pem: str | bytes, *, policy: GpuPolicy,
                    now: datetime) -> GpuVerdict:
    """Check a report's signature, its device chain up to `device_root_pem`, and the policy.

    The report is hex (as NVML hands it out) or raw bytes; the chain is PEM, leaf first, with or
    without the root. `now` must be timezone-aware. Raises only for unreadable input (see the
    module docstring); every failed check is a problem in the verdict.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = parse_attestation_report(_report_bytes(report_hex_or_bytes))
    chain = _load_pem_certificates(cert_chain_pem, "certificate chain")
    root = _load_pem_certificates(device_root_pem, "device root")[0]
    problems: list[str] = []
    signature_ok = _check_report_signature(report, chain[0], problems)
    chain_ok = _check_chain(chain, root, now=now, policy=policy, problems=problems)
    fwid_ok = _check_fwid(report, chain[0], problems)
    _check_policy(report, policy, problems)
    return GpuVerdict(ok=not problems, report=report, signature_ok=signature_ok,
                      chain_ok=chain_ok, fwid_ok=fwid_ok, problems=tuple(problems))


def _report_bytes(report: str | bytes) -> bytes:
    if isinstance(report, (bytes, bytearray, memoryview)):
        report = bytes(report)
        # A raw report starts with its SPDM version (0x10 to 0x13), never a hex digit or
        # white space, so raw bytes cannot be mistaken for hex text.
        if not all(chr(byte) in _HEX_TEXT for byte in report):
            return report
        report = report.decode("ascii")
    text = "".join(report.split())
    if len(text) % 2 or not all(character in string.hexdigits for character in text):
        raise GpuMalformedReportError("report text is not whole bytes of hex")
    return bytes.fromhex(text)


def _load_pem_certificates(pem: str | bytes, name: str) -> list[x509.Certificate]:
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise GpuCertificateError(f"{name} is not PEM X.509: {error}") from error


def _label(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _is_p384(key) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)


def _check_report_signature(report: HopperReport, leaf: x509.Certificate,
                            problems: list[str]) -> bool:
    key = leaf.public_key()
    if not _is_p384(key):
        problems.append(f"{_label(leaf)} key is not ECDSA P-384")
        return False
    half = SIGNATURE_SIZE // 2
    signature = encode_dss_signature(int.from_bytes(report.signature[:half], "big"),
                                     int.from_bytes(report.signature[half:], "big"))
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        problems.append(f"report signature does not verify with the {_label(leaf)} key")
        return False
    return True


def _check_chain(chain: list[x509.Certificate], root: x509.Certificate, *, now: datetime,
                 policy: GpuPolicy, problems: list[str]) -> bool:
    found_before = len(problems)
    fingerprint = root.fingerprint(hashes.SHA256()).hex()
    if fingerprint not in policy.trusted_root_sha256:
        problems.append(f"device root {fingerprint} is not a pinned NVIDIA root")
    # The evidence may carry the root; only the caller's copy of it is trusted.
    path = chain[:-1] if chain[-1] == root else list(chain)
    if not path:
        problems.append("certificate chain holds no device certificate")
        return False
    path.append(root)
    for position, cert in enumerate(path):
        issuer = path[min(position + 1, len(path) - 1)]  # the root issues itself
        if cert.issuer != issuer.subject:
            problems.append(f"{_label(cert)} names another issuer than {_label(issuer)}")
        elif not _signed_by(cert, issuer):
            problems.append(f"{_label(cert)} signature does not verify with the "
                            f"{_label(issuer)} key (ECDSA P-384, SHA-384)")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            problems.append(f"{_label(cert)} is not valid at {now.isoformat()} (valid "
                            f"{cert.not_valid_before_utc.isoformat()} to "
                            f"{cert.not_valid_after_utc.isoformat()})")
        if position > 0:
            _check_issuing_authority(cert, intermediates_below=position - 1, problems=problems)
    if not _key_usage_allows(path[0], "digital_signature"):
        problems.append(f"{_label(path[0])} may not sign (key usage)")
    return len(problems) == found_before


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not _is_p384(key) or cert.signature_algorithm_oid != _ECDSA_WITH_SHA384:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def _check_issuing_authority(cert: x509.Certificate, *, intermediates_below: int,
                             problems: list[str]) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = x509.BasicConstraints(ca=False, path_length=None)
    if not constraints.ca:
        problems.append(f"{_label(cert)} is not a CA certificate")
    elif constraints.path_length is not None and intermediates_below > constraints.path_length:
        problems.append(f"{_label(cert)} allows {constraints.path_length} CAs below it")
    if not _key_usage_allows(cert, "key_cert_sign"):
        problems.append(f"{_label(cert)} may not sign certificates (key usage)")


def _key_usage_allows(cert: x509.Certificate, usage: str) -> bool:
    try:
        return getattr(cert.extensions.get_extension_for_class(x509.KeyUsage).value, usage)
    except x509.ExtensionNotFound:
        return True  # RFC 5280: without the extension the key is not restricted


def _check_fwid(report: HopperReport, leaf: x509.Certificate, problems: list[str]) -> bool:
    # The leaf key is certified for one firmware image; a report naming another FWID came from
    # firmware the key was not issued to. Older firmware sends no FWID: NVIDIA lets it pass.
    if report.fwid is None:
        return True
    try:
        certified = leaf_fwid(leaf)
    except GpuCertificateError as error:
        problems.append(str(error))
        return False
    if certified != report.fwid:
        problems.append(f"report FWID {report.fwid.hex()} differs from the {_label(leaf)} "
                        f"certificate's {certified.hex()}")
        return False
    return True


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The firmware digest in the leaf's TCG DICE extension (2.23.133.5.4.1), whose DER NVIDIA
    ends with SEQUENCE { id-sha384, OCTET STRING (48 bytes) }. NVIDIA signed the certificate, so
    reading those last bytes, as NVIDIA's verifier does, cannot be steered by the evidence."""
    try:
        value = leaf.extensions.get_extension_for_oid(_OID_TCG_DICE_TCB_INFO).value.value
    except x509.ExtensionNotFound:
        raise GpuCertificateError(f"{_label(leaf)} has no TCG DICE FWID extension") from None
    if value[-_FWID_SIZE - 2:-_FWID_SIZE] != bytes([0x04, _FWID_SIZE]):
        raise GpuCertificateError(f"{_label(leaf)} FWID extension does not end with a "
                                  "48-byte digest")
    return value[-_FWID_SIZE:]


def _check_policy(report: HopperReport, policy: GpuPolicy, problems: list[str]) -> None:
    if policy.expected_nonce is not None and report.nonce != policy.expected_nonce:
        problems.append(f"request nonce {report.nonce.hex()} is not the expected nonce")
    for name, allowed, value in (
            ("driver version", policy.allowed_driver_versions, report.driver_version),
            ("VBIOS version", policy.allowed_vbios_versions, report.vbios_version)):
        if allowed and value is None:
            problems.append(f"report states no {name}")
        elif allowed and value not in allowed:
            problems.append(f"{name} {value} is not allowed")
    for index, expected in sorted(policy.expected_measurements.items()):
        block = report.measurements.get(index)
        if block is None:
            problems.append(f"measurement {index} is absent")
        elif block.value.hex() != expected:
            problems.append(f"measurement {index} is {block.value.hex()}, expected {expected}")
