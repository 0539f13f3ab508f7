"""SPL Token transfers: built the way a Solana Pay wallet builds them (and node payouts will), and
read back out of a landed transaction. Pure: no Django, no I/O.

A Solana Pay transfer is one `TransferChecked` instruction (source, mint, destination, authority)
with the request's reference keys appended as read-only, non-signer accounts; the token program
ignores extra accounts when the authority is a single key, and the reference makes the
transaction findable with `getSignaturesForAddress(reference)`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.instructions import get_associated_token_address

from .base58 import b58decode

__all__ = ["ASSOCIATED_TOKEN_PROGRAM_ID", "MEMO_PROGRAM_ID", "TOKEN_2022_PROGRAM_ID", "TOKEN_PROGRAM_ID",
           "TOKEN_PROGRAMS", "TokenTransfer", "account_keys", "associated_token_address", "memo_instruction", "memos",
           "token_transfers", "transfer_checked_instruction"]

TOKEN_PROGRAMS = frozenset({TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID})
_TRANSFER = 3
_TRANSFER_CHECKED = 12


def associated_token_address(*, owner: Pubkey, mint: Pubkey, token_program: Pubkey = TOKEN_PROGRAM_ID) -> Pubkey:
    return get_associated_token_address(owner, mint, token_program)


def transfer_checked_instruction(*, source: Pubkey, mint: Pubkey, destination: Pubkey, authority: Pubkey,
                                 amount: int, decimals: int, references: Sequence[Pubkey] = (),
                                 token_program: Pubkey = TOKEN_PROGRAM_ID) -> Instruction:
    """`TransferChecked` of `amount` atomic units from token account `source` to token account
    `destination`, signed by `authority` (the source's owner), carrying `references`."""
    if not 0 < amount < 2**64:
        raise ValueError(f"amount {amount} is not a positive u64")
    data = bytes([_TRANSFER_CHECKED]) + amount.to_bytes(8, "little") + bytes([decimals])
    accounts = [AccountMeta(source, is_signer=False, is_writable=True),
                AccountMeta(mint, is_signer=False, is_writable=False),
                AccountMeta(destination, is_signer=False, is_writable=True),
                AccountMeta(authority, is_signer=True, is_writable=False)]
    accounts += [AccountMeta(reference, is_signer=False, is_writable=False) for reference in references]
    return Instruction(token_program, data, accounts)


def memo_instruction(*, text: str, signers: Sequence[Pubkey] = ()) -> Instruction:
    return Instruction(MEMO_PROGRAM_ID, text.encode(),
                       [AccountMeta(signer, is_signer=True, is_writable=False) for signer in signers])


@dataclass(frozen=True)
class TokenTransfer:
    """One `Transfer` or `TransferChecked` found in a transaction (top level or inner)."""

    program: Pubkey
    source: Pubkey
    destination: Pubkey
    authority: Pubkey
    amount: int
    mint: Pubkey | None        # None for a plain Transfer, which names no mint
    decimals: int | None
    extra: tuple[Pubkey, ...]  # accounts after the required ones: Solana Pay references (or multisig signers)


def account_keys(tx: VersionedTransaction, meta) -> list[Pubkey]:
    """Static keys, then the keys loaded from lookup tables (writable, then read-only), which is
    how compiled instructions index them."""
    keys = list(tx.message.account_keys)
    loaded = getattr(meta, "loaded_addresses", None) if meta is not None else None
    if loaded is not None:
        keys += list(loaded.writable) + list(loaded.readonly)
    return keys


def _instructions(tx: VersionedTransaction, meta) -> list[tuple[int, bytes, bytes]]:
    """(program index, account indexes, data) of every top-level and inner instruction."""
    found = [(ix.program_id_index, bytes(ix.accounts), bytes(ix.data)) for ix in tx.message.instructions]
    for group in (getattr(meta, "inner_instructions", None) or []) if meta is not None else []:
        for ix in group.instructions:
            data = getattr(ix, "data", None)
            if isinstance(data, str):  # a compiled inner instruction; parsed ones carry no raw data
                found.append((ix.program_id_index, bytes(ix.accounts), b58decode(data)))
    return found


def _decode(program: Pubkey, accounts: list[Pubkey], data: bytes) -> TokenTransfer | None:
    if program not in TOKEN_PROGRAMS or not data:
        return None
    if data[0] == _TRANSFER_CHECKED and len(data) == 10 and len(accounts) >= 4:
        return TokenTransfer(program=program, source=accounts[0], mint=accounts[1], destination=accounts[2],
                             authority=accounts[3], amount=int.from_bytes(data[1:9], "little"),
                             decimals=data[9], extra=tuple(accounts[4:]))
    if data[0] == _TRANSFER and len(data) == 9 and len(accounts) >= 3:
        return TokenTransfer(program=program, source=accounts[0], mint=None, destination=accounts[1],
                             authority=accounts[2], amount=int.from_bytes(data[1:9], "little"),
                             decimals=None, extra=tuple(accounts[3:]))
    return None


def token_transfers(tx: VersionedTransaction, meta=None) -> list[TokenTransfer]:
    """Every SPL token transfer of a landed transaction; `meta` (the RPC's
    UiTransactionStatusMeta) adds inner instructions and lookup-table keys."""
    keys = account_keys(tx, meta)
    transfers = []
    for program_index, account_indexes, data in _instructions(tx, meta):
        if program_index >= len(keys) or any(i >= len(keys) for i in account_indexes):
            continue  # keys we cannot resolve: not something we can credit
        transfer = _decode(keys[program_index], [keys[i] for i in account_indexes], data)
        if transfer is not None:
            transfers.append(transfer)
    return transfers


def memos(tx: VersionedTransaction, meta=None) -> list[str]:
    keys = account_keys(tx, meta)
    return [data.decode("utf-8", "replace") for program_index, _, data in _instructions(tx, meta)
            if program_index < len(keys) and keys[program_index] == MEMO_PROGRAM_ID]
