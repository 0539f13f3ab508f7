"""The node's Solana JSON-RPC client: solana-py's real HTTP client, pointed at PEER_SOLANA_RPC_URL,
with the calls deposits make (and payouts will): history, transactions, sending, confirming.

Answers are solders types. Every RPC or transport failure is raised as RpcError, so a caller has
one thing to catch. Calls are slow network I/O: keep them out of database transactions.
"""

import time
import warnings
from collections.abc import Sequence

from solana.exceptions import SolanaRpcException
from solana.rpc.api import Client
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus


_LEVELS = [TransactionConfirmationStatus.Processed, TransactionConfirmationStatus.Confirmed,
           TransactionConfirmationStatus.Finalized]  # solders' enum is not hashable; its order is
_COMMITMENT_RANK = {"processed": 0, "confirmed": 1, "finalized": 2}
PAGE = 1000  # getSignaturesForAddress's largest page


class RpcError(Exception):
    """The RPC endpoint could not be reached or answered with an error."""


def _calling(method):
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (RPCException, SolanaRpcException) as exc:
            raise RpcError(f"{method.__name__}: {exc}") from exc
    wrapped.__name__, wrapped.__doc__ = method.__name__, method.__doc__
    return wrapped


def rpc_client(url: str | None = None, *, commitment: str | None = None) -> "SolanaRpc":
    """A client for the configured cluster at the configured deposit commitment."""
    from django.conf import settings

    return SolanaRpc(url or settings.PEER_SOLANA_RPC_URL,
                     commitment=commitment or settings.PEER_DEPOSIT_COMMITMENT)


def status_reaches(status, commitment: str) -> bool:
    """Whether a signature status (or a getSignaturesForAddress entry) is at `commitment` or beyond."""
    level = getattr(status, "confirmation_status", None)
    return level is not None and _LEVELS.index(level) >= _COMMITMENT_RANK[commitment]


class SolanaRpc:
    def __init__(self, url: str, *, commitment: str = "finalized", timeout: float = 10):
        self.url = url
        self.commitment = Commitment(commitment)
        with warnings.catch_warnings():
            # solana-py 0.39 marks its sync client deprecated in favour of the async one; the
            # sync one is what Celery tasks and the ORM want, and x402's signers use it too.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.client = Client(url, commitment=self.commitment, timeout=timeout)

    def close(self) -> None:
        self.client._provider.session.close()

    def __enter__(self) -> "SolanaRpc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @_calling
    def signatures_for_address(self, address: Pubkey, *, before: Signature | None = None,
                               until: Signature | None = None, limit: int = PAGE) -> list:
        """One page of the address's history, newest first (RpcConfirmedTransactionStatusWithSignature)."""
        return list(self.client.get_signatures_for_address(address, before=before, until=until, limit=limit,
                                                           commitment=self.commitment).value)

    def history(self, address: Pubkey, *, until: Signature | None = None, max_pages: int = 10) -> list:
        """The address's history back to `until` (or its beginning), newest first, at most
        `max_pages` pages: a reference key used by nobody else has a handful of entries."""
        entries: list = []
        for _ in range(max_pages):
            page = self.signatures_for_address(address, before=entries[-1].signature if entries else None,
                                               until=until)
            entries += page
            if len(page) < PAGE:
                break
        return entries

    @_calling
    def transaction(self, signature: Signature):
        """The landed transaction at our commitment (EncodedConfirmedTransactionWithStatusMeta, its
        `.transaction.transaction` decoded by solders from base64), or None: not (yet) there."""
        return self.client.get_transaction(signature, encoding="base64", commitment=self.commitment,
                                           max_supported_transaction_version=0).value

    @_calling
    def latest_blockhash(self) -> tuple[Hash, int]:
        value = self.client.get_latest_blockhash(commitment=Commitment("confirmed")).value
        return value.blockhash, value.last_valid_block_height

    @_calling
    def send_transaction(self, tx: VersionedTransaction, *, skip_preflight: bool = False) -> Signature:
        opts = TxOpts(skip_preflight=skip_preflight, preflight_commitment=Commitment("confirmed"))
        return self.client.send_raw_transaction(bytes(tx), opts=opts).value

    def send_instructions(self, *, instructions: Sequence[Instruction], payer: Keypair,
                          signers: Sequence[Keypair] = (), skip_preflight: bool = False) -> Signature:
        """Compile a v0 transaction on a fresh blockhash, sign it (payer first) and send it."""
        blockhash, _ = self.latest_blockhash()
        message = MessageV0.try_compile(payer.pubkey(), list(instructions), [], blockhash)
        tx = VersionedTransaction(message, [payer, *[s for s in signers if s.pubkey() != payer.pubkey()]])
        return self.send_transaction(tx, skip_preflight=skip_preflight)

    @_calling
    def signature_statuses(self, signatures: Sequence[Signature]) -> list:
        """TransactionStatus (slot, err, confirmation_status) or None per signature."""
        return list(self.client.get_signature_statuses(list(signatures), search_transaction_history=True).value)

    def wait_for(self, signature: Signature, *, commitment: str | None = None, timeout: float = 60,
                 poll: float = 0.5):
        """Poll until the signature reaches `commitment` (default ours); its TransactionStatus.
        Raises RpcError when it failed on chain or did not get there within `timeout` seconds."""
        commitment = commitment or self.commitment.value
        deadline = time.monotonic() + timeout
        while True:
            status = self.signature_statuses([signature])[0]
            if status is not None and status.err is not None:
                raise RpcError(f"{signature} failed on chain: {status.err}")
            if status is not None and status_reaches(status, commitment):
                return status
            if time.monotonic() >= deadline:
                raise RpcError(f"{signature} did not reach {commitment} within {timeout:g}s")
            time.sleep(poll)

    @_calling
    def token_balance(self, account: Pubkey) -> int:
        """Atomic units held by a token account."""
        return int(self.client.get_token_account_balance(account, commitment=self.commitment).value.amount)
