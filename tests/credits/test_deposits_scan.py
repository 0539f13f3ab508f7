"""The deposit watcher against a real (local) Solana runtime: real signed transfers go through the
JSON-RPC endpoint, the production scan reads them back with solana-py and credits each once.

Every test ends by checking that nothing was created or lost: USDC balances in the ledger sum to
zero, and external:solana:USDC mirrors what arrived in the node's USDC account and was credited.
"""

import io
import json

import pytest
from django.core.management import call_command
from django.db.models import Sum
from django.test import Client
from solders.keypair import Keypair

from apps.accounts.services import api_key_issue
from apps.credits.deposits.selectors import deposit_invariant_violations
from apps.credits.deposits.services import deposit_record, deposit_reference_create, deposits_scan
from apps.credits.ledger import EXTERNAL_USDC_CODE
from apps.credits.models import Deposit, LedgerAccount, LedgerTransaction
from apps.credits.selectors import balance_get
from apps.credits.solana.rpc import RpcError
from apps.credits.solana.verify import Verdict
from apps.credits.tasks import deposits_scan_task
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401


def assert_books_match_the_chain(usdc, *, uncredited: int = 0):
    """Nothing created or lost: ledger USDC sums to zero; the external account is minus what
    arrived on chain and was credited (`uncredited` arrived but belongs to nobody we know)."""
    assert LedgerAccount.objects.filter(asset="USDC").aggregate(total=Sum("balance"))["total"] in (0, None)
    external = LedgerAccount.objects.filter(code=EXTERNAL_USDC_CODE).values_list("balance", flat=True).first() or 0
    assert -external == usdc.node_balance() - uncredited
    assert deposit_invariant_violations() == []


def _status(key, reference):
    return Client().get(f"/credits/deposits/{reference}/", HTTP_AUTHORIZATION=f"Bearer {key}").json()


def test_a_purchase_paid_on_chain_is_credited_exactly_once(alice, usdc):
    _, key = api_key_issue(user=alice)
    offer = Client().post("/credits/buy", json.dumps({"account": "me", "usdc": 10}), content_type="application/json",
                          HTTP_AUTHORIZATION=f"Bearer {key}").json()
    wallet = usdc.wallet()
    assert offer["token_account"] == str(usdc.node_account) and offer["mint"] == str(usdc.mint)

    signature = wallet.pay(int(offer["amount"]), reference=offer["reference"], memo=offer["memo"])
    report = deposits_scan()

    assert report.credited == [signature] and report.rejected == report.errors == []
    assert balance_get(user=alice) == 10 * USDC
    status = _status(key, offer["reference"])
    txn = LedgerTransaction.objects.get(kind="deposit")
    assert (status["status"], status["signature"], status["ledger_transaction"]) == ("credited", signature, txn.id)
    assert status["credited_micro_usdc"] == 10 * USDC
    assert status["deposits"][0]["payer"] == str(wallet.pubkey)
    assert txn.idempotency_key == f"deposit:{signature}"
    assert Deposit.objects.get().memo == offer["memo"]

    again = deposits_scan()

    assert again.credited == again.rejected == []
    assert balance_get(user=alice) == 10 * USDC
    assert LedgerTransaction.objects.filter(kind="deposit").count() == 1
    assert_books_match_the_chain(usdc)


def test_the_celery_task_scans_the_chain(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    usdc.wallet().pay(USDC, reference=reference.key)

    assert deposits_scan_task() == {"credited": 1, "rejected": 0, "waiting": 0, "errors": 0}
    assert deposits_scan_task()["credited"] == 0
    assert balance_get(user=alice) == USDC
    assert_books_match_the_chain(usdc)


def test_the_management_command_scans_once_and_says_what_it_did(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    usdc.wallet().pay(USDC, reference=reference.key)
    out = io.StringIO()

    call_command("deposits_scan", stdout=out)

    assert out.getvalue().strip() == "credited 1, rejected 0, waiting for finality 0"
    assert balance_get(user=alice) == USDC
    assert_books_match_the_chain(usdc)


def test_a_signature_presented_again_for_another_purchase_credits_nothing(alice, mallory, usdc):
    alices, mallorys = (deposit_reference_create(user=u, micro_usdc=USDC) for u in (alice, mallory))
    signature = usdc.wallet().pay(USDC, reference=alices.key)
    deposits_scan()
    original = Deposit.objects.get(signature=signature)

    replayed, created = deposit_record(reference=mallorys, signature=signature,
                                       verdict=Verdict(credit=True, amount=USDC))

    assert not created and replayed == original and replayed.reference == alices
    assert (balance_get(user=alice), balance_get(user=mallory)) == (USDC, 0)
    assert LedgerTransaction.objects.filter(kind="deposit").count() == 1
    assert_books_match_the_chain(usdc)


def test_the_same_signed_transfer_sent_again_is_credited_once(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    tx = usdc.wallet().transfer(USDC, reference=reference.key)
    with usdc.rpc() as rpc:
        signature = str(rpc.send_transaction(tx))
        deposits_scan()
        with pytest.raises(RpcError, match="already been processed"):
            rpc.send_transaction(tx)
        assert str(rpc.send_transaction(tx, skip_preflight=True)) == signature  # dropped as a duplicate

    assert deposits_scan().credited == []
    assert Deposit.objects.filter(signature=signature).count() == 1
    assert balance_get(user=alice) == USDC
    assert_books_match_the_chain(usdc)


def test_a_transfer_naming_two_purchases_is_credited_once_to_the_older(alice, mallory, usdc):
    alices, mallorys = (deposit_reference_create(user=u, micro_usdc=USDC) for u in (alice, mallory))

    signature = usdc.wallet().pay(USDC, reference=[alices.key, mallorys.key])
    report = deposits_scan()

    assert report.credited == [signature]
    assert Deposit.objects.get(signature=signature).reference == alices
    assert (balance_get(user=alice), balance_get(user=mallory)) == (USDC, 0)
    assert_books_match_the_chain(usdc)


def test_a_transfer_of_another_token_is_rejected_and_credits_nothing(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=5 * USDC)
    fake_authority = Keypair()
    usdc.chain.fund(fake_authority.pubkey())
    fake_usdc = usdc.chain.create_mint(fake_authority, decimals=6)
    wallet = usdc.wallet(micro=0)
    usdc.hold(wallet, fake_usdc, fake_authority, 5 * USDC)
    node_fake_account = usdc.chain.create_token_account(usdc.node.pubkey(), fake_usdc)

    signature = wallet.pay(5 * USDC, reference=reference.key, mint=fake_usdc, destination=node_fake_account)
    report = deposits_scan()

    deposit = Deposit.objects.get(signature=signature)
    assert report.rejected == [signature] and report.credited == []
    assert deposit.status == "rejected" and deposit.reason.startswith("wrong mint")
    assert str(fake_usdc) in deposit.reason and deposit.micro_usdc == 0
    assert balance_get(user=alice) == 0
    assert usdc.chain.token_balance(node_fake_account) == 5 * USDC  # it did arrive, as something else
    assert_books_match_the_chain(usdc)


def test_a_transfer_to_another_account_is_rejected_and_credits_nothing(alice, mallory, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=5 * USDC)
    mallorys_wallet = usdc.wallet(micro=0)

    signature = usdc.wallet().pay(5 * USDC, reference=reference.key, destination=mallorys_wallet.account)
    deposits_scan()

    _, key = api_key_issue(user=alice)
    status = _status(key, reference.key)
    assert status["status"] == "rejected" and status["reason"].startswith("wrong destination")
    assert status["deposits"][0]["signature"] == signature
    assert usdc.chain.token_balance(mallorys_wallet.account) == 5 * USDC
    assert balance_get(user=alice) == 0
    assert_books_match_the_chain(usdc)


def test_an_unfinalized_transfer_is_credited_only_once_finalized(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=3 * USDC)
    signature = usdc.wallet().pay(3 * USDC, reference=reference.key)
    usdc.chain.hold_unfinalized(signature)

    waiting = deposits_scan()

    assert waiting.credited == waiting.rejected == []
    assert not Deposit.objects.exists() and balance_get(user=alice) == 0
    assert_books_match_the_chain(usdc, uncredited=3 * USDC)

    usdc.chain.finalize(signature)
    assert deposits_scan().credited == [signature]
    assert balance_get(user=alice) == 3 * USDC
    assert_books_match_the_chain(usdc)


def test_a_node_set_to_confirmed_commitment_credits_a_confirmed_transfer(alice, usdc, settings):
    settings.PEER_DEPOSIT_COMMITMENT = "confirmed"
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    signature = usdc.wallet().pay(USDC, reference=reference.key)
    usdc.chain.hold_unfinalized(signature)

    assert deposits_scan().credited == [signature]
    assert_books_match_the_chain(usdc)


def test_a_different_amount_is_credited_as_it_arrived_with_a_note(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=10 * USDC)

    signature = usdc.wallet().pay(7_500_000, reference=reference.key)
    deposits_scan()

    deposit = Deposit.objects.get(signature=signature)
    assert (deposit.status, deposit.micro_usdc) == ("credited", 7_500_000)
    assert deposit.reason == "paid 7500000 micro-USDC where 10000000 was asked: credited what arrived"
    assert balance_get(user=alice) == 7_500_000
    assert_books_match_the_chain(usdc)


def test_two_payments_under_one_reference_are_both_credited(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=10 * USDC)
    wallet = usdc.wallet()

    first = wallet.pay(4 * USDC, reference=reference.key)
    second = wallet.pay(6 * USDC, reference=reference.key)
    report = deposits_scan()

    assert report.credited == [first, second]  # oldest first
    assert balance_get(user=alice) == 10 * USDC
    assert_books_match_the_chain(usdc)


def test_a_failed_transaction_is_rejected_and_credits_nothing(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=50 * USDC)
    wallet = usdc.wallet(micro=10 * USDC)

    signature = wallet.pay(50 * USDC, reference=reference.key, skip_preflight=True)  # more than it holds
    deposits_scan()

    deposit = Deposit.objects.get(signature=signature)
    assert deposit.status == "rejected"
    assert deposit.reason == 'the transaction failed on chain: {"InstructionError":[0,{"Custom":1}]}'
    assert balance_get(user=alice) == 0 and usdc.node_balance() == 0
    assert_books_match_the_chain(usdc)


def test_a_transfer_without_the_reference_credits_nobody(alice, usdc):
    deposit_reference_create(user=alice, micro_usdc=USDC)

    usdc.wallet().pay(USDC, memo="no reference here")
    report = deposits_scan()

    assert report.credited == report.rejected == []
    assert not Deposit.objects.exists() and balance_get(user=alice) == 0
    assert_books_match_the_chain(usdc, uncredited=USDC)  # on chain, for an operator to resolve


def test_a_rejected_attempt_then_a_good_payment_turns_the_purchase_credited(alice, usdc):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    wallet = usdc.wallet(micro=USDC)
    wallet.pay(2 * USDC, reference=reference.key, skip_preflight=True)
    deposits_scan()
    _, key = api_key_issue(user=alice)
    assert _status(key, reference.key)["status"] == "rejected"

    wallet.pay(USDC, reference=reference.key)
    deposits_scan()

    status = _status(key, reference.key)
    assert status["status"] == "credited" and status["reason"] == ""
    assert [d["status"] for d in status["deposits"]] == ["rejected", "credited"]
    assert_books_match_the_chain(usdc)


def test_an_unreachable_rpc_is_reported_and_credits_nothing(alice, usdc, settings):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    usdc.wallet().pay(USDC, reference=reference.key)
    settings.PEER_SOLANA_RPC_URL = "http://127.0.0.1:9"  # discard port: nothing listens

    report = deposits_scan()

    assert report.credited == [] and len(report.errors) == 1 and reference.key in report.errors[0]
    assert balance_get(user=alice) == 0
    settings.PEER_SOLANA_RPC_URL = usdc.chain.url
    assert len(deposits_scan().credited) == 1
    assert_books_match_the_chain(usdc)


@pytest.mark.django_db
def test_a_node_without_a_receiving_wallet_scans_nothing(settings):
    settings.PEER_PAY_TO = ""

    assert "PEER_PAY_TO" in deposits_scan().errors[0]
