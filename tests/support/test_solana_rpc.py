"""The local Solana JSON-RPC endpoint answers solana-py's real client in the real formats."""

import base64
import json
import urllib.request

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus

from apps.credits.solana.base58 import b58decode, b58encode
from apps.credits.solana.rpc import RpcError
from apps.credits.solana.tokens import memo_instruction, token_transfers, transfer_checked_instruction
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401


def _post(url, payload):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_base58_round_trips_keys_signatures_and_leading_zeros():
    key = Keypair().pubkey()
    assert b58decode(str(key)) == bytes(key)
    assert b58encode(bytes(key)) == str(key)
    assert b58encode(b"\0\0\x01") == "112"
    assert b58decode("112") == b"\0\0\x01"
    assert b58decode("") == b""
    with pytest.raises(ValueError):
        b58decode("0OIl")


def test_a_transfer_lands_and_reads_back_unchanged_through_solana_py(usdc):
    buyer, reference = usdc.wallet(), Keypair().pubkey()

    signature = buyer.pay(7 * USDC, reference=reference, memo="hello")

    with usdc.rpc() as rpc:
        assert rpc.wait_for(Signature.from_string(signature), timeout=5).err is None
        [entry] = rpc.signatures_for_address(reference)
        landed = rpc.transaction(entry.signature)
        assert rpc.token_balance(usdc.node_account) == 7 * USDC
    assert str(entry.signature) == signature
    assert entry.memo == "[5] hello"
    assert entry.confirmation_status == TransactionConfirmationStatus.Finalized
    tx, meta = landed.transaction.transaction, landed.transaction.meta
    assert str(tx.signatures[0]) == signature and tx.verify_with_results() == [True]
    assert meta.err is None and meta.fee == 5_000
    [transfer] = token_transfers(tx, meta)
    assert (transfer.destination, transfer.amount, transfer.extra) == (usdc.node_account, 7 * USDC, (reference,))
    balances = {b.account_index: int(b.ui_token_amount.amount) for b in meta.post_token_balances}
    assert balances[list(tx.message.account_keys).index(usdc.node_account)] == 7 * USDC


def test_the_json_encoding_writes_instruction_data_in_base58(usdc):
    signature = usdc.wallet().pay(USDC, memo="plain json")

    with usdc.rpc() as rpc:
        value = rpc.client.get_transaction(Signature.from_string(signature), encoding="json",
                                           max_supported_transaction_version=0).value
    memo, transfer = value.transaction.transaction.message.instructions
    assert b58decode(memo.data) == b"plain json"
    assert b58decode(transfer.data)[0] == 12  # TransferChecked


def test_a_v0_transaction_needs_max_supported_transaction_version(usdc):
    signature = usdc.wallet().pay(USDC)

    answer = _post(usdc.chain.url, {"jsonrpc": "2.0", "id": 1, "method": "getTransaction",
                                    "params": [signature, {"encoding": "base64"}]})

    assert answer["error"]["code"] == -32015


def test_a_held_signature_is_confirmed_but_not_finalized_until_released(usdc):
    reference = Keypair().pubkey()
    signature = usdc.wallet().pay(USDC, reference=reference)
    usdc.chain.hold_unfinalized(signature)

    with usdc.rpc() as finalized, usdc.rpc(commitment="confirmed") as confirmed:
        assert finalized.signatures_for_address(reference) == []
        assert finalized.transaction(Signature.from_string(signature)) is None
        [entry] = confirmed.signatures_for_address(reference)
        assert entry.confirmation_status == TransactionConfirmationStatus.Confirmed
        with pytest.raises(RpcError, match="did not reach finalized"):
            finalized.wait_for(Signature.from_string(signature), timeout=0.2, poll=0.05)
        usdc.chain.finalize(signature)
        assert finalized.transaction(Signature.from_string(signature)) is not None


def test_a_failing_transfer_is_refused_at_preflight_and_lands_failed_without_it(usdc):
    buyer, reference = usdc.wallet(micro=USDC), Keypair().pubkey()

    with pytest.raises(RpcError, match="simulation failed: Error processing Instruction 0: custom program error: 0x1"):
        buyer.pay(5 * USDC, reference=reference)
    signature = buyer.pay(5 * USDC, reference=reference, skip_preflight=True)

    with usdc.rpc() as rpc:
        [entry] = rpc.signatures_for_address(reference)
        assert str(entry.signature) == signature and entry.err is not None
        landed = rpc.transaction(entry.signature)
        with pytest.raises(RpcError, match="failed on chain"):
            rpc.wait_for(entry.signature, timeout=1)
    assert landed.transaction.meta.err is not None
    assert any("insufficient funds" in line for line in landed.transaction.meta.log_messages)
    assert usdc.node_balance() == 0
    assert usdc.chain.svm.get_balance(buyer.pubkey) == 10**10 - 5_000  # the failed one paid its fee


def test_the_same_signed_transaction_lands_once(usdc):
    buyer = usdc.wallet()
    with usdc.rpc(commitment="confirmed") as rpc:
        blockhash, _ = rpc.latest_blockhash()
        tx = VersionedTransaction(MessageV0.try_compile(buyer.pubkey, [transfer_checked_instruction(
            source=buyer.account, mint=usdc.mint, destination=usdc.node_account, authority=buyer.pubkey,
            amount=USDC, decimals=6)], [], blockhash), [buyer.keypair])

        first = rpc.send_transaction(tx)
        with pytest.raises(RpcError, match="already been processed"):
            rpc.send_transaction(tx)
        assert rpc.send_transaction(tx, skip_preflight=True) == first  # a resend is a no-op

    assert usdc.node_balance() == USDC


def test_an_unknown_blockhash_is_not_found(usdc):
    buyer = usdc.wallet()
    tx = VersionedTransaction(MessageV0.try_compile(buyer.pubkey, [memo_instruction(text="x")], [],
                                                    Hash.new_unique()), [buyer.keypair])
    with usdc.rpc() as rpc, pytest.raises(RpcError, match="Blockhash not found"):
        rpc.send_transaction(tx)


def test_history_pages_backwards_with_before_and_until(usdc):
    buyer, reference = usdc.wallet(), Keypair().pubkey()
    signatures = [buyer.pay(USDC + i, reference=reference) for i in range(5)]

    with usdc.rpc() as rpc:
        newest_first = [str(e.signature) for e in rpc.signatures_for_address(reference)]
        page = rpc.signatures_for_address(reference, limit=2, before=Signature.from_string(signatures[3]))
        until = rpc.signatures_for_address(reference, until=Signature.from_string(signatures[1]))
        assert [str(e.signature) for e in rpc.history(reference)] == newest_first

    assert newest_first == signatures[::-1]
    assert [str(e.signature) for e in page] == [signatures[2], signatures[1]]
    assert [str(e.signature) for e in until] == [signatures[4], signatures[3], signatures[2]]


def test_simulation_reports_the_error_and_logs_without_landing(usdc):
    buyer = usdc.wallet(micro=0)
    with usdc.rpc() as rpc:
        blockhash, _ = rpc.latest_blockhash()
        tx = VersionedTransaction(MessageV0.try_compile(buyer.pubkey, [transfer_checked_instruction(
            source=buyer.account, mint=usdc.mint, destination=usdc.node_account, authority=buyer.pubkey,
            amount=USDC, decimals=6)], [], blockhash), [buyer.keypair])
        result = rpc.client.simulate_transaction(tx).value
        assert rpc.signature_statuses([tx.signatures[0]]) == [None]

    assert result.err is not None
    assert any("insufficient funds" in line for line in result.logs)


def test_accounts_balances_airdrops_and_batches_answer_in_rpc_shapes(usdc):
    someone = Keypair().pubkey()
    with usdc.rpc() as rpc:
        airdrop = rpc.client.request_airdrop(someone, 1_000_000).value
        assert rpc.client.get_balance(someone).value == 1_000_000
        assert rpc.signature_statuses([airdrop])[0].err is None
        mint = rpc.client.get_account_info(usdc.mint).value
        assert mint.owner == Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA") and mint.data[44] == 6
        assert rpc.client.get_account_info(Keypair().pubkey()).value is None

    batch = _post(usdc.chain.url, [{"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
                                   {"jsonrpc": "2.0", "id": 2, "method": "noSuchMethod"}])
    assert batch == [{"jsonrpc": "2.0", "id": 1, "result": "ok"},
                     {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}}]
    encoded = _post(usdc.chain.url, {"jsonrpc": "2.0", "id": 3, "method": "getAccountInfo",
                                     "params": [str(usdc.mint), {"encoding": "base64"}]})["result"]["value"]
    assert len(base64.b64decode(encoded["data"][0])) == 82


def test_the_node_wallet_can_pay_out_of_its_usdc_account(usdc):
    usdc.chain.fund(usdc.node.pubkey())
    usdc.give(usdc.node_account, 5 * USDC)
    worker = usdc.wallet(micro=0)

    with usdc.rpc() as rpc:
        signature = rpc.send_instructions(payer=usdc.node, instructions=[transfer_checked_instruction(
            source=usdc.node_account, mint=usdc.mint, destination=worker.account, authority=usdc.node.pubkey(),
            amount=2 * USDC, decimals=6)])
        assert rpc.wait_for(signature, timeout=5).err is None

    assert (usdc.node_balance(), usdc.chain.token_balance(worker.account)) == (3 * USDC, 2 * USDC)
