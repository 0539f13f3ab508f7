"""Verifiers for TEE evidence (DESIGN.md §5, "Attested"), shared by the node and by clients.

`client.attestation.snp` checks AMD SEV-SNP attestation reports. Pure Python: the standard
library and `cryptography`, no Django.
"""
