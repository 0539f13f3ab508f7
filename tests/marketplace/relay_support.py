"""A job ready for a JobRelay, on the real database: the built-in model's catalogue entry, one idle
worker of bob's serving it on a made-up channel, and alice's job for it held from 100 credits."""

import json

from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_create, job_create_and_claim
from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import roster_forget
from apps.workers.services import worker_register


def job_for_relay(alice, bob, *, stream: bool = False, claim: bool = False):
    """(entry, worker, parsed request, job), and with `claim` the job is created as the API
    creates it, with the worker claimed (services.job_create_and_claim): then (entry, worker,
    parsed request, job, the claim)."""
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name="specific.test!abc", models_served=[
        {"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    credits_grant(user=alice, credits=100)
    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                       "peer_tier": "open", "stream": stream}).encode()
    chat = parse_chat_request(body, default_tier="open", default_max_tokens=8, max_tokens_limit=1024)
    if claim:
        roster_forget()  # the worker was idle before this roster's life began
        return entry, worker, chat, *job_create_and_claim(user=alice, chat=chat, entry=entry)
    return entry, worker, chat, job_create(user=alice, chat=chat, entry=entry)
