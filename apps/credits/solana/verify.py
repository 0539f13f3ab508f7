"""Is a landed transaction a USDC deposit for a given reference, and for how much? Pure.

The rule (docs/payments.md): the transaction succeeded; at least one SPL token transfer in it
(top level or inner, `TransferChecked`, or a plain `Transfer` whose destination fixes the mint)
carries the reference among its accounts and moves USDC (configured mint, 6 decimals) into the
node's USDC token account. What is credited is what those transfers moved into that account, at
most the account's own balance change when the RPC reports token balances. An amount different
from the one asked for is credited as it arrived, with a note.
"""

import json
from dataclasses import dataclass

from solders.pubkey import Pubkey
from solders.rpc.responses import RpcConfirmedTransactionStatusWithSignature
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from .tokens import TokenTransfer, account_keys, memos, token_transfers


@dataclass(frozen=True)
class Verdict:
    credit: bool
    amount: int            # atomic units (micro-USDC) to credit; 0 when refused
    reason: str = ""       # why it was refused, or a note on a credited deposit
    payer: str = ""        # the wallet that signed the transfer (its source's owner)
    memo: str = ""


def error_text(err) -> str:
    """A TransactionError as the RPC writes it: {"InstructionError": [0, {"Custom": 1}]}."""
    status = RpcConfirmedTransactionStatusWithSignature(Signature.default(), 0, err=err)
    return json.dumps(json.loads(status.to_json())["err"], separators=(",", ":"))


def _refuse(reason: str, transfer: TokenTransfer | None = None, memo: str = "") -> Verdict:
    return Verdict(credit=False, amount=0, reason=reason,
                   payer=str(transfer.authority) if transfer else "", memo=memo)


def _why_not(transfer: TokenTransfer, *, mint: Pubkey, destination: Pubkey, decimals: int) -> str:
    if transfer.mint is not None and transfer.mint != mint:
        return f"wrong mint: the transfer moves {transfer.mint}, not USDC ({mint})"
    if transfer.destination != destination:
        return f"wrong destination: the transfer pays {transfer.destination}, not the node's USDC account {destination}"
    return f"wrong decimals: {transfer.decimals}, USDC has {decimals}"


def _received(tx: VersionedTransaction, meta, destination: Pubkey, mint: Pubkey) -> int | None:
    """The destination's balance change as the RPC reports it, or None when it does not."""
    post_balances, pre_balances = getattr(meta, "post_token_balances", None), getattr(meta, "pre_token_balances", None)
    if post_balances is None or pre_balances is None:
        return None
    keys = account_keys(tx, meta)
    if destination not in keys:
        return None
    index = keys.index(destination)

    def amount(balances) -> int | None:
        return next((int(b.ui_token_amount.amount) for b in balances
                     if b.account_index == index and b.mint == mint), None)

    post = amount(post_balances)
    return None if post is None else post - (amount(pre_balances) or 0)


def deposit_verdict(*, tx: VersionedTransaction, meta, mint: Pubkey, destination: Pubkey, reference: Pubkey,
                    requested: int, decimals: int = 6) -> Verdict:
    """Credit or refuse one landed transaction found under `reference`. `meta` is the RPC's
    UiTransactionStatusMeta (never None); `requested` only decides whether a note is added."""
    memo = "; ".join(memos(tx, meta))[:200]
    if meta.err is not None:
        return _refuse(f"the transaction failed on chain: {error_text(meta.err)}", memo=memo)
    carrying = [t for t in token_transfers(tx, meta) if reference in t.extra]
    if not carrying:
        return _refuse("no SPL token transfer in the transaction carries the reference", memo=memo)
    good = [t for t in carrying if t.destination == destination
            and (t.mint is None or (t.mint == mint and t.decimals == decimals))]
    if not good:
        return _refuse(_why_not(carrying[0], mint=mint, destination=destination, decimals=decimals),
                       carrying[0], memo)
    amount = sum(t.amount for t in good)
    received = _received(tx, meta, destination, mint)
    note = ""
    if received is not None and received < amount:
        note = f"the transfers say {amount} but the account received {received}; "
        amount = received
    if amount <= 0:
        return _refuse("nothing arrived in the node's USDC account", good[0], memo)
    if amount != requested:
        note += f"paid {amount} micro-USDC where {requested} was asked: credited what arrived"
    return Verdict(credit=True, amount=amount, reason=note.rstrip("; "), payer=str(good[0].authority), memo=memo)
