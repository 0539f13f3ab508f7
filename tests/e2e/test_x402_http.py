"""x402 over HTTP, end to end: 402 with PAYMENT-REQUIRED, the official x402 client pays on the
local Solana runtime, the retry with PAYMENT-SIGNATURE runs the job and answers PAYMENT-RESPONSE."""

import asyncio
import base64
import json

import httpx
import pytest
from solders.keypair import Keypair

from apps.accounts.services import api_key_issue
from apps.credits.models import X402Payment
from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.workers.models import Worker
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401

from .conftest import ScriptedAgent, running_node, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
BODY = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def paid_node(usdc, tmp_path):
    """A node whose settings point at the local cluster, with a hot wallet that pays x402 fees."""
    hot = Keypair()
    usdc.chain.fund(hot.pubkey())
    path = tmp_path / "hot.json"
    path.write_text(json.dumps(list(bytes(hot))))
    with running_node("node-x402.log", PEER_SOLANA_RPC_URL=usdc.chain.url, PEER_USDC_MINT=str(usdc.mint),
                      PEER_PAY_TO=str(usdc.node.pubkey()), PEER_PAYOUT_KEYPAIR=str(path)) as url:
        yield url


def _payment_for(response, wallet, usdc) -> str:
    from x402 import x402ClientSync
    from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
    from x402.mechanisms.svm.exact.register import register_exact_svm_client
    from x402.mechanisms.svm.signers import KeypairSigner

    client = register_exact_svm_client(x402ClientSync(), KeypairSigner(wallet.keypair), rpc_url=usdc.chain.url)
    client.set_spend_controls({"allowed_assets": True})
    required = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    return encode_payment_signature_header(client.create_payment_payload(required))


async def _answer(ws, frame):
    await ws.send(json.dumps({"type": "job.accepted", "job_id": frame["job_id"]}))
    await ws.send(json.dumps({"type": "job.delta", "job_id": frame["job_id"], "seq": 0, "text": "paid answer"}))
    await ws.send(json.dumps({"type": "job.done", "job_id": frame["job_id"], "finish_reason": "stop",
                              "model_digest": frame["model_digest"]}))


def _post(url, key, **headers):
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60,
                      headers={"authorization": f"Bearer {key}", **headers})


def test_a_request_paid_with_x402_runs_and_answers_the_settlement(paid_node, usdc, catalogue, mallory, bob_worker):
    _, key = api_key_issue(user=mallory)
    wallet = usdc.wallet(5 * USDC)
    with ScriptedAgent(paid_node, bob_worker[1], catalogue, _answer):
        wait_for_status(bob_worker[0].id, Worker.Status.IDLE)
        unpaid = _post(paid_node, key)
        assert unpaid.status_code == 402
        price = int(unpaid.json()["accepts"][0]["amount"])
        paid = _post(paid_node, key, **{"PAYMENT-SIGNATURE": _payment_for(unpaid, wallet, usdc)})
    assert paid.status_code == 200, paid.text
    assert paid.json()["choices"][0]["message"]["content"] == "paid answer"
    settlement = json.loads(base64.b64decode(paid.headers["PAYMENT-RESPONSE"]))
    assert settlement["success"] is True and settlement["payer"] == str(wallet.pubkey)
    assert usdc.node_balance() == price  # on chain
    job = Job.objects.get(user=mallory)
    assert X402Payment.objects.get().amount == price and job.hold_amount == price
    assert balance_get(user=mallory) == price - job.charged_amount and held_get(user=mallory) == 0


def test_a_paid_request_whose_job_fails_is_refunded_to_the_payers_credits(paid_node, usdc, catalogue, mallory,
                                                                          bob_worker):
    _, key = api_key_issue(user=mallory)  # bob's worker is registered but offline: the job cannot run
    wallet = usdc.wallet(5 * USDC)
    unpaid = _post(paid_node, key)
    price = int(unpaid.json()["accepts"][0]["amount"])
    failed = _post(paid_node, key, **{"PAYMENT-SIGNATURE": _payment_for(unpaid, wallet, usdc)})
    assert failed.status_code == 503 and "not charged" in failed.json()["error"]["message"]
    assert usdc.node_balance() == price and balance_get(user=mallory) == price  # kept as credits


def test_a_bad_payment_header_gets_402_again_with_the_reason(paid_node, usdc, catalogue, mallory):
    _, key = api_key_issue(user=mallory)
    response = _post(paid_node, key, **{"PAYMENT-SIGNATURE": "bm90IGEgcGF5bWVudA=="})
    assert response.status_code == 402 and response.json()["error"]["code"] == "payment_invalid_payload"
    assert "PAYMENT-REQUIRED" in response.headers and balance_get(user=mallory) == 0
