"""The local proxy: an OpenAI-compatible endpoint on this machine that gives any OpenAI client the
confidential tier (docs/confidential.md §5), with nothing changed in the client but its base_url.

For each chat request it attests the enclaves serving the model (client.confidential: its own
nonce, its own check of the evidence, cached for `attestation_ttl`), seals the whole request to
one of them, sends the node only what routing and billing need, opens the sealed answer and checks
the enclave's signature over the sealed request and the answer. Not streamed, nothing reaches the
client before the signature holds. Streamed, each piece is passed on as soon as it opens as the
next chunk (so only text the enclave sealed to this request's key, in order, can show), and the
signature decides the end: the verified closing chunk, or an error event. Text the node adds in
the clear is dropped; an answer that does not open or verify is an OpenAI error (502, or an error
event), never text.

Failover: the node answers 503 `enclave_unavailable` (or, in a stream, an error event with that
code before the first sealed piece) when the enclave chosen went away. The proxy then forgets that
enclave, attests again with a fresh nonce, seals again with a fresh reply key to another enclave,
and retries, up to `max_attempts`; the client sees only the final outcome.

`peer_tier` "open" or "verified" are the client's explicit choice of a tier without sealing: those
requests go to the node unchanged. Only /v1/chat/completions (sealed) and /v1/models are served:
a confidential proxy must not relay a prompt unsealed because the route has no sealed form yet.

Logs carry request ids, enclave workers and timings, never prompt or answer text. The standard
library's ThreadingHTTPServer and httpx; no Django.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from client.confidential import (
    CONFIDENTIAL_TIER, AttestationPolicy, AttestedEnclave, EnclaveCache, SealedAnswer,
    SealedAnswerError, UpstreamError, attest, clear_fields, json_object, no_attested_enclave,
    openai_error, sealed_answer_invalid, sealed_request, signature_invalid, upstream_invalid,
    verified_marker,
)

log = logging.getLogger("client.proxy")

UNSEALED_TIERS = ("open", "verified")
RETRYABLE_CODE = "enclave_unavailable"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
PASSED_HEADERS = ("content-type", "retry-after")
# Generation can take minutes before the last token; connecting should not.
UPSTREAM_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@dataclass
class ProxyConfig:
    upstream: str  # the node's URL, with or without a trailing /v1
    api_key: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (server.server_address says which)
    policy: AttestationPolicy = field(default_factory=AttestationPolicy)
    attestation_ttl: float = 300.0
    max_attempts: int = 3


class ProxyServer(ThreadingHTTPServer):
    """The listening server; its handler threads share one upstream client and one cache."""

    daemon_threads = True  # a stream left open by a client must not keep the process alive

    def __init__(self, config: ProxyConfig):
        self.config = config
        self.upstream = httpx.Client(base_url=upstream_base_url(config.upstream),
                                     headers={"Authorization": f"Bearer {config.api_key}"},
                                     timeout=UPSTREAM_TIMEOUT)
        self.enclaves = EnclaveCache(ttl=config.attestation_ttl)
        super().__init__((config.host, config.port), ProxyHandler)

    def server_close(self) -> None:
        super().server_close()
        self.upstream.close()


def make_server(config: ProxyConfig) -> ProxyServer:
    """A bound server, not yet serving (call serve_forever, e.g. in a thread)."""
    return ProxyServer(config)


def serve(config: ProxyConfig) -> None:
    """Serve until interrupted."""
    server = make_server(config)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def upstream_base_url(upstream: str) -> str:
    """The node's root: paths here all start with /v1, so a URL given with /v1 loses it."""
    base = upstream.rstrip("/")
    return base[:-len("/v1")] if base.endswith("/v1") else base


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams the SDK reads as they come
    server: ProxyServer

    def do_GET(self) -> None:
        self.request_id = secrets.token_hex(4)
        if self.path.split("?", 1)[0] == MODELS_PATH:
            self.forward("GET", self.path, None)
        else:
            self.send_json(404, openai_error(f"this proxy serves {CHAT_PATH} and {MODELS_PATH}",
                                             "unknown_url"))

    def do_POST(self) -> None:
        self.request_id = secrets.token_hex(4)
        raw = self.read_body()
        if raw is None:
            return
        if self.path.split("?", 1)[0] != CHAT_PATH:
            self.send_json(404, openai_error(
                f"this proxy serves {CHAT_PATH} (sealed) and {MODELS_PATH}; other routes have no "
                "confidential form, and a confidential proxy does not relay them unsealed",
                "unknown_url"))
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self.send_json(400, openai_error("the request body is not a JSON object",
                                             "invalid_json"))
            return
        tier = body.get("peer_tier", CONFIDENTIAL_TIER)
        if tier in UNSEALED_TIERS:
            log.info("%s chat tier=%s forwarded unsealed", self.request_id, tier)
            self.forward("POST", self.path, raw)
        elif tier == CONFIDENTIAL_TIER:
            SealedChat(self, body).answer()
        else:
            self.send_json(400, openai_error(
                f"'peer_tier' must be one of {', '.join((*UNSEALED_TIERS, CONFIDENTIAL_TIER))}",
                "invalid_value", param="peer_tier"))

    def read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            # The OpenAI SDKs always send a length; reading until close would hang keep-alive.
            self.send_json(411, openai_error("a Content-Length is required", "length_required"))
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def forward(self, method: str, path: str, raw: bytes | None) -> None:
        """Relay a request to the node unchanged, and its answer back as it comes."""
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        request = self.server.upstream.build_request(method, path, content=raw, headers=headers)
        try:
            response = self.server.upstream.send(request, stream=True)
        except httpx.HTTPError as error:
            self.send_upstream_failure(error)
            return
        try:
            if is_event_stream(response):
                self.start_stream(response.status_code)
                for piece in response.iter_bytes():
                    self.write_chunk(piece)
                self.end_stream()
            else:
                self.send_json(response.status_code, response.read(), passed_headers(response))
        except httpx.HTTPError:
            self.close_connection = True  # cut mid-answer: the client sees the stream end short
        finally:
            response.close()

    def send_json(self, status: int, body: dict | bytes, headers: dict | None = None) -> None:
        """`body` as JSON, or bytes that already are (relayed from the node)."""
        content = body if isinstance(body, bytes) else json.dumps(
            body, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        self.wfile.flush()

    def send_upstream_failure(self, error: UpstreamError | httpx.HTTPError) -> None:
        if isinstance(error, UpstreamError):
            self.send_json(error.status, error.body)
        else:
            self.send_json(502, openai_error(f"the node is unreachable: {type(error).__name__}",
                                             "upstream_unreachable", type_="server_error"))

    def start_stream(self, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:  # an empty chunk would end the body
            self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
            self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            # The client went away mid-answer; the upstream response is closed on the way out.
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("%s %s", self.address_string(), format % args)


class SealedChat:
    """One confidential chat request: choose an attested enclave, seal, send, open, verify;
    fail over while the node says the enclave chosen is unavailable."""

    def __init__(self, handler: ProxyHandler, body: dict):
        self.handler, self.server = handler, handler.server
        self.request_id = handler.request_id
        self.model = body.get("model")
        self.clear = clear_fields(body)
        # The exact bytes the enclave's signature will cover; peer_tier is the proxy's business.
        self.sealed_body = json.dumps({name: value for name, value in body.items()
                                       if name != "peer_tier"},
                                      separators=(",", ":")).encode("utf-8")

    def answer(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            self.handler.send_json(400, openai_error("'model' is required", "invalid_value",
                                                     param="model"))
            return
        started, failed_keys = time.monotonic(), set()
        last_error: tuple[int, dict] | None = None
        attempts = max(1, self.server.config.max_attempts)
        for attempt in range(attempts):
            try:
                enclave = self.choose(fresh=attempt > 0, failed_keys=failed_keys)
            except (UpstreamError, httpx.HTTPError) as error:
                self.handler.send_upstream_failure(error)
                return
            except NoAttestedEnclave as refusal:
                self.handler.send_json(*(last_error or (503, refusal.body)))
                return
            log.info("%s chat confidential attempt=%d worker=%s", self.request_id, attempt + 1,
                     enclave.worker)
            may_retry = attempt + 1 < attempts
            retryable = self.exchange(enclave, may_retry=may_retry)
            if retryable is None:
                log.info("%s done in %.0f ms", self.request_id,
                         (time.monotonic() - started) * 1000)
                return
            log.info("%s worker=%s unavailable; attesting again", self.request_id, enclave.worker)
            failed_keys.add(enclave.enclave_key)
            self.server.enclaves.forget(self.model, enclave.enclave_key)
            last_error = retryable

    def choose(self, *, fresh: bool, failed_keys: set[str]) -> AttestedEnclave:
        """A verified enclave not yet failed in this request: from the cache, or (when `fresh`,
        after a failure, or when none is cached) from a new attestation with a fresh nonce."""
        enclaves = [] if fresh else self.server.enclaves.get(self.model)
        problems: list[str] = []
        if not enclaves:
            attest_started = time.monotonic()
            enclaves, problems = attest(self.server.upstream, self.model,
                                        policy=self.server.config.policy)
            enclaves = [enclave for enclave in enclaves if enclave.enclave_key not in failed_keys]
            self.server.enclaves.put(self.model, enclaves)
            log.info("%s attested model=%s ok=%d refused=%d in %.0f ms", self.request_id,
                     self.model, len(enclaves), len(problems),
                     (time.monotonic() - attest_started) * 1000)
        if not enclaves:
            raise NoAttestedEnclave(no_attested_enclave(self.model, problems))
        return secrets.choice(enclaves)

    def exchange(self, enclave: AttestedEnclave, *, may_retry: bool) -> tuple[int, dict] | None:
        """Send the request sealed to `enclave` and answer the client; or, when `may_retry` and
        the node says the enclave is unavailable before anything was sent to the client, return
        that error (status, body) without answering."""
        peer_sealed, reply_private_key = sealed_request(enclave, self.sealed_body)
        request = self.server.upstream.build_request(
            "POST", CHAT_PATH, json={**self.clear, "peer_sealed": peer_sealed})
        try:
            response = self.server.upstream.send(request, stream=True)
        except httpx.HTTPError as error:
            self.handler.send_upstream_failure(error)
            return None
        try:
            if response.status_code >= 400:
                response.read()
                body = json_object(response)
                if may_retry and response.status_code == 503 and error_code(body) == RETRYABLE_CODE:
                    return response.status_code, body
                self.handler.send_json(response.status_code, body, passed_headers(response))
                return None
            answer = SealedAnswer(enclave, self.sealed_body, reply_private_key)
            if is_event_stream(response):
                return SealedStream(self, answer).relay(response, may_retry=may_retry)
            response.read()
            self.answer_completion(response, answer)
            return None
        except (UpstreamError, httpx.HTTPError) as error:  # a stream handles its own errors,
            self.handler.send_upstream_failure(error)  # so nothing was answered yet
            return None
        finally:
            response.close()

    def answer_completion(self, response: httpx.Response, answer: SealedAnswer) -> None:
        """A non-streamed answer: open every piece, check the signature, then answer in clear."""
        completion = json_object(response)  # raises UpstreamError for a non-object
        peer, choices = completion.get("peer"), completion.get("choices")
        if (not isinstance(peer, dict) or not isinstance(peer.get("sealed"), list)
                or not isinstance(choices, list) or not choices
                or not isinstance(choices[0], dict)):
            self.handler.send_json(502, openai_error(
                "the node's completion carries no sealed answer", "sealed_answer_invalid",
                type_="server_error"))
            return
        try:
            for envelope in peer["sealed"]:
                answer.open_next(envelope)
        except SealedAnswerError as error:
            log.warning("%s worker=%s %s", self.request_id, answer.enclave.worker, error)
            self.handler.send_json(502, sealed_answer_invalid(error))
            return
        if not answer.signature_ok(peer.get("enclave_signature")):
            log.warning("%s worker=%s signature does not verify", self.request_id,
                        answer.enclave.worker)
            self.handler.send_json(502, signature_invalid())
            return
        message = choices[0].get("message")
        choices[0]["message"] = {**(message if isinstance(message, dict) else {}),
                                 "role": "assistant", "content": answer.text}
        proof = {name: value for name, value in peer.items() if name != "sealed"}
        completion["peer"] = {**proof, "verified": verified_marker(answer.enclave)}
        self.handler.send_json(200, completion)


class SealedStream:
    """One streamed answer: open each sealed chunk in order as it arrives and re-emit it as a
    standard chunk; check the signature when the closing chunk comes.

    Events are held back until the first sealed piece (or anything final), so that an
    `enclave_unavailable` error before it can still be retried with no trace for the client."""

    def __init__(self, chat: SealedChat, answer: SealedAnswer):
        self.chat, self.handler, self.answer = chat, chat.handler, answer
        self.held: list[bytes] = []  # SSE events not yet sent
        self.started = False  # the response's headers went out
        self.signed = False  # the closing chunk's signature verified
        self.failed = False  # an error event went to the client

    def relay(self, response: httpx.Response, *, may_retry: bool) -> tuple[int, dict] | None:
        try:
            for data in sse_data(response.iter_lines()):
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    return self.fail(upstream_invalid("the node sent an event that is "
                                                      "not a JSON object"))
                if "error" in event:
                    if may_retry and not self.started and error_code(event) == RETRYABLE_CODE:
                        return 503, event
                    self.emit(event)
                    self.failed = True
                elif not self.on_chunk(event):
                    return None
        except httpx.HTTPError:
            return self.fail(openai_error("the node's stream broke off", "upstream_unreachable",
                                          type_="server_error"))
        if not self.signed and not self.failed:
            return self.fail(openai_error(
                "the stream ended before the enclave's signed closing chunk",
                "enclave_signature_invalid", type_="server_error"))
        self.finish()
        return None

    def on_chunk(self, event: dict) -> bool:
        """Handle one chunk; False when the stream was failed and must stop."""
        peer = event.get("peer") if isinstance(event.get("peer"), dict) else {}
        choices = event.get("choices") if isinstance(event.get("choices"), list) else []
        choice = choices[0] if choices and isinstance(choices[0], dict) else None
        if "sealed" in peer:
            if self.signed:
                self.fail(openai_error("a sealed piece came after the signed end",
                                       "sealed_answer_invalid", type_="server_error"))
                return False
            try:
                piece = self.answer.open_next(peer["sealed"])
            except SealedAnswerError as error:
                log.warning("%s worker=%s %s", self.chat.request_id, self.answer.enclave.worker,
                            error)
                self.fail(sealed_answer_invalid(error))
                return False
            first = len(self.answer.pieces) == 1
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            self.emit({"id": event.get("id"), "object": "chat.completion.chunk",
                       "created": event.get("created"), "model": event.get("model"),
                       "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            return True
        if choice is not None and choice.get("finish_reason"):
            if not self.answer.signature_ok(peer.get("enclave_signature")):
                log.warning("%s worker=%s signature does not verify", self.chat.request_id,
                            self.answer.enclave.worker)
                self.fail(signature_invalid())
                return False
            self.signed = True
            self.emit({**event, "choices": [{**choice, "delta": {}}],
                       "peer": {**peer, "verified": verified_marker(self.answer.enclave)}})
            return True
        # The opening role chunk, the usage chunk: passed on, minus any text, which in a
        # confidential stream could only be the node's and is covered by no signature.
        self.emit({**event, "choices": [without_text(choice) for choice in choices
                                        if isinstance(choice, dict)]},
                  hold=not self.answer.pieces and not self.signed)
        return True

    def emit(self, event: dict | str, *, hold: bool = False) -> None:
        payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"),
                                                                  ensure_ascii=False)
        self.held.append(f"data: {payload}\n\n".encode("utf-8"))
        if hold:
            return
        if not self.started:
            self.handler.start_stream()
            self.started = True
        for data in self.held:
            self.handler.write_chunk(data)
        self.held.clear()

    def fail(self, error: dict) -> None:
        """End the stream with `error` (OpenAI's shape) as its last event."""
        self.emit(error)
        self.failed = True
        self.finish()

    def finish(self) -> None:
        self.emit("[DONE]")
        self.handler.end_stream()


def without_text(choice: dict) -> dict:
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    return {**choice, "delta": {"role": delta["role"]} if "role" in delta else {}}


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event, its data lines joined (the SSE standard's rule)."""
    data_lines: list[str] = []
    for line in lines:
        if line == "":
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
        elif line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
    if data_lines:
        yield "\n".join(data_lines)


class NoAttestedEnclave(Exception):
    """No enclave for the model passed the checks; `body` is the 503 to answer."""

    def __init__(self, body: dict):
        super().__init__(body["error"]["message"])
        self.body = body


def is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def passed_headers(response: httpx.Response) -> dict:
    return {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}


def error_code(body: dict) -> object:
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else None
