"""Verifiers for TEE evidence (DESIGN.md §5, "Attested"), shared by the node and by clients.

- `client.attestation.snp`: AMD SEV-SNP attestation reports (the standard library and
  `cryptography`).
- `client.attestation.tdx`: Intel TDX and SGX DCAP quotes with their collateral (`dcap-qvl`).
- `client.attestation.nvidia`: NVIDIA Hopper GPU evidence (SPDM measurements, device chain).

Each returns a verdict (`ok`, what verified, `problems` in words) and raises only for input it
cannot read. No Django: docs/attestation.md.
"""
