"""The pure rules of USDC deposits: amounts as people write them, Solana Pay URLs, and which
transfers in a transaction count (inner instructions, plain Transfer, the account's real change)."""

from decimal import Decimal

import pytest
from solders.account_decoder import UiTokenAmount
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    UiCompiledInstruction,
    UiInnerInstructions,
    UiTransactionStatusMeta,
    UiTransactionTokenBalance,
)

from apps.credits.solana.base58 import b58encode
from apps.credits.solana.pay import AmountError, micro_to_usdc_text, transfer_request_url, usdc_to_micro
from apps.credits.solana.tokens import TOKEN_PROGRAM_ID, memo_instruction, transfer_checked_instruction
from apps.credits.solana.verify import deposit_verdict

MINT, NODE_ACCOUNT, BUYER_ACCOUNT, REFERENCE = (Keypair().pubkey() for _ in range(4))
BUYER = Keypair()


@pytest.mark.parametrize(("value", "micro"), [
    (10, 10_000_000), ("10", 10_000_000), ("2.5", 2_500_000), (Decimal("0.000001"), 1),
    (Decimal("10.500000000"), 10_500_000), (Decimal("1E+3"), 1_000_000_000), ("1000000", 10**12)])
def test_usdc_amounts_become_exact_micro_usdc(value, micro):
    assert usdc_to_micro(value, max_micro=10**12) == micro


@pytest.mark.parametrize("value", [Decimal("1.0000000000000000000000000000001"), Decimal("1E-7"), 0.5,
                                   Decimal("NaN"), Decimal("-0"), Decimal("1E+999999"), "٣"])
def test_amounts_we_cannot_take_exactly_are_refused(value):
    with pytest.raises(AmountError):
        usdc_to_micro(value, max_micro=10**12)


def test_micro_usdc_are_written_without_exponent_or_trailing_zeros():
    assert [micro_to_usdc_text(m) for m in (10_500_000, 1, 10**12, 0, 1_000_010)] == [
        "10.5", "0.000001", "1000000", "0", "1.00001"]


def test_a_transfer_request_url_follows_the_solana_pay_spec():
    url = transfer_request_url(recipient="R", micro=1_500_000, mint="M", reference="F", label="Peer Cycles",
                               message="Thanks & bye", memo="peercycles:F")

    assert url == ("solana:R?amount=1.5&spl-token=M&reference=F&label=Peer%20Cycles"
                   "&message=Thanks%20%26%20bye&memo=peercycles%3AF")


def _tx(*instructions):
    return VersionedTransaction(MessageV0.try_compile(BUYER.pubkey(), list(instructions), [], Hash.default()), [BUYER])


def _meta(*, err=None, inner=None, balances=None, tx=None):
    def token_balances(amounts):
        keys = list(tx.message.account_keys)
        return [UiTransactionTokenBalance(keys.index(account), MINT, UiTokenAmount(None, 6, str(amount), str(amount)),
                                          None, TOKEN_PROGRAM_ID) for account, amount in amounts.items()]

    return UiTransactionStatusMeta(err, 5000, [], [], inner_instructions=inner,
                                   pre_token_balances=token_balances(balances[0]) if balances else None,
                                   post_token_balances=token_balances(balances[1]) if balances else None)


def _verdict(tx, meta, requested=1_000_000):
    return deposit_verdict(tx=tx, meta=meta, mint=MINT, destination=NODE_ACCOUNT, reference=REFERENCE,
                           requested=requested)


def _transfer(amount=1_000_000, references=(REFERENCE,), **overrides):
    return transfer_checked_instruction(**{"source": BUYER_ACCOUNT, "mint": MINT, "destination": NODE_ACCOUNT,
                                           "authority": BUYER.pubkey(), "amount": amount, "decimals": 6,
                                           "references": references, **overrides})


def test_a_transfer_carrying_the_reference_is_credited_with_its_payer_and_memo():
    tx = _tx(memo_instruction(text="peercycles:x"), _transfer())

    verdict = _verdict(tx, _meta())

    assert (verdict.credit, verdict.amount, verdict.reason) == (True, 1_000_000, "")
    assert (verdict.payer, verdict.memo) == (str(BUYER.pubkey()), "peercycles:x")


def test_the_reference_must_be_on_the_transfer_not_only_somewhere_in_the_transaction():
    elsewhere = Instruction(TOKEN_PROGRAM_ID, b"", [AccountMeta(REFERENCE, is_signer=False, is_writable=False)])
    tx = _tx(_transfer(references=()), elsewhere)

    verdict = _verdict(tx, _meta())

    assert not verdict.credit and "carries the reference" in verdict.reason


def test_a_plain_transfer_into_the_usdc_account_counts_because_the_account_fixes_the_mint():
    data = bytes([3]) + (2_000_000).to_bytes(8, "little")
    plain = Instruction(TOKEN_PROGRAM_ID, data, [
        AccountMeta(BUYER_ACCOUNT, False, True), AccountMeta(NODE_ACCOUNT, False, True),
        AccountMeta(BUYER.pubkey(), True, False), AccountMeta(REFERENCE, False, False)])

    verdict = _verdict(_tx(plain), _meta(), requested=2_000_000)

    assert (verdict.credit, verdict.amount) == (True, 2_000_000)


def test_a_transfer_made_by_a_program_inner_instruction_counts():
    outer = Instruction(Keypair().pubkey(), b"pay", [
        AccountMeta(BUYER_ACCOUNT, False, True), AccountMeta(MINT, False, False),
        AccountMeta(NODE_ACCOUNT, False, True), AccountMeta(REFERENCE, False, False),
        AccountMeta(TOKEN_PROGRAM_ID, False, False)])
    tx = _tx(outer)
    keys = list(tx.message.account_keys)
    inner_data = bytes(_transfer(amount=3_000_000).data)
    accounts = bytes(keys.index(k) for k in (BUYER_ACCOUNT, MINT, NODE_ACCOUNT, BUYER.pubkey(), REFERENCE))
    inner = [UiInnerInstructions(0, [UiCompiledInstruction(keys.index(TOKEN_PROGRAM_ID), accounts,
                                                           b58encode(inner_data), 2)])]

    verdict = _verdict(tx, _meta(inner=inner), requested=3_000_000)

    assert (verdict.credit, verdict.amount) == (True, 3_000_000)


def test_what_is_credited_is_at_most_what_the_account_received():
    # e.g. a token with a transfer fee: the instruction says 1 USDC, the account got 0.99.
    tx = _tx(_transfer())

    verdict = _verdict(tx, _meta(tx=tx, balances=({NODE_ACCOUNT: 5}, {NODE_ACCOUNT: 990_005})))

    assert (verdict.credit, verdict.amount) == (True, 990_000)
    assert verdict.reason.startswith("the transfers say 1000000 but the account received 990000")


def test_wrong_decimals_are_refused():
    verdict = _verdict(_tx(_transfer(decimals=9)), _meta())

    assert not verdict.credit and verdict.reason.startswith("wrong decimals")
