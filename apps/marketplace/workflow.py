"""The network workflow (/network/, issue 7): real jobs through every tier on this node, each step
reported as it happens, every figure read on the spot from the job records and the ledger.

    open         routed (to whom, and why: the score's parts), tokens as they come
    verified     routed, tokens, the worker's commitment and its Ed25519 signature checked here
    settled      the verified job's capture as the ledger recorded it: worker / stakers / treasury
    confidential the page attests an enclave and seals a prompt (workflow_consumer.py asks it);
                 sealed pieces back, the enclave's signature
    cheater      a verified job routed to the demo cheater (a worker started with --cheat,
                 PEER_WORKFLOW_CHEATER), challenged by the user running the workflow, re-executed
                 by validators of other operators: the fault proven, the bond slashed, the
                 challenger paid, the rest burned

A step that cannot run here (no enclave attested, no cheater online) says why and is skipped; a
job is charged to the user as any job is, and refunded when it fails.
"""

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from apps.credits.ledger import STAKERS_POOL_CODE, TREASURY_CODE
from apps.credits.models import LedgerEntry
from apps.credits.pricing import MICRO_PER_CREDIT
from apps.credits.selectors import balance_get
from apps.marketplace.admission import job_admit
from apps.staking.models import Slash
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.verification.challenges import ChallengeRefused, challenge_open
from apps.verification.runner import validation_run
from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import roster_get
from apps.workers.routing import route_order
from apps.workers.selectors import workers_eligible
from worker.commitment import signature_valid

from .confidential import sealed_job_create
from .models import Job
from .relay import JobFailed, JobRelay
from .requests import parse_chat_request, parse_sealed_chat_request
from .services import InsufficientCredits, job_create

logger = logging.getLogger(__name__)
PROMPT = "In one sentence: why does a decentralized network verify the answers it sells?"
CONFIDENTIAL_PROMPT = "My blood test says ferritin 12 ng/mL. In one sentence, what could that mean?"
MAX_TOKENS = 24
SEAL_WAIT_SECONDS = 60.0


class StepSkipped(Exception):
    pass


class Workflow:
    """One run for `user`. `emit(step)` sends a step to the page; `ask_sealed(model, prompt)`
    returns the page's `peer_sealed` for that prompt (or None when the page could not attest)."""

    def __init__(self, *, user, emit, ask_sealed):
        self.user, self.emit, self.ask_sealed = user, emit, ask_sealed

    async def run(self) -> None:
        entry = await database_sync_to_async(_chat_entry)()
        if entry is None:
            await self.emit({"step": "workflow", "state": "failed", "message": "No chat model in the catalogue."})
            return
        await self.emit({"step": "workflow", "state": "running", "model": entry.name})
        for name, step in (("open", lambda: self._open(entry)),
                           ("verified", lambda: self._verified(entry)),
                           ("confidential", lambda: self._confidential(entry)),
                           ("cheater", lambda: self._cheater(entry))):
            try:
                await step()
            except StepSkipped as skipped:
                await self.emit({"step": name, "state": "skipped", "message": str(skipped)})
            except (JobFailed, InsufficientCredits) as failed:
                await self.emit({"step": name, "state": "failed", "message": _why(failed)})
        balance = await database_sync_to_async(balance_get)(user=self.user)
        await self.emit({"step": "workflow", "state": "done", "balance_credits": balance // MICRO_PER_CREDIT})

    async def _open(self, entry) -> None:
        job = await self._generation(entry, "open")
        await self.emit({"step": "open", "state": "done", "job_id": str(job.id), "completion_tokens": job.completion_tokens,
                         "charged_micro_usdc": job.charged_amount})

    async def _generation(self, entry, tier: str, *, route=None, step: str | None = None) -> Job:
        """Run one job of `tier`, reporting its routing and tokens under `step` (default: the
        tier); returns the settled job."""
        body = {"model": entry.name, "peer_tier": tier, "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPT}], "peer_route": route}
        chat = parse_chat_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode(),
                                  default_tier=tier, default_max_tokens=MAX_TOKENS, max_tokens_limit=MAX_TOKENS)
        job = await database_sync_to_async(job_create)(user=self.user, chat=chat, entry=entry)
        return await self._relay(JobRelay(job=job, entry=entry, route=chat.route), step or tier)

    async def _relay(self, relay: JobRelay, step: str) -> Job:
        slot = await job_admit()
        try:
            await relay.start()
            await self.emit({"step": step, "state": "routed",
                             **await database_sync_to_async(_routing_explained)(relay)})
            async for piece in relay.deltas():
                if isinstance(piece, dict):
                    await self.emit({"step": step, "state": "sealed_piece", "seq": len(relay.sealed_parts) - 1,
                                     "sealed": piece})
                else:
                    await self.emit({"step": step, "state": "token", "text": piece})
            return relay.job
        finally:
            if not relay.settled:
                await relay.abort("the workflow page left")
            await relay.close()
            slot.release()

    async def _verified(self, entry) -> None:
        job = await self._generation(entry, "verified")
        commitment = job.commitment or {}
        key, signature = commitment.get("worker_public_key"), commitment.get("signature")
        await self.emit({"step": "verified", "state": "committed", "hash": commitment.get("hash"),
                         "signature": signature, "worker_public_key": key,
                         "signature_valid": bool(key and signature) and signature_valid(
                             public_key=key, commitment=commitment["hash"], signature=signature),
                         "proof_url": f"/v1/jobs/{job.id}/proof"})
        await self.emit({"step": "settled", "state": "done", **await database_sync_to_async(_settlement)(job)})

    async def _confidential(self, entry) -> None:
        await self.emit({"step": "confidential", "state": "sealing", "prompt": CONFIDENTIAL_PROMPT})
        peer_sealed = await self.ask_sealed(entry.name, CONFIDENTIAL_PROMPT)
        if peer_sealed is None:
            raise StepSkipped("the page could not attest an enclave for this model (none attested, or the "
                              "evidence did not pass its checks)")
        body = {"model": entry.name, "peer_tier": "confidential", "max_tokens": MAX_TOKENS, "stream": True,
                "peer_sealed": peer_sealed}
        chat = parse_sealed_chat_request(json.dumps(body).encode(), default_max_tokens=MAX_TOKENS,
                                         max_tokens_limit=MAX_TOKENS)
        job = await database_sync_to_async(sealed_job_create)(user=self.user, chat=chat, entry=entry)
        await self.emit({"step": "confidential", "state": "sealed", "job_id": str(job.id),
                         "ciphertext": peer_sealed["request"]["ciphertext"][:96],
                         "stored_messages": job.messages})
        job = await self._relay(JobRelay(job=job, entry=entry), "confidential")
        proof = job.commitment or {}
        await self.emit({"step": "confidential", "state": "done", "enclave_signature": proof.get("enclave_signature"),
                         "attestation": proof.get("attestation")})

    async def _cheater(self, entry) -> None:
        cheater = await database_sync_to_async(_cheater_online)(entry)
        if cheater is None:
            raise StepSkipped(f"no worker named {settings.PEER_WORKFLOW_CHEATER!r} serves the verified tier here "
                              "(make run starts one with --cheat)")
        before = await database_sync_to_async(_slash_facts)(cheater)
        job = await self._generation(entry, "verified", route={"only": [str(cheater.id)]}, step="cheater")
        try:
            challenge, validation = await database_sync_to_async(challenge_open)(user=self.user, job_id=job.id)
        except ChallengeRefused as refused:
            raise StepSkipped(f"the challenge was refused: {refused.message}") from None
        await self.emit({"step": "cheater", "state": "challenged", "job_id": str(job.id),
                         "bond_held_micro_usdc": challenge.bond})
        await validation_run(validation.id)
        after = await database_sync_to_async(_slash_facts)(cheater, job=job)
        await self.emit({"step": "cheater", "state": after["verdict"], **after,
                         "bond_before": before["bond"], "burned_before": before["burned"]})


def _why(failed) -> str:
    if isinstance(failed, InsufficientCredits):
        return f"not enough credits: the job is quoted at {failed.price} micro-USDC"
    return failed.message


def _chat_entry():
    return CatalogueModel.objects.filter(active=True, kind=CatalogueModel.Kind.CHAT).order_by("name").first()


def _routing_explained(relay: JobRelay) -> dict:
    """Who got the job and why: the chosen worker's score and its parts among the candidates."""
    roster = roster_get(entry=relay.entry, tier=relay.job.tier)
    ranked = route_order(roster.candidates, relay.route)
    chosen = next((r for r in ranked if r.candidate.worker_id == str(relay.worker_id)), None)
    name = Worker.objects.filter(id=relay.worker_id).values_list("name", flat=True).first()
    return {"job_id": str(relay.job.id), "worker_id": str(relay.worker_id), "worker": name,
            "candidates": len(ranked), "rank": ranked.index(chosen) + 1 if chosen else None,
            "score": round(chosen.score, 4) if chosen else None,
            "parts": {k: round(v, 4) for k, v in chosen.parts.items()} if chosen else {}}


def _settlement(job: Job) -> dict:
    """The capture of `job` as the ledger holds it, per account kind."""
    entries = LedgerEntry.objects.filter(transaction__reference=job.reference, transaction__kind="capture") \
        .values_list("account__code", "amount")
    by_code = dict(entries)
    share = {"worker": sum(a for c, a in by_code.items() if c.startswith("worker:")),
             "stakers_pool": by_code.get(STAKERS_POOL_CODE, 0), "treasury": by_code.get(TREASURY_CODE, 0)}
    charged = sum(share.values())
    return {"job_id": str(job.id), "charged_micro_usdc": charged, **{f"{k}_micro_usdc": v for k, v in share.items()},
            "percent": {k: round(v * 100 / charged, 2) if charged else 0 for k, v in share.items()},
            "entries": [{"account": c, "amount": a} for c, a in by_code.items()]}


def _cheater_online(entry):
    """The demo cheater, if it is online and still on the verified tier. Once caught, its halved
    reputation and slashed bond take it off (docs/verification.md): the step says so."""
    worker = Worker.objects.filter(name=settings.PEER_WORKFLOW_CHEATER, revoked_at__isnull=True) \
        .exclude(status=Worker.Status.OFFLINE).first()
    if worker is None or "verified" not in worker.tiers:
        return None
    eligible = workers_eligible(entry=entry, tier="verified", statuses=(Worker.Status.IDLE, Worker.Status.BUSY))
    if worker.id not in {w.id for w, _ in eligible}:
        raise StepSkipped(f"{worker.name} was already caught: its reputation ({worker.reputation:.2f}) or bond "
                          "keeps it off the verified tier now, as it should (restart the demo to see it again)")
    return worker


def _slash_facts(cheater, job: Job | None = None) -> dict:
    facts = {"bond": worker_bond_get(worker=cheater), "burned": peer_supply()["burned"]}
    if job is None:
        return facts
    job.refresh_from_db()
    slash = Slash.objects.filter(worker=cheater).order_by("-created_at").first()
    rounds = list(job.validations.order_by("round").values("round", "outcome", "validator_id"))
    return {**facts, "verdict": "slashed" if job.verification_status == Job.Verification.FAILED else "not proven",
            "verification_status": job.verification_status,
            "validations": [{**r, "validator_id": str(r["validator_id"])} for r in rounds],
            "slash": {"amount": slash.amount, "burned": slash.burned, "to_challenger": slash.to_challenger}
            if slash and job.verification_status == Job.Verification.FAILED else None}


async def wait_or_none(future: asyncio.Future, timeout: float = SEAL_WAIT_SECONDS):
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        return None
