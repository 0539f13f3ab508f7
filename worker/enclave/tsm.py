"""An enclave whose evidence the CPU signs: a confidential VM (AMD SEV-SNP or Intel TDX) asked
through Linux's configfs-tsm report interface (Documentation/ABI/testing/configfs-tsm-report).

    mkdir /sys/kernel/config/tsm/report/<name>      a report entry, private to this process
    write <name>/inblob                             the 64 bytes of report data (client.binding)
    read  <name>/provider                           "sev_guest" or "tdx_guest"
    read  <name>/outblob                            the SNP ATTESTATION_REPORT, or the TDX quote
    read  <name>/auxblob                            SNP: the VCEK/ASK/ARK certificate table
    rmdir <name>

The keys live in this process's memory, which in a confidential VM the host cannot read. The
evidence is what client/attestation/enclave.py verifies: SNP carries the report and the
certificate table (the host must provision the VCEK for extended reports); TDX carries the quote
and its DCAP collateral, fetched from the configured PCCS (Intel signs it, so it may travel with
the quote). Without configfs-tsm this machine is no TEE guest: TsmUnavailable says so.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from client import binding, sealing
from worker.enclave.runtime import EnclaveError

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDER_KINDS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}


class TsmUnavailable(RuntimeError):
    """No configfs-tsm here: not a TDX or SEV-SNP guest (or configfs is not mounted)."""


def tsm_report(root: Path, inblob: bytes) -> tuple[str, bytes, bytes]:
    """(provider, outblob, auxblob) for `inblob`, from a report entry made and removed here."""
    entry = _new_entry(root)
    try:
        (entry / "inblob").write_bytes(inblob)
        provider = (entry / "provider").read_text().strip()
        outblob = (entry / "outblob").read_bytes()
        auxblob = (entry / "auxblob").read_bytes() if (entry / "auxblob").exists() else b""
    finally:
        _remove_entry(entry)
    return provider, outblob, auxblob


def _provider_kind(root: Path) -> str:
    """The evidence kind this machine's TSM gives (a report entry's provider, read at once)."""
    entry = _new_entry(root)
    try:
        provider = (entry / "provider").read_text().strip()
    finally:
        _remove_entry(entry)
    if provider not in PROVIDER_KINDS:
        raise TsmUnavailable(f"configfs-tsm provider {provider!r} is not one this agent knows "
                             f"({', '.join(PROVIDER_KINDS)})")
    return PROVIDER_KINDS[provider]


def _new_entry(root: Path) -> Path:
    """A fresh report entry: the kernel fills it with its attributes on mkdir."""
    entry = root / f"peercycles-{secrets.token_hex(8)}"
    entry.mkdir()
    return entry


def _remove_entry(entry: Path) -> None:
    """configfs removes the entry's attributes with it."""
    entry.rmdir()


class TsmEnclave:
    """The same interface as client.attestation.simulated.SimulatedEnclave, with hardware
    evidence."""

    def __init__(self, *, root: Path = TSM_ROOT, pccs_url: str | None = None) -> None:
        if not root.is_dir():
            raise TsmUnavailable(f"{root} does not exist: this machine is not a TDX or SEV-SNP guest "
                                 "with configfs-tsm (use --enclave simulated for development)")
        self.root, self.pccs_url = root, pccs_url
        self.kind = _provider_kind(root)
        self.private_key, self.public_key = sealing.keypair()
        self.signing_private_key = ed25519.Ed25519PrivateKey.generate()
        self.signing_key = sealing.b64_text(self.signing_private_key.public_key().public_bytes_raw())

    def evidence(self, *, model_digest: str, code_measurement: str, nonce: bytes) -> dict:
        data = binding.report_data(enclave_public_key=sealing.public_key_raw(self.public_key),
                                   signing_key=sealing.b64_canonical(self.signing_key, "signing_key"),
                                   model_digest=model_digest, code_measurement=code_measurement, nonce=nonce)
        try:
            provider, outblob, auxblob = tsm_report(self.root, data)
        except OSError as error:
            raise EnclaveError("evidence_unavailable", f"configfs-tsm refused a report: {error}") from None
        kind = PROVIDER_KINDS.get(provider)
        if kind != self.kind:
            raise EnclaveError("evidence_unavailable", f"configfs-tsm provider {provider!r} changed under the "
                                                       f"enclave (was {self.kind})")
        statement = {"kind": kind, "version": 1, "enclave_public_key": self.public_key,
                     "signing_key": self.signing_key, "model_digest": model_digest,
                     "code_measurement": code_measurement, "nonce": sealing.b64_text(bytes(nonce))}
        if kind == "sev-snp":
            if not auxblob:
                raise EnclaveError("evidence_unavailable", "the host provides no certificates with SNP reports "
                                                           "(extended reports): a verifier cannot check the VCEK")
            return {**statement, "report": sealing.b64_text(outblob), "certificates": sealing.b64_text(auxblob)}
        return {**statement, "quote": sealing.b64_text(outblob), "collateral": self._collateral(outblob)}

    def _collateral(self, quote: bytes) -> str:
        if not self.pccs_url:
            raise EnclaveError("evidence_unavailable", "a TDX quote needs its DCAP collateral: set the PCCS URL "
                                                       "(--pccs-url or PEER_PCCS_URL)")
        import dcap_qvl  # the node's requirement; an agent on TDX needs it too

        try:
            return asyncio.run(dcap_qvl.get_collateral(self.pccs_url, quote)).to_json()
        except Exception as error:  # noqa: BLE001 - any failure of the remote service
            raise EnclaveError("evidence_unavailable", f"the PCCS gave no collateral: {error}") from None
