"""pytest fixtures over the local Solana endpoint: a USDC-like mint (6 decimals), the node's
receiving wallet and its USDC account, and buyers' wallets that pay through the JSON-RPC with the
production client. Import the fixtures a test module uses:

    from tests.support.solana_fixtures import solana, usdc  # noqa: F401

`usdc` points the settings at the local cluster: PEER_SOLANA_RPC_URL, PEER_USDC_MINT,
PEER_PAY_TO, PEER_DEPOSIT_COMMITMENT = "finalized". `usdc.node` is the node's wallet, with its
private key, so tests can also pay out of the node's USDC account.
"""

from dataclasses import dataclass, field

import pytest
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from apps.credits.solana.rpc import SolanaRpc
from apps.credits.solana.tokens import memo_instruction, transfer_checked_instruction

from .solana_rpc import LocalSolana

USDC = 10**6  # micro-USDC in one USDC


@dataclass
class Wallet:
    """A buyer's wallet: a keypair with SOL for fees and token accounts it can pay from."""

    usdc: "Usdc"
    keypair: Keypair
    accounts: dict = field(default_factory=dict)  # mint -> its associated token account

    @property
    def pubkey(self) -> Pubkey:
        return self.keypair.pubkey()

    @property
    def account(self) -> Pubkey:
        return self.accounts[self.usdc.mint]

    def transfer(self, micro: int, *, reference=None, memo: str | None = None, mint: Pubkey | None = None,
                 destination: Pubkey | None = None) -> VersionedTransaction:
        """A signed TransferChecked, built Solana Pay's way: `reference` (a key or its base58) as a
        read-only account of the transfer, an optional memo instruction before it."""
        mint = mint or self.usdc.mint
        instructions = [memo_instruction(text=memo)] if memo else []
        references = reference if isinstance(reference, (list, tuple)) else [reference] if reference else []
        instructions.append(transfer_checked_instruction(
            source=self.accounts[mint], mint=mint, destination=destination or self.usdc.node_account,
            authority=self.pubkey, amount=micro, decimals=6,
            references=[Pubkey.from_string(str(r)) for r in references]))
        with self.usdc.rpc(commitment="confirmed") as rpc:
            blockhash, _ = rpc.latest_blockhash()
        return VersionedTransaction(MessageV0.try_compile(self.pubkey, instructions, [], blockhash), [self.keypair])

    def pay(self, micro: int, *, skip_preflight: bool = False, **transfer) -> str:
        """Send `transfer(micro, **transfer)` through the RPC; its signature."""
        tx = self.transfer(micro, **transfer)
        with self.usdc.rpc(commitment="confirmed") as rpc:
            return str(rpc.send_transaction(tx, skip_preflight=skip_preflight))


@dataclass
class Usdc:
    """The cluster's USDC: its mint and authority, and the node's wallet and USDC account."""

    chain: LocalSolana
    mint: Pubkey
    authority: Keypair
    node: Keypair
    node_account: Pubkey

    def rpc(self, *, commitment: str = "finalized") -> SolanaRpc:
        return SolanaRpc(self.chain.url, commitment=commitment)

    def wallet(self, micro: int = 100 * USDC) -> Wallet:
        wallet = Wallet(usdc=self, keypair=Keypair())
        self.chain.fund(wallet.pubkey)
        self.hold(wallet, self.mint, self.authority, micro)
        return wallet

    def hold(self, wallet: Wallet, mint: Pubkey, authority: Keypair, micro: int) -> Pubkey:
        """Give `wallet` an account of `mint` holding `micro` atomic units."""
        account = self.chain.create_token_account(wallet.pubkey, mint)
        if micro:
            self.chain.mint_to(mint, authority, account, micro)
        wallet.accounts[mint] = account
        return account

    def give(self, account: Pubkey, micro: int) -> None:
        """Mint `micro` USDC into a token account (e.g. the node's, before it pays out)."""
        self.chain.mint_to(self.mint, self.authority, account, micro)

    def node_balance(self) -> int:
        return self.chain.token_balance(self.node_account)


@pytest.fixture
def solana():
    with LocalSolana() as chain:
        yield chain


@pytest.fixture
def usdc(solana, settings) -> Usdc:
    authority, node = Keypair(), Keypair()
    solana.fund(authority.pubkey())
    mint = solana.create_mint(authority, decimals=6)
    node_account = solana.create_token_account(node.pubkey(), mint)
    settings.PEER_SOLANA_RPC_URL = solana.url
    settings.PEER_USDC_MINT = str(mint)
    settings.PEER_PAY_TO = str(node.pubkey())
    settings.PEER_DEPOSIT_COMMITMENT = "finalized"
    return Usdc(chain=solana, mint=mint, authority=authority, node=node, node_account=node_account)

