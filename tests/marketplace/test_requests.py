"""parse_chat_request: an OpenAI chat-completion body in, a ChatRequest or a 400 out. No database."""

import json

import pytest

from apps.marketplace.errors import ApiError
from apps.marketplace.requests import MAX_STOP, SEED_LIMIT, parse_chat_request

LIMIT = 1024
DEFAULT_MAX_TOKENS = 256


def _parse(body, *, default_tier="verified"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_chat_request(raw, default_tier=default_tier, default_max_tokens=DEFAULT_MAX_TOKENS,
                              max_tokens_limit=LIMIT)


def _body(**overrides):
    body = {"model": "peer-gemma", "messages": [{"role": "user", "content": "Say hi."}]}
    body.update(overrides)
    return body


def _rejected(body, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        _parse(body, **kwargs)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["type"] == "invalid_request_error"
    return caught.value


def test_it_accepts_a_minimal_body_with_the_defaults():
    request = _parse(_body())

    assert request.model == "peer-gemma"
    assert request.messages == [{"role": "user", "content": "Say hi."}]
    assert request.tier == "verified"
    assert request.stream is False
    assert request.max_tokens == DEFAULT_MAX_TOKENS
    assert request.temperature == 1.0
    assert request.top_p == 1.0
    assert request.stop == []
    assert request.include_usage is False


def test_it_applies_the_default_tier_it_is_given():
    assert _parse(_body(), default_tier="open").tier == "open"
    assert _parse(_body(), default_tier="confidential").tier == "confidential"


@pytest.mark.parametrize("tier", ["open", "verified", "confidential"])
def test_it_keeps_a_known_peer_tier(tier):
    assert _parse(_body(peer_tier=tier)).tier == tier


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"model": "x",}'])
def test_it_rejects_malformed_json_as_invalid_json(raw):
    error = _rejected(raw)

    assert error.code == "invalid_json"


@pytest.mark.parametrize("body", [[], [_body()], "a string", 42, None])
def test_it_rejects_a_body_that_is_not_an_object(body):
    error = _rejected(json.dumps(body).encode())

    assert error.code == "invalid_json"


@pytest.mark.parametrize("model", [None, "", 7, ["peer-gemma"]])
def test_it_requires_a_model_name(model):
    body = _body(model=model)
    if model is None:
        del body["model"]

    error = _rejected(body)

    assert error.param == "model"
    assert error.code == "missing_required_parameter"


def test_it_requires_messages():
    body = _body()
    del body["messages"]

    error = _rejected(body)

    assert error.param == "messages"
    assert error.code == "missing_required_parameter"


@pytest.mark.parametrize("messages", [[], "Say hi.", {"role": "user", "content": "hi"}])
def test_it_rejects_empty_or_non_list_messages(messages):
    error = _rejected(_body(messages=messages))

    assert error.param == "messages"
    assert error.code == "invalid_value"


def test_it_rejects_too_many_messages():
    error = _rejected(_body(messages=[{"role": "user", "content": "hi"}] * 201))

    assert error.param == "messages"


@pytest.mark.parametrize("message", [
    {"role": "tool", "content": "42"},
    {"role": "wizard", "content": "hi"},
    {"content": "no role"},
    "user: hi",
])
def test_it_rejects_a_message_with_a_bad_role(message):
    error = _rejected(_body(messages=[{"role": "system", "content": "Be brief."}, message]))

    assert error.param == "messages[1].role"


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
def test_it_accepts_every_supported_role(role):
    assert _parse(_body(messages=[{"role": role, "content": "x"}])).messages[0]["role"] == role


def test_it_accepts_content_as_a_list_of_text_parts():
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]

    request = _parse(_body(messages=[{"role": "user", "content": parts}]))

    assert request.messages == [{"role": "user", "content": parts}]


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    {"type": "text", "text": 5},
    {"type": "text"},
    "just a string",
])
def test_it_rejects_content_with_a_part_that_is_not_text(part):
    content = [{"type": "text", "text": "Look:"}, part]

    error = _rejected(_body(messages=[{"role": "user", "content": content}]))

    assert error.param == "messages[0].content"


@pytest.mark.parametrize("content", [None, 42, {"text": "hi"}])
def test_it_rejects_content_that_is_neither_a_string_nor_parts(content):
    error = _rejected(_body(messages=[{"role": "user", "content": content}]))

    assert error.param == "messages[0].content"


def test_it_keeps_only_the_role_and_content_of_each_message():
    request = _parse(_body(messages=[{"role": "user", "content": "hi", "name": "alice", "extra": 1}]))

    assert request.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("tier", ["gold", "", "OPEN", None, 1])
def test_it_rejects_an_unknown_peer_tier(tier):
    error = _rejected(_body(peer_tier=tier))

    assert error.param == "peer_tier"


@pytest.mark.parametrize("max_tokens", [0, -1, LIMIT + 1, 10**9, True, False, "100", 12.5])
def test_it_rejects_a_max_tokens_that_is_not_an_integer_in_range(max_tokens):
    error = _rejected(_body(max_tokens=max_tokens))

    assert error.param == "max_tokens"


@pytest.mark.parametrize("max_tokens", [1, 64, LIMIT])
def test_it_keeps_a_max_tokens_in_range(max_tokens):
    assert _parse(_body(max_tokens=max_tokens)).max_tokens == max_tokens


def test_it_accepts_max_completion_tokens_in_place_of_max_tokens():
    assert _parse(_body(max_completion_tokens=77)).max_tokens == 77


def test_max_completion_tokens_wins_over_the_deprecated_max_tokens():
    assert _parse(_body(max_tokens=10, max_completion_tokens=20)).max_tokens == 20


@pytest.mark.parametrize("value", [0, LIMIT + 1, True, "20"])
def test_it_rejects_a_bad_max_completion_tokens_naming_that_parameter(value):
    error = _rejected(_body(max_completion_tokens=value))

    assert error.param == "max_completion_tokens"


@pytest.mark.parametrize("temperature", [-0.1, 2.01, 100, "0.5", True])
def test_it_rejects_a_temperature_out_of_range(temperature):
    error = _rejected(_body(temperature=temperature))

    assert error.param == "temperature"


@pytest.mark.parametrize("temperature", [0, 0.0, 0.7, 2])
def test_it_keeps_a_temperature_in_range_as_a_float(temperature):
    value = _parse(_body(temperature=temperature)).temperature

    assert value == float(temperature)
    assert isinstance(value, float)


@pytest.mark.parametrize("top_p", [-0.01, 1.01, "1"])
def test_it_rejects_a_top_p_out_of_range(top_p):
    assert _rejected(_body(top_p=top_p)).param == "top_p"


def test_it_turns_a_single_stop_string_into_a_list():
    assert _parse(_body(stop="\n\n")).stop == ["\n\n"]


def test_it_keeps_a_list_of_stop_strings():
    assert _parse(_body(stop=["END", "###"])).stop == ["END", "###"]


def test_it_treats_a_null_stop_as_no_stops():
    assert _parse(_body(stop=None)).stop == []


def test_it_rejects_too_many_stops():
    error = _rejected(_body(stop=[f"s{i}" for i in range(MAX_STOP + 1)]))

    assert error.param == "stop"


@pytest.mark.parametrize("stop", [[""], ["ok", 3], 5, {"s": "x"}])
def test_it_rejects_stops_that_are_not_non_empty_strings(stop):
    assert _rejected(_body(stop=stop)).param == "stop"


def test_it_picks_a_random_seed_in_range_when_none_is_given():
    seeds = {_parse(_body()).seed for _ in range(50)}

    assert all(isinstance(seed, int) and 0 <= seed <= SEED_LIMIT for seed in seeds)
    assert len(seeds) > 1


@pytest.mark.parametrize("seed", [0, 42, SEED_LIMIT])
def test_it_keeps_an_explicit_seed(seed):
    request = _parse(_body(seed=seed))

    assert request.seed == seed
    assert request.params()["seed"] == seed


@pytest.mark.parametrize("seed", [-1, SEED_LIMIT + 1, "42", True, 1.5])
def test_it_rejects_a_seed_that_is_not_a_32_bit_integer(seed):
    assert _rejected(_body(seed=seed)).param == "seed"


@pytest.mark.parametrize("stream", ["true", 1, 0, []])
def test_it_rejects_a_stream_flag_that_is_not_a_boolean(stream):
    assert _rejected(_body(stream=stream)).param == "stream"


def test_it_keeps_the_stream_flag_and_the_usage_option():
    request = _parse(_body(stream=True, stream_options={"include_usage": True}))

    assert request.stream is True
    assert request.include_usage is True


@pytest.mark.parametrize("n", [0, 2, 5])
def test_it_rejects_more_or_fewer_than_one_choice(n):
    assert _rejected(_body(n=n)).param == "n"


@pytest.mark.parametrize("field", ["stream", "n", "temperature", "top_p", "seed", "stop", "max_tokens"])
def test_it_treats_a_null_optional_parameter_as_absent(field):
    # OpenAI's schema types these as "X or null"; a client may send null for "use the default".
    request = _parse(_body(**{field: None}))

    assert request.stream is False
    assert request.max_tokens == DEFAULT_MAX_TOKENS


def test_it_accepts_n_of_one():
    assert _parse(_body(n=1)).model == "peer-gemma"


def test_its_params_carry_what_the_worker_needs():
    request = _parse(_body(max_tokens=32, temperature=0, top_p=0.9, seed=7, stop="END"))

    assert request.params() == {"max_tokens": 32, "temperature": 0.0, "top_p": 0.9, "seed": 7, "stop": ["END"]}
