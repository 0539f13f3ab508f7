"""N parallel requests against credits that cover K jobs: exactly K run, the rest get 402,
nothing deadlocks, and the ledger balances (PostgreSQL, real node, real WebSockets)."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from apps.accounts.services import api_key_issue
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import PROMO_CODE, Leg, ledger_post, system_account, user_account
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_quote
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register

from tests.conftest import bond

from .conftest import ScriptedAgent, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
BODY = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
N, K = 8, 3


async def _answer(ws, frame):
    await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))
    await ws.send(json.dumps({"type": "job.delta", "job_id": frame["job_id"], "seq": 0, "text": "ok"}))
    # Long enough that no job settles (releasing its unused hold) before every request was held.
    await asyncio.sleep(1.5)
    await ws.send(json.dumps({"type": "job.done", "job_id": frame["job_id"], "finish_reason": "stop",
                              "model_digest": frame["model_digest"]}))


def test_parallel_requests_run_exactly_as_many_jobs_as_the_credits_cover(node_url, catalogue, carol, bob):
    from django.db import transaction

    quote = job_quote(chat=parse_chat_request(json.dumps(BODY).encode(), default_tier="verified",
                                              default_max_tokens=16, max_tokens_limit=1024),
                      entry=CatalogueModel.objects.get(name="gemma-3-270m")).amount
    with transaction.atomic():  # exactly K quotes' worth, to the micro-USDC
        ledger_post(kind="grant", legs=[Leg(system_account(PROMO_CODE), -K * quote),
                                        Leg(user_account(user=carol), K * quote)])
    _, key = api_key_issue(user=carol)
    workers = [worker_register(operator=bob, name=f"w{i}", tiers=["verified"]) for i in range(K)]
    for worker, _ in workers:
        bond(worker)
    agents = [ScriptedAgent(node_url, token, catalogue, _answer) for _, token in workers]
    for agent in agents:
        agent.__enter__()
    try:
        for worker, _ in workers:
            wait_for_status(worker.id, Worker.Status.IDLE)
        with ThreadPoolExecutor(N) as pool:
            statuses = sorted(pool.map(lambda _: httpx.post(
                f"{node_url}/v1/chat/completions", json=BODY, timeout=60,
                headers={"authorization": f"Bearer {key}"}).status_code, range(N)))
    finally:
        for agent in agents:
            agent.__exit__(None, None, None)
    assert statuses == [200] * K + [402] * (N - K)
    assert Job.objects.filter(user=carol, status="completed").count() == K
    assert held_get(user=carol) == 0
    assert balance_get(user=carol) == K * quote - sum(j.charged_amount for j in Job.objects.filter(user=carol))
