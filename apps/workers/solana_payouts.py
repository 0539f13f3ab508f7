"""The chain side of payouts: Solana JSON-RPC through solana-py, transactions built and signed
with solders. `payouts.payout_progress` drives it; tests point it at a local RPC endpoint."""

import base64
import json
from dataclasses import dataclass

from django.conf import settings
from solana.exceptions import SolanaRpcException
from solana.rpc.api import Client
from solana.rpc.commitment import Finalized
from solana.rpc.core import RPCException
from solana.rpc.types import TxOpts
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_status import TransactionConfirmationStatus
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import MemoParams, create_memo
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (TransferCheckedParams, create_idempotent_associated_token_account,
                                    get_associated_token_address, transfer_checked)

from .payouts import USDC_DECIMALS, ChainStatus


@dataclass(frozen=True)
class SignedTransfer:
    signature: str
    raw_base64: str
    last_valid_block_height: int


class PayoutChain:
    def __init__(self, *, rpc_url: str, hot_wallet: Keypair, mint: str):
        self.client = Client(rpc_url)
        self.hot_wallet = hot_wallet
        self.mint = Pubkey.from_string(mint)

    @classmethod
    def from_settings(cls) -> "PayoutChain":
        with open(settings.PEER_PAYOUT_KEYPAIR) as handle:
            keypair = Keypair.from_bytes(bytes(json.load(handle)))
        return cls(rpc_url=settings.PEER_SOLANA_RPC_URL, hot_wallet=keypair, mint=settings.PEER_USDC_MINT)

    def status(self, signature: str) -> ChainStatus:
        found = self.client.get_signature_statuses([Signature.from_string(signature)],
                                                   search_transaction_history=True).value[0]
        if found is None:
            return ChainStatus(found=False)
        finalized = found.confirmation_status == TransactionConfirmationStatus.Finalized
        return ChainStatus(found=True, finalized=finalized, error=str(found.err) if found.err else "")

    def block_height(self) -> int:
        return self.client.get_block_height(Finalized).value

    def build_transfer(self, *, destination_owner: str, amount: int, memo: str) -> SignedTransfer:
        """USDC from the hot wallet's token account to the owner's associated token account,
        creating that account if it does not exist yet (paid by the hot wallet)."""
        owner, payer = Pubkey.from_string(destination_owner), self.hot_wallet.pubkey()
        latest = self.client.get_latest_blockhash(Finalized).value
        instructions = [
            create_idempotent_associated_token_account(payer=payer, owner=owner, mint=self.mint),
            transfer_checked(TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID, source=get_associated_token_address(payer, self.mint),
                mint=self.mint, dest=get_associated_token_address(owner, self.mint), owner=payer,
                amount=amount, decimals=USDC_DECIMALS)),
            create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=payer, message=memo.encode())),
        ]
        tx = Transaction([self.hot_wallet], Message(instructions, payer), latest.blockhash)
        return SignedTransfer(signature=str(tx.signatures[0]), raw_base64=base64.b64encode(bytes(tx)).decode(),
                              last_valid_block_height=latest.last_valid_block_height)

    def send(self, raw_base64: str) -> None:
        """Send; a duplicate of a transaction already processed is not an error here (the
        status check that follows tells what happened)."""
        try:
            self.client.send_raw_transaction(base64.b64decode(raw_base64), opts=TxOpts(skip_preflight=True))
        except (RPCException, SolanaRpcException) as exc:
            if "already been processed" not in str(exc).lower():
                raise
