"""Parse and validate OpenAI chat-completion, completion and embedding bodies. Pure, no I/O."""

import json
import secrets
from dataclasses import dataclass, field

from apps.workers.routing import RoutePreferences, parse_route
from client.sealing import SealingError, envelope_plaintext_size, public_key_raw
from worker.prompt import job_prompt

from .errors import ApiError

TIERS = ("open", "verified", "confidential")
ROLES = ("system", "developer", "user", "assistant")
MAX_MESSAGES = 200
MAX_STOP = 4
SEED_LIMIT = 2**31 - 1  # llama.cpp seeds are 32-bit


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    tier: str
    stream: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str] = field(default_factory=list)
    include_usage: bool = False
    prompt: str | None = None  # set for /v1/completions, which runs a raw prompt
    route: RoutePreferences = field(default_factory=RoutePreferences)
    public_proof: bool = False  # peer_public_proof: anyone with the job id may read its proof
    # Confidential: {"enclave_key", "reply_key", "request"} (docs/confidential.md), and how many
    # bytes the sealed request opens to (its tokens are at most that many).
    sealed: dict | None = None
    sealed_size: int = 0

    def prompt_text(self) -> str:
        """What the worker runs: the raw prompt, or the messages in the chat format ("" for a
        sealed request: the node never sees it)."""
        if self.sealed is not None:
            return ""
        return job_prompt(messages=self.messages, prompt=self.prompt)[0]

    def params(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": self.stop}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _bad(f"'{name}' must be a number between {low} and {high}.", name)
    return float(value)


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array of {role, content} objects.", "messages",
                   "missing_required_parameter" if raw is None else "invalid_value")
    if len(raw) > MAX_MESSAGES:
        raise _bad(f"At most {MAX_MESSAGES} messages per request.", "messages")
    cleaned = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _bad(f"messages[{index}].role must be one of {', '.join(ROLES)}.", f"messages[{index}].role")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _bad(f"messages[{index}].content: only text parts are supported.", f"messages[{index}].content")
        elif not isinstance(content, str):
            raise _bad(f"messages[{index}].content must be a string or text parts.", f"messages[{index}].content")
        cleaned.append({"role": message["role"], "content": content})
    return cleaned


def parse_chat_request(raw_body: bytes, *, default_tier: str, default_max_tokens: int,
                       max_tokens_limit: int) -> ChatRequest:
    body = _json_object(raw_body)
    common = _common(body, default_tier, default_max_tokens, max_tokens_limit)
    return ChatRequest(messages=_messages(body.get("messages")), **common)


def parse_completion_request(raw_body: bytes, *, default_tier: str, default_max_tokens: int,
                             max_tokens_limit: int) -> ChatRequest:
    """/v1/completions: one prompt string (or a list holding one), run as given."""
    body = _json_object(raw_body)
    common = _common(body, default_tier, default_max_tokens, max_tokens_limit)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad("'prompt' must be a non-empty string (one prompt per request).", "prompt",
                   "missing_required_parameter" if prompt is None else "invalid_value")
    if body.get("echo") or body.get("best_of") not in (None, 1) or body.get("suffix"):
        raise _bad("'echo', 'best_of' and 'suffix' are not supported.", "echo")
    return ChatRequest(messages=[], prompt=prompt, **common)


# Content a confidential request must seal rather than send (docs/confidential.md §2).
PLAINTEXT_FIELDS = ("messages", "prompt", "stop", "tools", "tool_choice", "functions", "response_format")


def requested_tier(raw_body: bytes, *, default_tier: str) -> str | None:
    """The body's peer_tier (or the default) when the body is a JSON object; None otherwise (the
    parser then says what is wrong)."""
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return body.get("peer_tier", default_tier) if isinstance(body, dict) else None


def parse_sealed_chat_request(raw_body: bytes, *, default_max_tokens: int, max_tokens_limit: int) -> ChatRequest:
    """A confidential chat request: the clear fields routing and billing need, and `peer_sealed`
    (the request sealed to an attested enclave, which the node cannot open)."""
    body = _json_object(raw_body)
    present = [name for name in PLAINTEXT_FIELDS if name in body]
    if present:
        raise _bad(f"A confidential request seals its content: {', '.join(present)} must be inside "
                   "peer_sealed.request, not in the clear (docs/confidential.md; the client proxy "
                   "`python -m client proxy` does it for any OpenAI client).", present[0],
                   "plaintext_in_confidential_request")
    common = _common(body, "confidential", default_max_tokens, max_tokens_limit)
    sealed = body.get("peer_sealed")
    if not isinstance(sealed, dict) or set(sealed) != {"enclave_key", "reply_key", "request"}:
        raise _bad("'peer_sealed' must be an object with exactly enclave_key, reply_key and request.",
                   "peer_sealed", "missing_required_parameter" if sealed is None else "invalid_value")
    for name in ("enclave_key", "reply_key"):
        try:
            public_key_raw(sealed[name])
        except SealingError as exc:
            raise _bad(f"peer_sealed.{name}: {exc}", f"peer_sealed.{name}") from None
    try:
        size = envelope_plaintext_size(sealed["request"])
    except SealingError as exc:
        raise _bad(f"peer_sealed.request is not an HPKE envelope: {exc}", "peer_sealed.request") from None
    return ChatRequest(messages=[], sealed=dict(sealed), sealed_size=size, **common)


def _json_object(raw_body: bytes) -> dict:
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        raise _bad("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", code="invalid_json")
    return body


def _common(body: dict, default_tier: str, default_max_tokens: int, max_tokens_limit: int) -> dict:
    """The fields chat and completion requests share."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required.", "model", "missing_required_parameter")
    tier = body.get("peer_tier", default_tier)
    if tier not in TIERS:
        raise _bad(f"'peer_tier' must be one of {', '.join(TIERS)}.", "peer_tier")
    if body.get("n") not in (None, 1) or isinstance(body.get("n"), bool):
        raise _bad("Only n=1 is supported.", "n")
    limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(limit_name)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise _bad(f"'{limit_name}' must be an integer from 1 to {max_tokens_limit}.", limit_name)
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(SEED_LIMIT)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_LIMIT:
        raise _bad(f"'seed' must be an integer from 0 to {SEED_LIMIT}.", "seed")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise _bad(f"'stop' must be a string or up to {MAX_STOP} non-empty strings.", "stop")
    stream = body.get("stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream")
    stream_options = body.get("stream_options") or {}
    try:
        route = parse_route(body.get("peer_route"))
    except ValueError as exc:
        raise _bad(str(exc), "peer_route") from None
    public_proof = body.get("peer_public_proof", False)
    if not isinstance(public_proof, bool):
        raise _bad("'peer_public_proof' must be a boolean.", "peer_public_proof")
    return dict(route=route, public_proof=public_proof,
        model=model, tier=tier, stream=stream,
        max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0), seed=seed, stop=stop,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


# --- /v1/embeddings ---------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the input array
ENCODING_FORMATS = ("float", "base64")


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str]
    tier: str
    encoding_format: str = "float"
    dimensions: int | None = None  # checked against the model's own when its entry is known
    route: RoutePreferences = field(default_factory=RoutePreferences)


def _embedding_inputs(raw) -> list[str]:
    """OpenAI's `input`: a string or an array of strings. Arrays of token ids (which OpenAI also
    takes) are refused: the ids would be for a tokenizer the served model does not use."""
    if isinstance(raw, str):
        raw = [raw]
    if raw is None:
        raise _bad("'input' is required: a string or an array of strings.", "input", "missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a non-empty string or a non-empty array of strings.", "input")
    if any(isinstance(item, (int, list)) and not isinstance(item, bool) for item in raw):
        raise _bad("'input' as token ids is not supported on this network: send the text itself.", "input",
                   "unsupported_input")
    if len(raw) > MAX_EMBEDDING_INPUTS:
        raise _bad(f"At most {MAX_EMBEDDING_INPUTS} inputs per request.", "input")
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise _bad(f"input[{index}] must be a string.", "input")
        if not item:
            raise _bad(f"input[{index}] is empty; every input must have some text.", "input")
    return raw


def parse_embedding_request(raw_body: bytes, *, default_tier: str) -> EmbeddingRequest:
    """An OpenAI embeddings body: model, input, encoding_format, dimensions, user; plus peer_tier
    and peer_route as in chat. Whether the model embeds at all is the caller's check."""
    body = _json_object(raw_body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required.", "model", "missing_required_parameter")
    inputs = _embedding_inputs(body.get("input"))
    tier = body.get("peer_tier", default_tier)
    if tier not in TIERS:
        raise _bad(f"'peer_tier' must be one of {', '.join(TIERS)}.", "peer_tier")
    encoding_format = body.get("encoding_format")
    encoding_format = "float" if encoding_format is None else encoding_format
    if encoding_format not in ENCODING_FORMATS:
        raise _bad("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise _bad("'dimensions' must be a positive integer.", "dimensions")
    if not isinstance(body.get("user", ""), str):
        raise _bad("'user' must be a string.", "user")
    try:
        route = parse_route(body.get("peer_route"))
    except ValueError as exc:
        raise _bad(str(exc), "peer_route") from None
    return EmbeddingRequest(model=model, inputs=inputs, tier=tier, encoding_format=encoding_format,
                            dimensions=dimensions, route=route)
