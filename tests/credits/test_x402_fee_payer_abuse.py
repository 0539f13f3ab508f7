"""Fee payer abuse: a PAYMENT-SIGNATURE whose transaction would have the node's hot wallet, which
co-signs every x402 transfer as fee payer, pay or sign for more than one payment's network fee.

The transactions are built by hand in the x402 exact SVM layout (compute-unit limit, compute-unit
price, TransferChecked, memo), partially signed by the attacker with the fee payer's slot left
empty, as a hostile client would send them. The hot wallet holds USDC and SOL on the local chain,
so each attack would succeed if the node signed it; each must be refused with a reason, and
nothing may be created or lost, on chain or in the ledger.
"""

import base64
import os
from dataclasses import dataclass

import pytest
from solders.address_lookup_table_account import AddressLookupTableAccount
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction
from spl.token.instructions import create_associated_token_account

from apps.credits.models import LedgerAccount, LedgerEntry, X402Payment
from apps.credits.selectors import balance_get
from apps.credits.solana.tokens import memo_instruction, transfer_checked_instruction
from apps.credits.x402 import MAX_PRIORITY_FEE_LAMPORTS, PaymentRejected, _resource_server, x402_settle_to_credits
from tests.credits.test_x402_payments import PRICE, _required, buyer, facilitator  # noqa: F401
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401
from tests.support.solana_rpc import LAMPORTS_PER_SIGNATURE

pytestmark = pytest.mark.django_db
COMPUTE_BUDGET = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
X402_MAX_CU_PRICE = 5_000_000  # micro-lamports per compute unit: x402's own cap


def _budget(*, limit: int = 20_000, price: int = 1) -> list[Instruction]:
    """SetComputeUnitLimit, SetComputeUnitPrice; the defaults are what the official x402 client sends."""
    return [Instruction(COMPUTE_BUDGET, bytes([2]) + limit.to_bytes(4, "little"), []),
            Instruction(COMPUTE_BUDGET, bytes([3]) + price.to_bytes(8, "little"), [])]


def _memo(signers=()) -> Instruction:
    return memo_instruction(text=os.urandom(16).hex(), signers=signers)  # the client's random nonce


@dataclass
class Scene:
    usdc: object
    node: Pubkey       # the hot wallet: the fee payer this node names in its 402s
    buyer: object      # the attacker's wallet, holding USDC
    hot_usdc: Pubkey   # the hot wallet's own USDC account, funded

    def transfer(self, *, source=None, authority=None, amount=PRICE) -> Instruction:
        return transfer_checked_instruction(source=source or self.buyer.account, mint=self.usdc.mint,
                                            destination=self.usdc.node_account, decimals=6, amount=amount,
                                            authority=authority or self.buyer.pubkey)

    def drain_sol(self) -> Instruction:
        return transfer(TransferParams(from_pubkey=self.node, to_pubkey=self.buyer.pubkey, lamports=10**9))

    def header(self, instructions, *signers: Keypair, fee_payer=None, tables=()) -> str:
        """The PAYMENT-SIGNATURE an x402 client would send for this transaction: signed by
        `signers` (the buyer by default), the fee payer's signature left empty for the node."""
        from x402.http.utils import encode_payment_signature_header
        from x402.schemas import PaymentPayload, PaymentRequirements

        with self.usdc.rpc(commitment="confirmed") as rpc:
            blockhash, _ = rpc.latest_blockhash()
        message = MessageV0.try_compile(fee_payer or self.node, list(instructions), list(tables), blockhash)
        by_key = {signer.pubkey(): signer for signer in signers or [self.buyer.keypair]}
        signatures = [by_key[key].sign_message(to_bytes_versioned(message)) if key in by_key else Signature.default()
                      for key in message.account_keys[:message.header.num_required_signatures]]
        transaction = base64.b64encode(bytes(VersionedTransaction.populate(message, signatures))).decode()
        required = _required()
        return encode_payment_signature_header(PaymentPayload(
            accepted=PaymentRequirements.model_validate(required["accepts"][0]), resource=required["resource"],
            payload={"transaction": transaction}))

    def state(self, user) -> dict:
        """Everything an abusive payment could change: balances on chain (read through the JSON-RPC,
        as a wallet would), the ledger, and whether anything was broadcast."""
        from solana.rpc.api import Client

        rpc = Client(self.usdc.chain.url)
        tokens = {name: int(rpc.get_token_account_balance(account).value.amount) for name, account in
                  [("hot wallet USDC", self.hot_usdc), ("node USDC", self.usdc.node_account),
                   ("buyer USDC", self.buyer.account)]}
        return {"hot wallet SOL": rpc.get_balance(self.node).value, **tokens,
                "payer credits": balance_get(user=user), "x402 payments": X402Payment.objects.count(),
                "ledger": sorted(LedgerAccount.objects.values_list("code", "balance")),
                "ledger entries": LedgerEntry.objects.count(),
                "broadcasts": self.usdc.chain.calls.count("sendTransaction")}


@pytest.fixture
def scene(usdc, facilitator, buyer):
    hot_usdc = usdc.chain.create_token_account(facilitator.pubkey(), usdc.mint)
    usdc.give(hot_usdc, 50 * USDC)
    return Scene(usdc=usdc, node=facilitator.pubkey(), buyer=buyer, hot_usdc=hot_usdc)


def _extra_signers(s: Scene, n: int) -> str:
    """A memo that needs `n` more signatures, all the attacker's own keys: each is a fee the fee payer pays."""
    keys = [Keypair() for _ in range(n)]
    return s.header(_budget(limit=200_000) + [s.transfer(), _memo([k.pubkey() for k in keys])], s.buyer.keypair, *keys)


# name -> (the attacker's PAYMENT-SIGNATURE, the reason it is refused with)
ATTACKS = {
    # (1) the node's own USDC pays the node, on the node's signature: credits out of thin air
    "the hot wallet's USDC, the hot wallet as authority": (
        lambda s: s.header(_budget() + [s.transfer(source=s.hot_usdc, authority=s.node), _memo()]),
        "fee_payer_not_isolated"),
    "the hot wallet's USDC, the attacker as authority": (
        lambda s: s.header(_budget() + [s.transfer(source=s.hot_usdc), _memo()]),
        "transaction_simulation_failed"),  # the token program refuses: the attacker is not its owner
    # (2) an instruction beyond the allowed ones spends the fee payer's SOL
    "a SOL transfer from the fee payer as fourth instruction": (
        lambda s: s.header(_budget() + [s.transfer(), s.drain_sol(), _memo()]), "fee_payer_not_isolated"),
    "a SOL transfer from the fee payer after the memo": (
        lambda s: s.header(_budget() + [s.transfer(), _memo(), s.drain_sol()]), "fee_payer_not_isolated"),
    "a SOL transfer from the fee payer in place of the token transfer": (
        lambda s: s.header(_budget() + [s.drain_sol(), s.transfer(), _memo()]), "fee_payer_not_isolated"),
    "the fee payer funding a token account's rent": (
        lambda s: s.header(_budget() + [s.transfer(), create_associated_token_account(s.node, Keypair().pubkey(),
                                                                                     s.usdc.mint)]),
        "fee_payer_not_isolated"),
    "an extra instruction that leaves the fee payer alone": (
        lambda s: s.header(_budget() + [s.transfer(), transfer(TransferParams(
            from_pubkey=s.buyer.pubkey, to_pubkey=Keypair().pubkey(), lamports=10**6))]),
        "invalid_exact_svm_payload_unknown_fourth_instruction"),  # x402's own instruction allow-list
    # (3) fee drain: the fee payer pays the priority fee and the signature fees the payer asks for
    "a compute-unit price far above x402's cap": (
        lambda s: s.header(_budget(price=10**12) + [s.transfer(), _memo()]), "fee_payer_priority_fee_too_high"),
    "a compute-unit price just above x402's cap, at a small limit": (
        lambda s: s.header(_budget(limit=10_000, price=X402_MAX_CU_PRICE + 1) + [s.transfer(), _memo()]),
        "invalid_exact_svm_payload_transaction_instructions_compute_price_instruction_too_high"),
    "the runtime's largest compute-unit limit at x402's price cap (0.007 SOL)": (
        lambda s: s.header(_budget(limit=1_400_000, price=X402_MAX_CU_PRICE) + [s.transfer(), _memo()]),
        "fee_payer_priority_fee_too_high"),
    "six extra required signers (5,000 lamports each)": (lambda s: _extra_signers(s, 6), "fee_payer_extra_signatures"),
    # the fee payer's signature lent to another instruction: harmless for a memo, but the x402
    # spec's fee payer isolation rule says no instruction may name it
    "the fee payer as a memo signer": (
        lambda s: s.header(_budget(limit=200_000) + [s.transfer(), _memo([s.node])]), "fee_payer_not_isolated"),
    # accounts loaded from a lookup table are invisible to every check above
    "accounts from an address lookup table": (
        lambda s: s.header(_budget() + [s.transfer(), _memo()], tables=[AddressLookupTableAccount(
            Keypair().pubkey(), [s.buyer.account, s.usdc.node_account])]),
        "address_lookup_tables_refused"),
    "a transaction whose fee payer is not the node": (
        lambda s: s.header(_budget() + [s.transfer(), _memo()], fee_payer=s.buyer.pubkey), "fee_payer_mismatch"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_fee_payer_abuse_is_refused_with_nothing_created_or_lost(scene, alice, attack):
    build, reason = ATTACKS[attack]
    header = build(scene)
    before = scene.state(alice)
    with pytest.raises(PaymentRejected) as caught:
        x402_settle_to_credits(user=alice, header_value=header, price_micro=PRICE)
    assert (caught.value.reason, bool(caught.value.message)) == (reason, True)
    assert scene.state(alice) == before  # no SOL, USDC, credit, ledger entry or broadcast


@pytest.mark.parametrize("limit, price", [(20_000, 1), (200_000, 1), (20_000, X402_MAX_CU_PRICE)])
def test_a_hand_built_payment_within_the_fee_limits_settles(scene, alice, limit, price):
    """The same builder, honest: what the attacks above are refused for is their abuse, not the
    builder. 20_000 CU at x402's price cap is exactly the node's priority fee limit."""
    before = scene.state(alice)
    x402_settle_to_credits(user=alice, header_value=scene.header(_budget(limit=limit, price=price)
                                                                 + [scene.transfer(), _memo()]), price_micro=PRICE)
    after = scene.state(alice)
    assert after["payer credits"] == PRICE and after["node USDC"] == before["node USDC"] + PRICE
    assert after["buyer USDC"] == before["buyer USDC"] - PRICE and after["hot wallet USDC"] == before["hot wallet USDC"]
    spent = before["hot wallet SOL"] - after["hot wallet SOL"]
    assert 2 * LAMPORTS_PER_SIGNATURE <= spent <= 2 * LAMPORTS_PER_SIGNATURE + MAX_PRIORITY_FEE_LAMPORTS


@pytest.mark.parametrize("attack", ["the runtime's largest compute-unit limit at x402's price cap (0.007 SOL)",
                                    "six extra required signers (5,000 lamports each)",
                                    "the fee payer as a memo signer",
                                    "accounts from an address lookup table"])
def test_x402s_own_verify_lets_through_what_the_node_refuses(scene, attack):
    """Why the node checks the fee payer's cost itself: x402 2.25's verify passes these (or, for
    a lookup table, crashes). When this fails, x402 has closed the gap upstream."""
    from x402.http.utils import decode_payment_signature_header

    payload = decode_payment_signature_header(ATTACKS[attack][0](scene))
    try:
        verified = _resource_server().verify_payment(payload, payload.accepted)
    except IndexError:
        assert attack == "accounts from an address lookup table"
    else:
        assert verified.is_valid, verified.invalid_reason
