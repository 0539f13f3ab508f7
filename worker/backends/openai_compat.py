"""Backend "openai": any OpenAI-compatible server (llama.cpp's llama-server, vLLM, SGLang, ...).

Models come from GET /v1/models. Chat jobs go to POST /v1/chat/completions with the messages as
they are (the server applies the model's chat template), raw prompts to POST /v1/completions;
both stream server-sent events: `data: {json}` lines, ending with `data: [DONE]`.

Digests: an OpenAI server reports none. The operator gives the weights' digest per model
(`--model-digest NAME=sha256:...` or the config file); a model without one is announced as
"unverified:<model id>", and the node routes to such a worker only jobs for catalogue entries
that list that exact string among their digests, i.e. models the operator of the node has
chosen to accept without a verifiable identity.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

from worker.backends import BackendOptions, BackendUnavailable, Finish, ModelInfo, Piece, Request
from worker.backends.httpstream import Chunk, HttpClient, json_line, relay
from worker.backends.params import Sampling, sampling
from worker.prompt import message_text

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_CONTEXT_LENGTH = 4096
MAX_SERVER_STOPS = 4  # OpenAI's own limit; the rest are enforced locally (httpstream.relay)


def unverified_digest(model_id: str) -> str:
    return f"unverified:{model_id}"


def server_root(url: str) -> str:
    """Operators paste either the server's root or its OpenAI base URL (".../v1")."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def body_params(wanted: Sampling) -> dict[str, Any]:
    chosen = {"max_tokens": wanted.max_tokens, "temperature": wanted.temperature,
              "top_p": wanted.top_p, "seed": wanted.seed,
              "stop": wanted.stops[:MAX_SERVER_STOPS] or None}
    return {key: value for key, value in chosen.items() if value is not None}


def chat_messages(messages: list[dict]) -> list[dict[str, str]]:
    """Text content only: not every compatible server takes content parts."""
    out = []
    for m in messages:
        role = m.get("role") if isinstance(m.get("role"), str) else "user"
        out.append({"role": role, "content": message_text(m.get("content"))})
    return out


def sse_data(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The data of each server-sent event; comments, `event:` and `id:` fields are skipped."""
    data: list[bytes] = []
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    if data:
        yield b"\n".join(data)


class OpenAIBackend:
    name = "openai"

    def __init__(self, client: HttpClient, models: list[ModelInfo]) -> None:
        self.client = client
        self.models = models

    @classmethod
    def connect(cls, options: BackendOptions) -> OpenAIBackend:
        """Ask the server what it serves. Raises BackendUnavailable when it cannot be reached."""
        client = HttpClient(server_root(options.url or DEFAULT_URL), api_key=options.api_key,
                            what="OpenAI-compatible server")
        listing = client.get_json("/v1/models")
        digests = options.digests or {}
        models = []
        for entry in (listing.get("data") if isinstance(listing, dict) else None) or []:
            model_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(model_id, str):
                continue
            # vLLM reports the context it was started with; the operator's figure wins.
            served = entry.get("max_model_len")
            context = options.context_length or (served if isinstance(served, int) else None) \
                or DEFAULT_CONTEXT_LENGTH
            models.append(ModelInfo(model_id, digests.get(model_id) or unverified_digest(model_id),
                                    cls.name, context))
        if not models:
            raise BackendUnavailable(f"the OpenAI-compatible server at {client.base_url} lists "
                                     "no models")
        unknown = set(digests) - {m.id for m in models}
        if unknown:
            raise BackendUnavailable(f"--model-digest names {', '.join(sorted(unknown))}, which the "
                                     f"server at {client.base_url} does not serve")
        log.info("OpenAI-compatible server at %s serves %s", client.base_url,
                 ", ".join(f"{m.id} ({m.digest})" for m in models))
        return cls(client, models)

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        wanted = sampling(params)
        body: dict[str, Any] = {"model": model_id, "stream": True,
                                "stream_options": {"include_usage": True}, **body_params(wanted)}
        if request.prompt is not None:
            path, chat = "/v1/completions", False
            body["prompt"] = request.prompt
        else:
            path, chat = "/v1/chat/completions", True
            body["messages"] = chat_messages(request.messages or [])
        if cancel.is_set():
            yield Finish("cancelled", 0)
            return
        with self.client.stream(path, body, cancel) as lines:
            yield from relay(self._chunks(lines, chat), wanted.stops, cancel, self.client.what)

    def _chunks(self, lines: Iterator[bytes], chat: bool) -> Iterator[Chunk]:
        for data in sse_data(lines):
            if data.strip() == b"[DONE]":
                # The finish reason came in an earlier chunk; [DONE] only closes the stream.
                return
            value = json_line(data, self.client.what)
            usage = value.get("usage")
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            choices = value.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices \
                and isinstance(choices[0], dict) else {}
            if chat:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
            else:
                text = choice.get("text")
            reason = choice.get("finish_reason")
            yield Chunk(text if isinstance(text, str) else "",
                        reason if isinstance(reason, str) else None,
                        tokens if isinstance(tokens, int) else None)
