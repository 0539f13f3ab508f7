"""The node's side of attestation (DESIGN.md §5, docs/confidential.md): check an enclave's
evidence against the node's policy and remember the verdict on its worker, which confidential
routing reads (apps/workers/selectors.workers_eligible).

Policy: simulated enclaves refused unless PEER_ALLOW_SIMULATED_ENCLAVE; the model digest must be
one the catalogue accepts; the agent code measurement must be allowed (PEER_ATTESTATION_CODE_
MEASUREMENTS, by default the measurement of the agent code this node ships), and so must SEV-SNP
launch measurements and TDX MRTDs (PEER_ATTESTATION_SNP_MEASUREMENTS, _TDX_MRTDS) — per model, a
catalogue entry's `attestation_policy` replaces any of these lists; the nonce must be the one
the node sent on that link, once; a verdict holds PEER_ATTESTATION_MAX_AGE seconds.

Evidence kinds (client/attestation/enclave.py, the verifier clients use too): "simulated";
"sev-snp" (the report and its VCEK/ASK/ARK table, ARK pinned; launch measurements allowed by
PEER_ATTESTATION_SNP_MEASUREMENTS) and "tdx" (the quote and Intel-signed DCAP collateral; MRTDs
allowed by PEER_ATTESTATION_TDX_MRTDS), as the agent reads them from configfs-tsm.
"""

import base64
import binascii
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import roster_changed
from client.attestation.enclave import EvidencePolicy, verify_enclave_evidence
from client.attestation.snp import SnpPolicy
from client.attestation.tdx import TdxPolicy
from worker.measurement import code_measurement

NONCE_SIZE = 32
POLICY_LISTS = ("code_measurements", "snp_measurements", "tdx_mrtds")
# A node nonce is answered within this long, or not at all (single use, short-lived).
NONCE_LIFETIME_SECONDS = 30.0


def nonce_new() -> str:
    """A fresh challenge: 32 bytes from the OS's CSPRNG, base64."""
    return base64.b64encode(secrets.token_bytes(NONCE_SIZE)).decode("ascii")


def nonce_bytes(nonce_b64) -> bytes | None:
    """The 32 bytes of a canonical base64 nonce, or None."""
    if not isinstance(nonce_b64, str):
        return None
    try:
        raw = base64.b64decode(nonce_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != NONCE_SIZE or base64.b64encode(raw).decode("ascii") != nonce_b64:
        return None
    return raw


def allowed_code_measurements() -> frozenset[str]:
    return frozenset(settings.PEER_ATTESTATION_CODE_MEASUREMENTS or {code_measurement()})


def catalogue_digests() -> frozenset[str]:
    digests = set()
    for entry_digests in CatalogueModel.objects.filter(active=True, kind=CatalogueModel.Kind.CHAT) \
            .values_list("digests", flat=True):
        digests.update(entry_digests or [])
    return frozenset(digests)


def node_policy(model_digest: str) -> EvidencePolicy:
    """The node's policy for evidence about the model with `model_digest`: the settings, with the
    lists its catalogue entries set in `attestation_policy` in their place."""
    per_model = _model_policy(model_digest)
    return EvidencePolicy(
        allow_simulated=settings.PEER_ALLOW_SIMULATED_ENCLAVE, allowed_model_digests=catalogue_digests(),
        allowed_code_measurements=per_model.get("code_measurements", allowed_code_measurements()),
        snp=SnpPolicy(allowed_measurements=per_model.get("snp_measurements",
                                                         frozenset(settings.PEER_ATTESTATION_SNP_MEASUREMENTS))),
        tdx=TdxPolicy(allowed_mrtds=per_model.get("tdx_mrtds", frozenset(settings.PEER_ATTESTATION_TDX_MRTDS))))


def _model_policy(model_digest: str) -> dict[str, frozenset[str]]:
    """The lists the catalogue's entries for `model_digest` set (joined when several do)."""
    lists: dict[str, set[str]] = {}
    for entry in CatalogueModel.objects.filter(active=True, kind=CatalogueModel.Kind.CHAT) \
            .values_list("digests", "attestation_policy"):
        digests, policy = entry
        if model_digest in (digests or []):
            for name in POLICY_LISTS:
                if isinstance((policy or {}).get(name), list):
                    lists.setdefault(name, set()).update(str(value) for value in policy[name])
    return {name: frozenset(values) for name, values in lists.items()}


def evidence_check(evidence, *, nonce: bytes, model_digest: str) -> dict:
    """The node's verdict on one enclave's evidence for `model_digest` over its `nonce`:
    {"ok", "kind", "simulated", "enclave_key", "signing_key", "code_measurement", "problems"}."""
    verdict = verify_enclave_evidence(evidence, expected_nonce=nonce, policy=node_policy(model_digest),
                                      now=timezone.now())
    problems = list(verdict.problems)
    if verdict.model_digest and verdict.model_digest != model_digest:
        problems.append(f"evidence is for model {verdict.model_digest}, not {model_digest}")
    return {"ok": not problems, "kind": verdict.kind, "simulated": verdict.simulated,
            "enclave_key": verdict.enclave_key, "signing_key": verdict.signing_key,
            "code_measurement": verdict.code_measurement, "problems": problems}


def worker_attestation_record(*, worker_id, model_digest: str, nonce: str, evidence: dict) -> dict:
    """Check `evidence` (the answer to the node's `nonce`) and record the verdict for this model
    on the worker. An ok verdict makes the worker routable for confidential jobs of that model
    until it expires; a refused one takes the model off at once. Returns the verdict."""
    raw_nonce = nonce_bytes(nonce)
    verdict = evidence_check(evidence, nonce=raw_nonce, model_digest=model_digest)
    now = timezone.now()
    expires = now + timedelta(seconds=settings.PEER_ATTESTATION_MAX_AGE)
    record = {**verdict, "nonce": nonce, "evidence": evidence, "verified_at": now.isoformat(),
              "expires_at": expires.isoformat() if verdict["ok"] else None}
    with transaction.atomic():
        worker = Worker.objects.select_for_update().only("attestation", "enclave_key").get(id=worker_id)
        attestation = dict(worker.attestation or {})
        models = dict(attestation.get("models") or {})
        if verdict["ok"] and worker.enclave_key and worker.enclave_key != verdict["enclave_key"]:
            # One agent, one enclave: evidence naming another key means the enclave changed under
            # the link (or lies); nothing earlier is trusted any more.
            models = {}
        models[model_digest] = record
        ok_expiries = [m["expires_at"] for m in models.values() if m.get("ok")]
        Worker.objects.filter(id=worker_id).update(
            attestation={"models": models},
            enclave_key=verdict["enclave_key"] if verdict["ok"] else worker.enclave_key,
            attested_until=max(ok_expiries) if ok_expiries else None)
    roster_changed()
    return record
