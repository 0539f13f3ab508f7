"""Money's whole road, on the local Solana runtime: a buyer pays real USDC to /credits/buy's
reference, the node credits it, the credits pay a chat completion served by a real agent, and the
worker's 70% is paid out in USDC; every step checked on chain and in the ledger."""

import json
import subprocess
import sys

import httpx
import openai
import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.instructions import get_associated_token_address

from apps.accounts.services import api_key_issue
from apps.credits.deposits.services import deposits_scan
from apps.credits.ledger import EXTERNAL_USDC_CODE, PAYOUTS_PENDING_CODE
from apps.credits.models import LedgerAccount
from apps.credits.pricing import split_capture
from apps.credits.selectors import balance_get
from apps.marketplace.models import Job
from apps.workers.models import Worker, WorkerPayout
from apps.workers.payouts import payouts_run
from apps.workers.solana_payouts import PayoutChain
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401

from .conftest import OUTPUT, ROOT, running_node, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _balance(code):
    return LedgerAccount.objects.filter(code=code).values_list("balance", flat=True).first() or 0


def test_usdc_bought_on_chain_pays_a_job_and_the_worker_is_paid_out_on_chain(usdc, catalogue, alice, bob_worker,
                                                                              tmp_path):
    worker, token = bob_worker
    worker.payout_address = str(Keypair().pubkey())
    worker.save(update_fields=["payout_address"])
    usdc.chain.fund(usdc.node.pubkey())  # SOL for the payout's fee and the worker's token account
    hot = tmp_path / "node-wallet.json"  # the node pays out from the wallet deposits arrive in
    hot.write_text(json.dumps(list(bytes(usdc.node))))
    _, key = api_key_issue(user=alice)
    buyer = usdc.wallet(25 * USDC)
    with running_node("node-usdc.log", PEER_SOLANA_RPC_URL=usdc.chain.url, PEER_USDC_MINT=str(usdc.mint),
                      PEER_PAY_TO=str(usdc.node.pubkey()), PEER_PAYOUT_KEYPAIR=str(hot)) as url:
        # 1. Buy: the paper's request, then a real signed transfer carrying the reference.
        offer = httpx.post(f"{url}/credits/buy", content='{"account":"me","usdc":10}', timeout=30,
                           headers={"authorization": f"Bearer {key}"})
        assert offer.status_code == 201, offer.text
        buyer.pay(10 * USDC, reference=offer.json()["reference"])
        assert len(deposits_scan().credited) == 1
        assert balance_get(user=alice) == 10 * USDC and usdc.node_balance() == 10 * USDC
        status = httpx.get(offer.json()["status_url"] if offer.json()["status_url"].startswith("http")
                           else url + offer.json()["status_url"], headers={"authorization": f"Bearer {key}"})
        assert status.json()["status"] == "credited"

        # 2. Spend: a chat completion run by the bundled agent with the real model.
        with open(OUTPUT / "agent-usdc.log", "w") as log:
            agent = subprocess.Popen([sys.executable, "-m", "worker", "--server", url, "--token", token,
                                      "--threads", "2", "--model-path", catalogue["path"]],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_status(worker.id, Worker.Status.IDLE)
            reply = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0).chat.completions.create(
                model="peer-mixtral", messages=[{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=16)
        finally:
            agent.terminate()
            agent.wait(timeout=10)
    job = Job.objects.get(user=alice)
    assert reply.model_extra["peer"]["job_id"] == str(job.id) and job.status == "completed"
    earned = split_capture(job.charged_amount).worker
    assert balance_get(user=alice) == 10 * USDC - job.charged_amount
    assert _balance(f"worker:{worker.id}:USDC") == earned

    # 3. Pay out: the worker's 70% leaves as an SPL transfer, and the ledger follows the chain.
    chain = PayoutChain(rpc_url=usdc.chain.url, hot_wallet=usdc.node, mint=str(usdc.mint))
    assert payouts_run(chain=chain, threshold=1) == {"sent": 1}
    assert payouts_run(chain=chain, threshold=1) == {"paid": 1}
    received = usdc.chain.token_balance(get_associated_token_address(Pubkey.from_string(worker.payout_address), usdc.mint))
    assert received == earned and WorkerPayout.objects.get().state == "paid"
    assert usdc.node_balance() == 10 * USDC - earned
    assert _balance(f"worker:{worker.id}:USDC") == 0 and _balance(PAYOUTS_PENDING_CODE) == 0
    # What the chain holds for the node is exactly what the ledger says entered and did not leave.
    assert -_balance(EXTERNAL_USDC_CODE) == usdc.node_balance()
