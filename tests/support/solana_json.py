"""Accounts, transactions and inner instructions as the JSON-RPC writes them, and the two mint
instructions the test cluster needs."""

import base64
from decimal import Decimal

from solders.instruction import AccountMeta, Instruction
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from apps.credits.solana.base58 import b58encode
from apps.credits.solana.tokens import TOKEN_PROGRAM_ID

TOKEN_ACCOUNT_SIZE = 165
_INITIALIZE_MINT2, _MINT_TO = 20, 7


def initialize_mint_instruction(mint: Pubkey, authority: Pubkey, decimals: int) -> Instruction:
    data = bytes([_INITIALIZE_MINT2, decimals]) + bytes(authority) + bytes([0])  # no freeze authority
    return Instruction(TOKEN_PROGRAM_ID, data, [AccountMeta(mint, is_signer=False, is_writable=True)])


def mint_to_instruction(mint: Pubkey, account: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    return Instruction(TOKEN_PROGRAM_ID, bytes([_MINT_TO]) + amount.to_bytes(8, "little"), [
        AccountMeta(mint, is_signer=False, is_writable=True), AccountMeta(account, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False)])


def account_json(account, encoding: str) -> dict | None:
    """getAccountInfo's value. jsonParsed falls back to base64, as the RPC does without a parser."""
    if account is None:
        return None
    data = bytes(account.data)
    encoded = [b58encode(data), "base58"] if encoding == "base58" else [base64.b64encode(data).decode(), "base64"]
    return {"data": encoded, "executable": account.executable, "lamports": account.lamports,
            "owner": str(account.owner), "rentEpoch": account.rent_epoch, "space": len(data)}


def token_balance_json(svm, account, index: int) -> dict | None:
    """A pre/postTokenBalances entry for a token account (None for a mint or anything else)."""
    data = bytes(account.data)
    if len(data) < TOKEN_ACCOUNT_SIZE or (len(data) > TOKEN_ACCOUNT_SIZE and data[TOKEN_ACCOUNT_SIZE] != 2):
        return None
    mint = Pubkey(data[0:32])
    mint_account = svm.get_account(mint)
    decimals = bytes(mint_account.data)[44] if mint_account else 0
    amount = int.from_bytes(data[64:72], "little")
    ui = Decimal(amount).scaleb(-decimals)
    return {"accountIndex": index, "mint": str(mint), "owner": str(Pubkey(data[32:64])),
            "programId": str(account.owner),
            "uiTokenAmount": {"amount": str(amount), "decimals": decimals, "uiAmount": float(ui),
                              "uiAmountString": format(ui.normalize(), "f") if amount else "0"}}


def decode_transaction(data: str, config: dict) -> VersionedTransaction:
    if config.get("encoding", "base58") != "base64":
        raise ValueError("send base64: base58 is deprecated and not served here")
    return VersionedTransaction.from_bytes(base64.b64decode(data))


def inner_instructions_json(meta) -> list[dict]:
    groups = []
    for index, group in enumerate(meta.inner_instructions()):
        instructions = []
        for inner in group:
            compiled = inner.instruction()
            instructions.append({"programIdIndex": compiled.program_id_index,
                                 "accounts": list(bytes(compiled.accounts)),
                                 "data": b58encode(bytes(compiled.data)), "stackHeight": inner.stack_height()})
        if instructions:
            groups.append({"index": index, "instructions": instructions})
    return groups


def transaction_json(tx: VersionedTransaction) -> dict:
    message, header = tx.message, tx.message.header
    body = {"header": {"numRequiredSignatures": header.num_required_signatures,
                       "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                       "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts},
            "accountKeys": [str(key) for key in message.account_keys],
            "recentBlockhash": str(message.recent_blockhash),
            "instructions": [{"programIdIndex": ix.program_id_index, "accounts": list(bytes(ix.accounts)),
                              "data": b58encode(bytes(ix.data)), "stackHeight": None} for ix in message.instructions]}
    if isinstance(message, MessageV0):
        body["addressTableLookups"] = []
    return {"signatures": [str(s) for s in tx.signatures], "message": body}
