"""Attestation test data: the real SEV-SNP and TDX vectors (tests/data/attestation/, origins in its
README) and the SEV-SNP certificate table laid out as the GHCB specification (4.1.8.1) says."""

import struct
import uuid
from datetime import datetime, timezone
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "attestation"
SNP_REPORT = (DATA / "snp" / "attestation.bin").read_bytes()
VCEK, ASK, ARK = ((DATA / "snp" / name).read_bytes() for name in ("kds_vcek.der", "milan_ask.der", "milan_ark.der"))
SNP_NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)  # inside the VCEK's and AMD's validity
TDX_QUOTE = (DATA / "tdx" / "tdx_quote").read_bytes()
TDX_COLLATERAL = (DATA / "tdx" / "tdx_quote_collateral.json").read_text()
TDX_NOW = datetime(2025, 6, 20, tzinfo=timezone.utc)  # inside the collateral's validity
GUIDS = {"vcek": "63da758d-e664-4564-adc5-f4b93be8accd", "ask": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
         "ark": "c0b406a4-a803-4952-9743-3fb6014cd0ae"}


def cert_table(certs: dict[str, bytes]) -> bytes:
    """Entries (GUID, offset, length; little-endian u32), an all-zero entry, then the certificates."""
    header_size = 24 * (len(certs) + 1)
    entries, blobs, offset = b"", b"", header_size
    for name, der in certs.items():
        entries += uuid.UUID(GUIDS[name]).bytes + struct.pack("<II", offset, len(der))
        blobs += der
        offset += len(der)
    return entries + bytes(24) + blobs
GPU_REPORT_HEX = (DATA / "nvidia" / "hopperAttestationReport.txt").read_text().strip()
GPU_CHAIN_PEM = (DATA / "nvidia" / "hopperCertChain.txt").read_text()
GPU_REPORT_NONCE_OFFSET = 4  # the SPDM request's nonce: report bytes 4..35
