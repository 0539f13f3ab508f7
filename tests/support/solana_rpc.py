"""A Solana JSON-RPC endpoint for tests: LiteSVM (solders' in-process Solana runtime) behind a
threaded HTTP server on 127.0.0.1, answering in the real JSON-RPC formats, so production code
talks to it through solana-py's HTTP client unchanged.

LiteSVM runs transactions for real (signatures checked; System, SPL Token, Associated Token and
Memo programs executed) but keeps no block history, so this server keeps it: every landed
transaction gets its own slot, a block time, its balances before and after, logs and inner
instructions, and history queries (getSignaturesForAddress, getTransaction,
getSignatureStatuses) are answered from that record. A new blockhash follows each landed
transaction; the last 150 stay valid, older ones are "Blockhash not found".

Commitment: everything is finalized at once, except signatures handed to `hold_unfinalized()`:
they stay "confirmed" (invisible to finalized queries) until `finalize()`. Account state has one
version only (LiteSVM's), whatever the commitment asked.

Not served: jsonParsed transactions, address lookup tables, subscriptions.
"""

import base64
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcConfirmedTransactionStatusWithSignature
from solders.signature import Signature
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.instructions import create_associated_token_account, get_associated_token_address

from apps.credits.solana.tokens import MEMO_PROGRAM_ID, TOKEN_PROGRAM_ID, TOKEN_PROGRAMS

from .solana_json import (account_json, decode_transaction, initialize_mint_instruction, inner_instructions_json,
                          mint_to_instruction, token_balance_json, transaction_json)

LAMPORTS_PER_SIGNATURE = 5_000
RECENT_BLOCKHASHES = 150


class RpcFault(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _error_json(err) -> object:
    """A TransactionError as the RPC writes it ({"InstructionError": [0, {"Custom": 1}]}), by solders."""
    return json.loads(RpcConfirmedTransactionStatusWithSignature(Signature.default(), 0, err=err).to_json())["err"]


_MESSAGES = {"AlreadyProcessed": "This transaction has already been processed",
             "BlockhashNotFound": "Blockhash not found",
             "AccountNotFound": "Attempt to debit an account but found no record of a prior credit."}


def _error_message(err) -> str:
    if isinstance(err, str):
        return _MESSAGES.get(err, err)
    if isinstance(err, dict) and "InstructionError" in err:
        index, error = err["InstructionError"]
        if isinstance(error, dict) and "Custom" in error:
            return f"Error processing Instruction {index}: custom program error: {error['Custom']:#x}"
        return f"Error processing Instruction {index}: {json.dumps(error)}"
    return json.dumps(err)


@dataclass
class Landed:
    signature: str
    slot: int
    block_time: int
    tx: VersionedTransaction | None   # None for an airdrop (LiteSVM's faucet does not show its transaction)
    err: object                       # JSON form, None when it succeeded
    meta: dict | None
    keys: frozenset[str]
    memo: str | None


class LocalSolana:
    def __init__(self):
        self.svm = LiteSVM().with_sigverify(True).with_blockhash_check(False)  # we check blockhashes ourselves
        self.slot = 1
        self.calls: list[str] = []             # RPC methods called, in order: tests may assert on them
        self._lock = threading.RLock()
        self._landed: dict[str, Landed] = {}   # insertion order is slot order
        self._held: set[str] = set()
        self._recent = [str(self.svm.latest_blockhash())]
        self._server: ThreadingHTTPServer | None = None
        self.faucet = Keypair()  # pays for the accounts the test cluster creates
        self.fund(self.faucet.pubkey(), 10**13)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "LocalSolana":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="local-solana-rpc", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalSolana":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the test's hands on the cluster (not through RPC) ---------------------------------------
    def hold_unfinalized(self, signature) -> None:
        """Keep a landed signature at "confirmed" until finalize(): finalized queries do not see it."""
        with self._lock:
            self._held.add(str(signature))

    def finalize(self, signature) -> None:
        with self._lock:
            self._held.discard(str(signature))

    def expire_blockhashes(self) -> None:
        """Let more than the validity window of slots pass: every blockhash handed out so far
        expires, so a transaction signed with one can never land."""
        with self._lock:
            self.slot += RECENT_BLOCKHASHES + 1
            self.svm.warp_to_slot(self.slot)
            self.svm.expire_blockhash()
            self._recent = [str(self.svm.latest_blockhash())]

    def fund(self, pubkey: Pubkey, lamports: int = 10**10) -> None:
        with self._lock:
            if isinstance(self.svm.airdrop(pubkey, lamports), FailedTransactionMetadata):
                raise RuntimeError(f"LiteSVM's faucet could not send {lamports} lamports")

    def execute(self, instructions, *signers: Keypair) -> str:
        """Land a transaction paid by the first signer, as a wallet would (recorded in history)."""
        with self._lock:
            message = MessageV0.try_compile(signers[0].pubkey(), list(instructions), [], self.svm.latest_blockhash())
            return self.land(VersionedTransaction(message, list(signers)), skip_preflight=False)

    def create_mint(self, authority: Keypair, *, decimals: int = 6) -> Pubkey:
        mint = Keypair()
        rent = self.svm.minimum_balance_for_rent_exemption(82)
        self.execute([create_account(CreateAccountParams(from_pubkey=self.faucet.pubkey(), to_pubkey=mint.pubkey(),
                                                         lamports=rent, space=82, owner=TOKEN_PROGRAM_ID)),
                      initialize_mint_instruction(mint.pubkey(), authority.pubkey(), decimals)], self.faucet, mint)
        return mint.pubkey()

    def create_token_account(self, owner: Pubkey, mint: Pubkey) -> Pubkey:
        self.execute([create_associated_token_account(self.faucet.pubkey(), owner, mint)], self.faucet)
        return get_associated_token_address(owner, mint)

    def mint_to(self, mint: Pubkey, authority: Keypair, account: Pubkey, amount: int) -> None:
        self.execute([mint_to_instruction(mint, account, authority.pubkey(), amount)], self.faucet, authority)

    def token_balance(self, account: Pubkey) -> int:
        account_data = self.svm.get_account(account)
        return int.from_bytes(bytes(account_data.data)[64:72], "little") if account_data else 0

    # --- landing --------------------------------------------------------------------------------
    def land(self, tx: VersionedTransaction, *, skip_preflight: bool) -> str:
        """Run a transaction; record it when it lands (succeeded, or failed and paid its fee).
        What sendTransaction does; RpcFault when it is refused before running."""
        with self._lock:
            return self._land(tx, skip_preflight=skip_preflight)

    def _land(self, tx: VersionedTransaction, *, skip_preflight: bool) -> str:
        signature = str(tx.signatures[0])
        if isinstance(tx.message, MessageV0) and tx.message.address_table_lookups:
            raise RpcFault(-32602, "address lookup tables are not served by this test endpoint")
        if str(tx.message.recent_blockhash) not in self._recent:
            raise self._refused("BlockhashNotFound")
        if not skip_preflight:
            simulated = self.svm.simulate_transaction(tx)
            if isinstance(simulated, FailedTransactionMetadata):
                raise self._refused(_error_json(simulated.err()), simulated.meta())
        keys = list(tx.message.account_keys)
        pre, pre_tokens = self._balances(keys)
        self.slot += 1
        self.svm.warp_to_slot(self.slot)
        result = self.svm.send_transaction(tx)
        failed = isinstance(result, FailedTransactionMetadata)
        meta = result.meta() if failed else result
        if failed and str(meta.signature()) != signature:  # rejected before running: nothing landed
            if skip_preflight and "AlreadyProcessed" in str(result.err()):
                return signature  # a resend of a landed transaction is a no-op, as on a real cluster
            raise self._refused(_error_json(result.err()))
        post, post_tokens = self._balances(keys)
        err = _error_json(result.err()) if failed else None
        memos = [bytes(ix.data).decode("utf-8", "replace") for ix in tx.message.instructions
                 if keys[ix.program_id_index] == MEMO_PROGRAM_ID]
        self._record(Landed(
            signature=signature, slot=self.slot, block_time=int(time.time()), tx=tx, err=err,
            keys=frozenset(map(str, keys)), memo="; ".join(f"[{len(m)}] {m}" for m in memos) or None,
            meta={"err": err, "status": {"Ok": None} if err is None else {"Err": err},
                  "fee": LAMPORTS_PER_SIGNATURE * tx.message.header.num_required_signatures,
                  "preBalances": pre, "postBalances": post, "innerInstructions": inner_instructions_json(meta),
                  "logMessages": list(meta.logs()), "preTokenBalances": pre_tokens, "postTokenBalances": post_tokens,
                  "rewards": [], "loadedAddresses": {"writable": [], "readonly": []},
                  "computeUnitsConsumed": meta.compute_units_consumed()}))
        return signature

    def _record(self, landed: Landed) -> None:
        self._landed[landed.signature] = landed
        self.svm.expire_blockhash()
        self._recent = (self._recent + [str(self.svm.latest_blockhash())])[-RECENT_BLOCKHASHES:]

    def _balances(self, keys: list[Pubkey]) -> tuple[list[int], list[dict]]:
        lamports, tokens = [], []
        for index, key in enumerate(keys):
            account = self.svm.get_account(key)
            lamports.append(account.lamports if account else 0)
            if account is not None and account.owner in TOKEN_PROGRAMS:
                balance = token_balance_json(self.svm, account, index)
                if balance is not None:
                    tokens.append(balance)
        return lamports, tokens

    def _refused(self, err, meta=None) -> RpcFault:
        """sendTransaction's preflight failure (-32002), worded as the RPC words it, with the
        simulation result as its data."""
        return RpcFault(-32002, f"Transaction simulation failed: {_error_message(err)}", self._simulation(err, meta))

    def _simulation(self, err, meta=None) -> dict:
        return {"err": err, "logs": list(meta.logs()) if meta else [], "accounts": None,
                "unitsConsumed": meta.compute_units_consumed() if meta else 0, "returnData": None,
                "innerInstructions": None}

    def _visible(self, landed: Landed, commitment: str | None) -> bool:
        return (commitment or "finalized") != "finalized" or landed.signature not in self._held

    def _status(self, landed: Landed) -> str:
        return "confirmed" if landed.signature in self._held else "finalized"

    # --- JSON-RPC ---------------------------------------------------------------------------------
    def dispatch(self, request: dict) -> dict:
        method, params = request.get("method"), request.get("params") or []
        reply = {"jsonrpc": "2.0", "id": request.get("id")}
        handler = getattr(self, f"rpc_{method}", None)
        with self._lock:
            self.calls.append(str(method))
            try:
                if handler is None:
                    raise RpcFault(-32601, "Method not found")
                reply["result"] = handler(*params)
            except RpcFault as fault:
                reply["error"] = {"code": fault.code, "message": fault.message,
                                  **({"data": fault.data} if fault.data is not None else {})}
            except (TypeError, ValueError) as exc:
                reply["error"] = {"code": -32602, "message": f"Invalid params: {exc}"}
        return reply

    def _context(self, value) -> dict:
        return {"context": {"slot": self.slot, "apiVersion": "2.2.0"}, "value": value}

    def rpc_getHealth(self):
        return "ok"

    def rpc_getVersion(self):
        return {"solana-core": "2.2.0", "feature-set": 0}

    def rpc_getSlot(self, config=None):
        return self.slot

    rpc_getBlockHeight = rpc_getSlot

    def rpc_getLatestBlockhash(self, config=None):
        return self._context({"blockhash": self._recent[-1], "lastValidBlockHeight": self.slot + RECENT_BLOCKHASHES})

    def rpc_isBlockhashValid(self, blockhash, config=None):
        return self._context(blockhash in self._recent)

    def rpc_getMinimumBalanceForRentExemption(self, size, config=None):
        return self.svm.minimum_balance_for_rent_exemption(size)

    def rpc_getBalance(self, address, config=None):
        return self._context(self.svm.get_balance(Pubkey.from_string(address)) or 0)

    def rpc_getAccountInfo(self, address, config=None):
        account = self.svm.get_account(Pubkey.from_string(address))
        return self._context(account_json(account, (config or {}).get("encoding", "base64")))

    def rpc_getMultipleAccounts(self, addresses, config=None):
        encoding = (config or {}).get("encoding", "base64")
        return self._context([account_json(self.svm.get_account(Pubkey.from_string(a)), encoding) for a in addresses])

    def rpc_getTokenAccountBalance(self, address, config=None):
        account = self.svm.get_account(Pubkey.from_string(address))
        is_token = account is not None and account.owner in TOKEN_PROGRAMS
        balance = token_balance_json(self.svm, account, 0) if is_token else None
        if balance is None:
            raise RpcFault(-32602, "Invalid param: not a Token account")
        return self._context(balance["uiTokenAmount"])

    def rpc_requestAirdrop(self, address, lamports, config=None):
        result = self.svm.airdrop(Pubkey.from_string(address), lamports)
        self.slot += 1
        if isinstance(result, FailedTransactionMetadata):
            raise RpcFault(-32603, f"airdrop failed: {result.err()}")
        signature = str(result.signature())
        self._record(Landed(signature=signature, slot=self.slot, block_time=int(time.time()), tx=None, err=None,
                            meta=None, keys=frozenset({address}), memo=None))
        return signature

    def rpc_sendTransaction(self, data, config=None):
        config = config or {}
        return self.land(decode_transaction(data, config), skip_preflight=bool(config.get("skipPreflight")))

    def rpc_simulateTransaction(self, data, config=None):
        config = config or {}
        tx = decode_transaction(data, config)
        if not config.get("replaceRecentBlockhash") and str(tx.message.recent_blockhash) not in self._recent:
            return self._context(self._simulation("BlockhashNotFound"))
        simulated = self.svm.simulate_transaction(tx)
        if isinstance(simulated, FailedTransactionMetadata):
            return self._context(self._simulation(_error_json(simulated.err()), simulated.meta()))
        return self._context(self._simulation(None, simulated.meta()))

    def rpc_getSignatureStatuses(self, signatures, config=None):
        statuses = []
        for signature in signatures:
            landed = self._landed.get(signature)
            statuses.append(None if landed is None else {
                "slot": landed.slot, "confirmations": None if self._status(landed) == "finalized" else 1,
                "err": landed.err, "status": {"Ok": None} if landed.err is None else {"Err": landed.err},
                "confirmationStatus": self._status(landed)})
        return self._context(statuses)

    def rpc_getSignaturesForAddress(self, address, config=None):
        config = config or {}
        limit, before, until = min(int(config.get("limit") or 1000), 1000), config.get("before"), config.get("until")
        entries, started = [], before is None
        for landed in reversed(list(self._landed.values())):
            if not started:
                started = landed.signature == before
                continue
            if landed.signature == until or len(entries) == limit:
                break
            if address in landed.keys and self._visible(landed, config.get("commitment")):
                entries.append({"signature": landed.signature, "slot": landed.slot, "err": landed.err,
                                "memo": landed.memo, "blockTime": landed.block_time,
                                "confirmationStatus": self._status(landed)})
        return entries

    def rpc_getTransaction(self, signature, config=None):
        config = config if isinstance(config, dict) else {"encoding": config or "json"}
        landed = self._landed.get(signature)
        if landed is None or landed.tx is None or not self._visible(landed, config.get("commitment")):
            return None
        version = landed.tx.version()
        supported = config.get("maxSupportedTransactionVersion")
        if version == 0 and supported is None:
            raise RpcFault(-32015, "Transaction version (0) is not supported by the requesting client. Please try "
                                   "the request again with the following configuration parameter: "
                                   "\"maxSupportedTransactionVersion\": 0")
        encoding = config.get("encoding", "json")
        if encoding == "base64":
            encoded = [base64.b64encode(bytes(landed.tx)).decode(), "base64"]
        elif encoding == "json":
            encoded = transaction_json(landed.tx)
        else:
            raise RpcFault(-32602, f"Invalid params: encoding {encoding} is not served by this test endpoint")
        answer = {"slot": landed.slot, "blockTime": landed.block_time, "meta": landed.meta, "transaction": encoded}
        if supported is not None:
            answer["version"] = 0 if version == 0 else "legacy"
        return answer


def _handler(chain: LocalSolana):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as solana-py's httpx client expects
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def do_POST(self):
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                reply = [chain.dispatch(r) for r in request] if isinstance(request, list) else chain.dispatch(request)
            except json.JSONDecodeError:
                reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler
