"""One verifier for an enclave's evidence of any kind, for the node and for clients alike
(docs/confidential.md, docs/attestation.md): what the agent's enclave sends in answer to a nonce.

Every kind carries the same statement, and the hardware (or, simulated, a self-made key) signs
64 bytes of report data that bind it (`client.binding`):

    {"kind": "simulated" | "sev-snp" | "tdx", "version": 1,
     "enclave_public_key": b64 X25519, "signing_key": b64 Ed25519,
     "model_digest": "sha256:<hex>", "code_measurement": str, "nonce": b64 (32 bytes), ...}

plus, per kind:
- simulated: report_data, platform_key, signature (`client.attestation.simulated`);
- sev-snp: "report", the ATTESTATION_REPORT (b64), and "certificates", the extended report's
  certificate table (b64, GHCB spec 4.1.8.1, what configfs-tsm's auxblob holds): VCEK, ASK, ARK;
  verified by `client.attestation.snp` with the ARK pinned;
- tdx: "quote" (b64) and "collateral" (the DCAP collateral as JSON text, which Intel signs, so it
  may come from the enclave's host); verified by `client.attestation.tdx`;
- either hardware kind may add "gpus": [{"report": hex (as NVML gives it), "certificates": PEM,
  the device chain leaf first, root last}], NVIDIA GPU evidence whose SPDM request nonce is
  SHA-256 of the report data, so the GPUs answer the same challenge and statement as the CPU;
  verified by `client.attestation.nvidia` with NVIDIA's device root pinned.

The verifier computes the report data the statement and *its own* nonce give and requires the
hardware-signed report data to be exactly that: a replayed nonce, another key, another model or
other code all fail the same comparison. Unreadable evidence is a refused verdict, never an
exception: whoever sent it is not trusted to send well-formed data.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime

from client import binding
from client.sealing import b64_canonical
from client.attestation import nvidia, snp, tdx
from client.attestation.simulated import SimulatedEvidenceError, SimulatedPolicy, verify_simulated

VERSION = 1
HARDWARE_KINDS = ("sev-snp", "tdx")
_STATEMENT = ("enclave_public_key", "signing_key", "model_digest", "code_measurement", "nonce")
_KIND_FIELDS = {"sev-snp": ("report", "certificates"), "tdx": ("quote", "collateral")}
# GUIDs of the SEV-SNP certificate table (GHCB specification, 4.1.8.1), in RFC byte order.
SNP_CERT_GUIDS = {uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
                  uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
                  uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark"}


class EvidenceFormatError(ValueError):
    """Evidence that cannot be read: fields, base64, lengths, the certificate table."""


@dataclass(frozen=True)
class EvidencePolicy:
    """What the caller accepts. Empty sets allow any value."""

    allow_simulated: bool = False
    allowed_model_digests: frozenset[str] = frozenset()
    allowed_code_measurements: frozenset[str] = frozenset()
    snp: snp.SnpPolicy = snp.SnpPolicy()  # its expected_report_data is set per verification
    tdx: tdx.TdxPolicy = tdx.TdxPolicy()
    gpu: nvidia.GpuPolicy = nvidia.GpuPolicy()  # its expected_nonce is set per verification

    def __post_init__(self):
        for name in ("allowed_model_digests", "allowed_code_measurements"):
            if isinstance(getattr(self, name), str):  # a bare str would become its characters
                raise TypeError(f"{name} is a set of strings, not one string")
            object.__setattr__(self, name, frozenset(getattr(self, name)))


@dataclass(frozen=True)
class EnclaveVerdict:
    ok: bool
    kind: str | None
    simulated: bool
    enclave_key: str  # b64; what a caller seals to when ok
    signing_key: str  # b64; what the answers' signatures are checked with when ok
    model_digest: str
    code_measurement: str
    problems: tuple[str, ...]


def verify_enclave_evidence(evidence: object, *, expected_nonce: bytes, policy: EvidencePolicy,
                            now: datetime) -> EnclaveVerdict:
    """The verdict on `evidence` answering the caller's `expected_nonce` (module docstring)."""
    kind = evidence.get("kind") if isinstance(evidence, dict) else None
    if kind == "simulated":
        return _simulated(evidence, expected_nonce, policy)
    if kind not in HARDWARE_KINDS:
        return _refused(kind, f"evidence kind {kind!r} is not one this verifier knows "
                              f"(simulated, {', '.join(HARDWARE_KINDS)})")
    try:
        raw = _statement(evidence, kind)
        expected = binding.report_data(enclave_public_key=raw["enclave_public_key"], signing_key=raw["signing_key"],
                                       model_digest=evidence["model_digest"],
                                       code_measurement=evidence["code_measurement"], nonce=expected_nonce)
        problems = list(_hardware_problems(kind, evidence, expected, policy, now))
    except (EvidenceFormatError, binding.BindingError, snp.SnpError, tdx.TdxError, nvidia.GpuEvidenceError) as error:
        return _refused(kind, f"unreadable evidence: {error}")
    problems += _allowlist_problems(evidence, policy)
    return EnclaveVerdict(ok=not problems, kind=kind, simulated=False,
                          enclave_key=evidence["enclave_public_key"], signing_key=evidence["signing_key"],
                          model_digest=evidence["model_digest"], code_measurement=evidence["code_measurement"],
                          problems=tuple(problems))


def snp_certificate_table(table: bytes) -> dict[str, bytes]:
    """{"vcek" | "ask" | "ark": DER} from a GHCB certificate table: entries of GUID (16 bytes),
    offset and length (little-endian u32, from the table's start), ended by an all-zero entry."""
    found, position = {}, 0
    while True:
        if position + 24 > len(table):
            raise EvidenceFormatError("the certificate table has no terminating entry")
        guid, offset, length = table[position:position + 16], *struct.unpack_from("<II", table, position + 16)
        if guid == bytes(16):
            return found
        if offset + length > len(table):
            raise EvidenceFormatError("a certificate table entry points past the table")
        name = SNP_CERT_GUIDS.get(uuid.UUID(bytes=guid))
        if name is not None:
            found[name] = table[offset:offset + length]
        position += 24


def _hardware_problems(kind: str, evidence: dict, expected: bytes, policy: EvidencePolicy, now: datetime):
    return [*_cpu_problems(kind, evidence, expected, policy, now),
            *_gpu_problems(evidence.get("gpus", []), expected, policy, now)]


def _gpu_problems(gpus: object, expected: bytes, policy: EvidencePolicy, now: datetime) -> list[str]:
    if not isinstance(gpus, list) or not all(isinstance(g, dict) and set(g) == {"report", "certificates"}
                                             and all(isinstance(v, str) for v in g.values()) for g in gpus):
        raise EvidenceFormatError('gpus is a list of {"report": hex, "certificates": PEM}')
    gpu_policy = type(policy.gpu)(**{**policy.gpu.__dict__, "expected_nonce": hashlib.sha256(expected).digest()})
    problems = []
    for index, gpu in enumerate(gpus):
        # The chain carries its root; the policy pins which roots count (NVIDIA's device root).
        root = gpu["certificates"][gpu["certificates"].rfind("-----BEGIN CERTIFICATE-----"):]
        verdict = nvidia.verify_evidence(gpu["report"], gpu["certificates"], root, policy=gpu_policy, now=now)
        problems += [f"GPU {index}: {problem}" for problem in verdict.problems]
    return problems


def _cpu_problems(kind: str, evidence: dict, expected: bytes, policy: EvidencePolicy, now: datetime):
    if kind == "sev-snp":
        certificates = snp_certificate_table(_b64(evidence["certificates"], "certificates"))
        missing = {"vcek", "ask", "ark"} - set(certificates)
        if missing:
            raise EvidenceFormatError(f"the certificate table lacks {', '.join(sorted(missing))}")
        verdict = snp.verify_report(_b64(evidence["report"], "report"), certificates["vcek"], certificates["ask"],
                                    certificates["ark"], now=now,
                                    policy=_with_report_data(policy.snp, expected))
        return verdict.problems
    collateral = evidence["collateral"]
    if not isinstance(collateral, str):
        raise EvidenceFormatError("collateral is the DCAP collateral as JSON text")
    verdict = tdx.verify_quote(_b64(evidence["quote"], "quote"), collateral, now=now,
                               policy=_with_report_data(policy.tdx, expected))
    return verdict.problems


def _with_report_data(kind_policy, expected: bytes):
    return type(kind_policy)(**{**kind_policy.__dict__, "expected_report_data": expected})


def _statement(evidence: dict, kind: str) -> dict[str, bytes]:
    wanted = {"kind", "version", *_STATEMENT, *_KIND_FIELDS[kind]}
    missing, unknown = wanted - evidence.keys(), evidence.keys() - wanted - {"gpus"}
    if missing or unknown:
        raise EvidenceFormatError(f"{kind} evidence has exactly the fields {sorted(wanted)}; missing "
                                  f"{sorted(missing)}, unknown {sorted(map(str, unknown))}")
    if type(evidence["version"]) is not int or evidence["version"] != VERSION:
        raise EvidenceFormatError(f"version {evidence['version']!r} is not {VERSION}")
    return {name: _b64(evidence[name], name) for name in ("enclave_public_key", "signing_key", "nonce")}


def _simulated(evidence: dict, expected_nonce: bytes, policy: EvidencePolicy) -> EnclaveVerdict:
    try:
        verdict = verify_simulated(evidence, policy=SimulatedPolicy(
            allow_simulated=policy.allow_simulated, expected_nonce=expected_nonce,
            allowed_model_digests=policy.allowed_model_digests,
            allowed_code_measurements=policy.allowed_code_measurements))
    except SimulatedEvidenceError as error:
        return _refused("simulated", f"unreadable evidence: {error}")
    return EnclaveVerdict(ok=verdict.ok, kind="simulated", simulated=True, enclave_key=verdict.enclave_public_key,
                          signing_key=verdict.signing_key, model_digest=evidence["model_digest"],
                          code_measurement=evidence["code_measurement"], problems=verdict.problems)


def _allowlist_problems(evidence: dict, policy: EvidencePolicy) -> list[str]:
    problems = []
    if policy.allowed_model_digests and evidence["model_digest"] not in policy.allowed_model_digests:
        problems.append(f"model digest {evidence['model_digest']} is not allowed")
    if policy.allowed_code_measurements and evidence["code_measurement"] not in policy.allowed_code_measurements:
        problems.append(f"code measurement {evidence['code_measurement']!r} is not allowed")
    return problems


def _refused(kind, problem: str) -> EnclaveVerdict:
    return EnclaveVerdict(ok=False, kind=kind if isinstance(kind, str) else None, simulated=kind == "simulated",
                          enclave_key="", signing_key="", model_digest="", code_measurement="",
                          problems=(problem,))


def _b64(value: object, field: str) -> bytes:
    return b64_canonical(value, field, error=EvidenceFormatError)

