"""x402 payments settled for real: the official x402 client signs an SPL transfer, this node
verifies it and settles it as its own facilitator (fee payer included) on the local Solana
runtime, and credits the payer exactly once. Attacks are refused with nothing created or lost."""

import base64
import json

import pytest
from solders.keypair import Keypair

from apps.credits.ledger import EXTERNAL_USDC_CODE
from apps.credits.models import LedgerAccount, X402Payment
from apps.credits.selectors import balance_get
from apps.credits.x402 import PaymentRejected, payment_required, payment_requirements, x402_settle_to_credits
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401

pytestmark = pytest.mark.django_db
PRICE = 150_000  # micro-USDC: 15 credits


@pytest.fixture
def facilitator(usdc, settings, tmp_path):
    """The node's hot wallet, which co-signs x402 transfers as fee payer."""
    from apps.credits import x402

    keypair = Keypair()
    usdc.chain.fund(keypair.pubkey())
    path = tmp_path / "hot-wallet.json"
    path.write_text(json.dumps(list(bytes(keypair))))
    settings.PEER_PAYOUT_KEYPAIR = str(path)
    settings.PEER_SOLANA_NETWORK = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
    x402._resource_server_for.cache_clear()
    return keypair


@pytest.fixture
def buyer(usdc):
    return usdc.wallet(10 * USDC)


def _pay(buyer, usdc, requirements_json: dict) -> str:
    """What an x402 client sends: a PAYMENT-SIGNATURE for the first accepted requirement."""
    from x402 import x402ClientSync
    from x402.http.utils import encode_payment_signature_header
    from x402.mechanisms.svm.exact.register import register_exact_svm_client
    from x402.mechanisms.svm.signers import KeypairSigner
    from x402.schemas import PaymentRequired

    client = register_exact_svm_client(x402ClientSync(), KeypairSigner(buyer.keypair), rpc_url=usdc.chain.url)
    client.set_spend_controls({"allowed_assets": True})  # the local cluster's USDC is not a known mint
    payload = client.create_payment_payload(PaymentRequired.model_validate(requirements_json))
    return encode_payment_signature_header(payload)


def _required(price=PRICE, **changes) -> dict:
    _, headers = payment_required(price_micro=price, available_micro=0, resource_url="http://node/v1/chat/completions")
    required = json.loads(base64.b64decode(headers["PAYMENT-REQUIRED"]))
    required["accepts"][0].update(changes)
    return required


def _usdc_total():
    return sum(LedgerAccount.objects.filter(asset="USDC").values_list("balance", flat=True))


def test_a_valid_payment_settles_on_chain_and_credits_the_payer_once(usdc, facilitator, buyer, alice):
    before_chain = usdc.node_balance()
    settlement = x402_settle_to_credits(user=alice, header_value=_pay(buyer, usdc, _required()), price_micro=PRICE)
    assert usdc.node_balance() == before_chain + PRICE  # the USDC really moved to the node
    assert settlement.amount == PRICE and settlement.payer == str(buyer.pubkey)
    assert balance_get(user=alice) == PRICE
    assert LedgerAccount.objects.get(code=EXTERNAL_USDC_CODE).balance == -PRICE and _usdc_total() == 0
    assert X402Payment.objects.get().signature == settlement.transaction
    response = json.loads(base64.b64decode(settlement.header))
    assert response["success"] is True and response["transaction"] == settlement.transaction


def test_a_replayed_payment_is_refused_and_credits_nothing(usdc, facilitator, buyer, alice):
    header = _pay(buyer, usdc, _required())
    x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    with pytest.raises(PaymentRejected) as caught:
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert caught.value.reason == "transaction_simulation_failed"  # the chain refuses to run it again
    assert balance_get(user=alice) == PRICE and usdc.node_balance() == PRICE and X402Payment.objects.count() == 1


@pytest.mark.parametrize("field, value", [
    ("amount", str(PRICE - 1)),
    ("payTo", None),  # filled with a stranger's wallet below
    ("asset", None),  # filled with another mint below
    ("network", "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
])
def test_a_payment_for_other_terms_is_refused_before_anything_moves(usdc, facilitator, buyer, alice, field, value):
    if field == "payTo":
        value = str(Keypair().pubkey())
    if field == "asset":
        from solders.pubkey import Pubkey

        other_mint = usdc.chain.create_mint(usdc.authority)
        usdc.hold(buyer, other_mint, usdc.authority, 10 * USDC)
        value = str(other_mint)
        assert isinstance(other_mint, Pubkey)
    header = _pay(buyer, usdc, _required(**{field: value}))
    with pytest.raises(PaymentRejected) as caught:
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert caught.value.reason.endswith("_mismatch")
    assert balance_get(user=alice) == 0 and usdc.node_balance() == 0 and not X402Payment.objects.exists()


def test_a_fee_payer_that_is_not_ours_is_refused(usdc, facilitator, buyer, alice):
    header = _pay(buyer, usdc, _required(extra={"feePayer": str(buyer.pubkey)}))
    with pytest.raises(PaymentRejected) as caught:
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert caught.value.reason == "fee_payer_mismatch"
    assert balance_get(user=alice) == 0 and usdc.node_balance() == 0


@pytest.mark.parametrize("garbage", ["", "not base64 at all", base64.b64encode(b'{"x402Version": 2}').decode()])
def test_a_garbage_payment_header_is_refused(usdc, facilitator, alice, garbage):
    with pytest.raises(PaymentRejected):
        x402_settle_to_credits(user=alice, header_value=garbage, price_micro=PRICE)
    assert balance_get(user=alice) == 0


def test_a_payer_without_enough_usdc_is_refused_by_simulation(usdc, facilitator, alice):
    poor = usdc.wallet(PRICE - 1)
    header = _pay(poor, usdc, _required())
    with pytest.raises(PaymentRejected):
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert balance_get(user=alice) == 0 and usdc.node_balance() == 0


def test_a_node_without_a_hot_wallet_or_facilitator_refuses_payments_clearly(usdc, settings, buyer, alice):
    from apps.credits import x402

    settings.PEER_PAYOUT_KEYPAIR = ""
    x402._resource_server_for.cache_clear()
    with pytest.raises(PaymentRejected) as caught:
        x402_settle_to_credits(user=alice, header_value=_pay(buyer, usdc, _required(extra={"feePayer": str(Keypair().pubkey())})),
                               price_micro=PRICE)
    assert caught.value.reason == "facilitator_unavailable"


def test_the_requirements_name_our_fee_payer(facilitator, settings):
    requirement = payment_requirements(price_micro=PRICE)
    assert requirement.extra == {"feePayer": str(facilitator.pubkey())} and requirement.pay_to == settings.PEER_PAY_TO


def test_an_expired_payment_is_refused_and_credits_nothing(usdc, facilitator, buyer, alice):
    header = _pay(buyer, usdc, _required())
    usdc.chain.expire_blockhashes()  # the signed transfer's blockhash is past its validity window
    with pytest.raises(PaymentRejected):
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert balance_get(user=alice) == 0 and usdc.node_balance() == 0 and not X402Payment.objects.exists()
