"""A fake node that implements the node's (and its enclaves') side of docs/confidential.md with
real cryptography, for tests of the local proxy (client/proxy.py).

Two simulated enclaves serve MODEL. GET /v1/attestation answers with each one's evidence over the
caller's nonce; POST /v1/chat/completions opens the sealed request with the enclave the request
names, "generates" the last user message reversed, seals it piece by piece to the reply key and
signs the sealed bytes and the answer, streamed or not. Requests with peer_tier "open" or
"verified" are answered in clear (content "plain: <prompt>"). Every raw request body is recorded,
so a test can search the bytes the node saw.

Each enclave's `faults` make it misbehave the ways the proxy must notice (see `Faults`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from client import proof, sealing
from client.answer_stream import AnswerSealer
from client.attestation.simulated import SimulatedEnclave
from client.binding import fresh_nonce
from client.sealing import REQUEST_INFO

MODEL = "fake-model"
MODEL_DIGEST = "sha256:" + hashlib.sha256(b"fake-model.gguf").hexdigest()
CODE = "sha256:" + "ab" * 32
OTHER_CODE = "sha256:" + "cd" * 32
API_KEY = "pc_fake_node_key"
PIECE_SIZE = 3


@dataclass
class Faults:
    unavailable: bool = False  # 503 enclave_unavailable for requests sealed to it
    unavailable_in_stream: bool = False  # a stream opening with an enclave_unavailable event
    wrong_signature: bool = False  # signs another answer than the one it sealed
    reordered_chunks: bool = False  # swaps the first two sealed pieces
    stale_nonce: bool = False  # evidence over a nonce that is not the caller's
    listed_key_differs: bool = False  # the listing's enclave_key is not the evidence's
    other_measurement: bool = False  # evidence for OTHER_CODE


class FakeEnclave:
    def __init__(self, worker: str):
        self.worker = worker
        self.simulated = SimulatedEnclave()
        self.faults = Faults()

    def listing(self, nonce: bytes) -> dict:
        evidence = self.simulated.evidence(
            model_digest=MODEL_DIGEST,
            code_measurement=OTHER_CODE if self.faults.other_measurement else CODE,
            nonce=fresh_nonce() if self.faults.stale_nonce else nonce)
        enclave_key = sealing.keypair()[1] if self.faults.listed_key_differs else \
            self.simulated.public_key
        return {"worker": self.worker, "kind": "simulated", "simulated": True,
                "enclave_key": enclave_key, "signing_key": self.simulated.signing_key,
                "model_digest": MODEL_DIGEST, "code_measurement": evidence["code_measurement"],
                "evidence": evidence,
                # The node's own verdict says ok whatever the faults: the proxy must not care.
                "verdict": {"ok": True, "simulated": True, "problems": []}}

    def answer(self, sealed_request: dict) -> tuple[list[dict], str, str]:
        """(sealed pieces, signature, the answer's text) for a request sealed to this enclave."""
        plaintext = sealing.open_sealed(self.simulated.private_key, sealed_request["request"],
                                        info=REQUEST_INFO)
        answer = answer_for(json.loads(plaintext))
        pieces = [answer[start:start + PIECE_SIZE] for start in range(0, len(answer), PIECE_SIZE)]
        sealer = AnswerSealer(sealed_request["reply_key"])
        sealed = [sealer.seal_piece(piece.encode("utf-8")) for piece in pieces]
        if self.faults.reordered_chunks:
            sealed[0], sealed[1] = sealed[1], sealed[0]
        signed = answer + " (not this)" if self.faults.wrong_signature else answer
        signature = proof.answer_sign(self.simulated.signing_private_key, plaintext, signed)
        return sealed, signature, answer


def answer_for(request: dict) -> str:
    """The fake model's answer: the last user message reversed."""
    last_user = [message["content"] for message in request["messages"] if message["role"] == "user"]
    return last_user[-1][::-1]


class FakeConfidentialNode:
    """Start with `with FakeConfidentialNode() as node:`; `node.url` is its root."""

    def __init__(self):
        self.enclaves = [FakeEnclave("worker-a"), FakeEnclave("worker-b")]
        self.chat_bodies: list[bytes] = []  # raw, in arrival order
        self.attestation_nonces: list[str] = []
        self.served_by: list[str] = []  # the worker each sealed request was sent to
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.node = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeConfidentialNode:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def enclave_for(self, enclave_key: str) -> FakeEnclave | None:
        return next((enclave for enclave in self.enclaves
                     if enclave.simulated.public_key == enclave_key), None)


def _error(message: str, code: str, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: every answer ends with the connection, so a stream needs no framing here.
    protocol_version = "HTTP/1.0"

    @property
    def node(self) -> FakeConfidentialNode:
        return self.server.node

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        if not self.authorized():
            return
        url = urlsplit(self.path)
        if url.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "peercycles"}]})
        elif url.path == "/v1/attestation":
            query = parse_qs(url.query)
            nonce_b64 = query["nonce"][0]
            self.node.attestation_nonces.append(nonce_b64)
            nonce = sealing.b64_canonical(nonce_b64, "nonce")
            self.send_json(200, {"object": "attestation", "model": query["model"][0],
                                 "nonce": nonce_b64,
                                 "enclaves": [enclave.listing(nonce)
                                              for enclave in self.node.enclaves]})
        else:
            self.send_json(404, _error("not found", "unknown_url"))

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.authorized():
            return
        self.node.chat_bodies.append(raw)
        body = json.loads(raw)
        if body.get("peer_tier") in ("open", "verified"):
            return self.answer_in_clear(body)
        if {"messages", "prompt", "stop", "tools"} & body.keys():
            return self.send_json(400, _error("content in the clear",
                                              "plaintext_in_confidential_request"))
        sealed_request = body["peer_sealed"]
        enclave = self.node.enclave_for(sealed_request["enclave_key"])
        self.node.served_by.append(enclave.worker if enclave else "none")
        stream = body.get("stream") is True
        if enclave is None or enclave.faults.unavailable or (
                enclave.faults.unavailable_in_stream and not stream):
            return self.send_json(503, _error("the enclave is not online", "enclave_unavailable",
                                              "service_unavailable"))
        sealed, signature, answer = enclave.answer(sealed_request)
        peer = {"job_id": "job-1", "tier": "confidential", "worker": enclave.worker,
                "enclave_signature": signature,
                "attestation": {"kind": "simulated", "simulated": True,
                                "enclave_key": enclave.simulated.public_key,
                                "signing_key": enclave.simulated.signing_key}}
        if stream:
            return self.stream(body, enclave, sealed, peer)
        self.send_json(200, {"id": "chatcmpl-job1", "object": "chat.completion", "created": 1,
                             "model": MODEL,
                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": None},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": len(sealed),
                                       "total_tokens": 5 + len(sealed)},
                             "peer": {**peer, "sealed": sealed}})

    def stream(self, body: dict, enclave: FakeEnclave, sealed: list[dict], peer: dict):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        envelope = {"id": "chatcmpl-job1", "object": "chat.completion.chunk", "created": 1,
                    "model": MODEL}
        self.event({**envelope, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                             "finish_reason": None}]})
        if enclave.faults.unavailable_in_stream:
            self.event(_error("the enclave went away", "enclave_unavailable",
                              "service_unavailable"))
            return self.event("[DONE]")
        for seq, envelope_sealed in enumerate(sealed):
            self.event({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": None}],
                        "peer": {"seq": seq, "sealed": envelope_sealed}})
        self.event({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "peer": peer})
        if (body.get("stream_options") or {}).get("include_usage"):
            self.event({**envelope, "choices": [],
                        "usage": {"prompt_tokens": 5, "completion_tokens": len(sealed),
                                  "total_tokens": 5 + len(sealed)}})
        self.event("[DONE]")

    def answer_in_clear(self, body: dict):
        self.send_json(200, {"id": "chatcmpl-clear", "object": "chat.completion", "created": 1,
                             "model": MODEL,
                             "choices": [{"index": 0, "message": {
                                 "role": "assistant",
                                 "content": "plain: " + body["messages"][-1]["content"]},
                                 "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                       "total_tokens": 2},
                             "peer": {"tier": body["peer_tier"]}})

    def event(self, data: dict | str):
        payload = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {payload}\n\n".encode("utf-8"))
        self.wfile.flush()

    def authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self.send_json(401, _error("bad API key", "invalid_api_key", "authentication_error"))
        return False

    def send_json(self, status: int, body: dict):
        content = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
