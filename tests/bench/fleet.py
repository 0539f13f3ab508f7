"""The benchmark's corner of the node's database: a catalogue entry for the paced mock, a fleet
of open-tier workers for the agent pool, and a buyer with an API key and enough credits.

Idempotent, like the demo fleet (apps/marketplace/demo.py): workers are reused by name and
their tokens rotated (only hashes are stored, so every run needs new ones). Run it on a
database of its own (DATABASE_URL): it takes every worker of that database offline first.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLIC_MODEL = "bench-mock"
BUYER = "bench-buyer"
OPERATOR = "bench-operator"


@dataclass
class Fleet:
    api_key: str
    worker_tokens: list[str]


def fleet_seed(*, agents: int, served_model: str, digest: str, credits: int) -> Fleet:
    from apps.accounts.services import api_key_issue, api_keys_revoke_named, user_get_or_create
    from apps.credits.pricing import credits_to_micro
    from apps.credits.selectors import balance_get
    from apps.credits.services import credits_grant
    from apps.workers.models import CatalogueModel, Worker
    from apps.workers.services import worker_register, worker_token_rotate

    CatalogueModel.objects.update_or_create(name=PUBLIC_MODEL, defaults={
        "served_model": served_model, "digests": [digest], "context_length": 32768,
        # No vocabulary file: the node estimates tokens (4 bytes each) as for any HTTP model.
        "tokenizer_path": "", "active": True,
        "description": "The relay benchmark's paced mock (tests/bench/paced_openai.py)."})
    # Links of an earlier run that was killed may still be marked idle: nothing answers them.
    Worker.objects.update(status=Worker.Status.OFFLINE, channel_name="", current_job_id=None)
    operator = user_get_or_create(username=OPERATOR)
    tokens = []
    for index in range(agents):
        name = f"bench-{index}"
        worker = Worker.objects.filter(operator=operator, name=name).first()
        if worker is None:
            _, token = worker_register(operator=operator, name=name, tiers=["open"])
        else:
            token = worker_token_rotate(worker_id=worker.id)
        tokens.append(token)
    buyer = user_get_or_create(username=BUYER)
    missing = credits_to_micro(credits) - balance_get(user=buyer)
    if missing > 0:
        credits_grant(user=buyer, credits=-(-missing // credits_to_micro(1)), memo="bench top-up")
    api_keys_revoke_named(user=buyer, name="bench")
    _, raw_key = api_key_issue(user=buyer, name="bench")
    return Fleet(api_key=raw_key, worker_tokens=tokens)


def workers_idle(*, names_prefix: str = "bench-") -> int:
    from apps.workers.models import Worker

    return Worker.objects.filter(name__startswith=names_prefix, status=Worker.Status.IDLE).count()
