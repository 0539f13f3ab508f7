"""Backend "ollama": a local Ollama server over its HTTP API.

Models and digests come from GET /api/tags. Ollama's digest there is the sha256 of the model's
manifest (which names the weights blob, template and parameters), announced as "sha256:<hex>":
the catalogue lists that digest for the models it lets Ollama workers serve.

Chat jobs go to POST /api/chat with the messages as they are, so Ollama applies the model's own
chat template; raw-prompt jobs go to POST /api/generate with `raw: true`. Both stream NDJSON:
one JSON object a line, the last with "done": true, "done_reason" and "eval_count". The
context window is set per request (options.num_ctx), so the announced context length is true.
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

DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_CONTEXT_LENGTH = 4096
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}


def ollama_digest(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value if value.startswith("sha256:") else f"sha256:{value}"


def options(wanted: Sampling, context_length: int) -> dict[str, Any]:
    chosen: dict[str, Any] = {"num_ctx": context_length, "temperature": wanted.temperature,
                              "top_p": wanted.top_p, "seed": wanted.seed,
                              "num_predict": wanted.max_tokens, "stop": wanted.stops or None}
    return {key: value for key, value in chosen.items() if value is not None}


def chat_messages(messages: list[dict]) -> list[dict[str, str]]:
    """OpenAI messages -> Ollama's: text content only, roles Ollama knows."""
    return [{"role": _ROLES.get(m.get("role"), "user") if isinstance(m.get("role"), str) else "user",
             "content": message_text(m.get("content"))} for m in messages]


class OllamaBackend:
    name = "ollama"

    def __init__(self, client: HttpClient, models: list[ModelInfo], context_length: int) -> None:
        self.client = client
        self.models = models
        self.context_length = context_length

    @classmethod
    def connect(cls, options: BackendOptions) -> OllamaBackend:
        """Ask the server what it serves. Raises BackendUnavailable when it cannot be reached."""
        client = HttpClient(options.url or DEFAULT_URL, what="Ollama server")
        tags = client.get_json("/api/tags")
        context_length = options.context_length or DEFAULT_CONTEXT_LENGTH
        models = []
        for entry in (tags.get("models") if isinstance(tags, dict) else None) or []:
            name = entry.get("name") or entry.get("model") if isinstance(entry, dict) else None
            digest = ollama_digest(entry.get("digest")) if isinstance(entry, dict) else None
            if isinstance(name, str) and digest:
                models.append(ModelInfo(name, digest, cls.name, context_length))
        if not models:
            raise BackendUnavailable(f"the Ollama server at {client.base_url} has no models; "
                                     "pull one first (ollama pull NAME)")
        log.info("Ollama at %s serves %s", client.base_url, ", ".join(m.id for m in models))
        return cls(client, models, context_length)

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        wanted = sampling(params)
        body: dict[str, Any] = {"model": model_id, "stream": True,
                                "options": options(wanted, self.context_length)}
        if request.prompt is not None:
            path, field = "/api/generate", "response"
            body.update(prompt=request.prompt, raw=True)
        else:
            path, field = "/api/chat", "message"
            body["messages"] = chat_messages(request.messages or [])
        if cancel.is_set():
            yield Finish("cancelled", 0)
            return
        with self.client.stream(path, body, cancel) as lines:
            yield from relay(self._chunks(lines, field), wanted.stops, cancel, self.client.what)

    def _chunks(self, lines: Iterator[bytes], field: str) -> Iterator[Chunk]:
        for line in lines:
            if not line.strip():
                continue
            value = json_line(line, self.client.what)
            content = value.get(field)
            text = content.get("content") if isinstance(content, dict) else content
            if not isinstance(text, str):
                text = ""
            if value.get("done") is True:
                count = value.get("eval_count")
                yield Chunk(text, str(value.get("done_reason") or "stop"),
                            count if isinstance(count, int) else None)
                return
            yield Chunk(text)
