"""parse_embedding_request and the vector checks: an OpenAI embeddings body in, an
EmbeddingRequest or a 400 out; a worker's vectors accepted or refused. No database."""

import base64
import json
import math
import struct

import numpy
import pytest

from apps.marketplace.errors import ApiError
from apps.marketplace.presenters import embedding_body
from apps.marketplace.requests import MAX_EMBEDDING_INPUTS, parse_embedding_request
from apps.marketplace.vectors import float32_base64, float32_bytes, inputs_text, vectors_problem
from apps.workers.routing import RoutePreferences


def _parse(body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_embedding_request(raw, default_tier="verified")


def _rejected(body, param) -> ApiError:
    with pytest.raises(ApiError) as caught:
        _parse(body)
    assert caught.value.status == 400
    error = caught.value.body()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    return caught.value


def test_a_single_string_becomes_one_input_with_the_defaults():
    request = _parse({"model": "all-minilm-l6-v2", "input": "The cat sat."})

    assert request.inputs == ["The cat sat."]
    assert (request.model, request.tier, request.encoding_format, request.dimensions) == \
        ("all-minilm-l6-v2", "verified", "float", None)
    assert request.route == RoutePreferences()


def test_a_list_of_strings_keeps_its_order_and_the_openai_options_are_read():
    request = _parse({"model": "m", "input": ["b", "a", "b"], "encoding_format": "base64", "dimensions": 384,
                      "user": "user-123", "peer_tier": "open",
                      "peer_route": {"sort": "price", "only": ["bob-cpu-1"]}})

    assert request.inputs == ["b", "a", "b"]
    assert (request.encoding_format, request.dimensions, request.tier) == ("base64", 384, "open")
    assert request.route.sort == "price" and request.route.only == ("bob-cpu-1",)


@pytest.mark.parametrize("tokens", [[15339, 1917], [[15339, 1917], [1820]]])
def test_token_id_arrays_are_refused_with_a_clear_message(tokens):
    error = _rejected({"model": "m", "input": tokens}, "input")

    assert error.code == "unsupported_input" and "token ids" in error.message


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": ["fine", ""]}, "input"),
    ({"model": "m", "input": ["fine", None]}, "input"),
    ({"model": "m", "input": {"text": "x"}}, "input"),
    ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "x", "dimensions": "384"}, "dimensions"),
    ({"model": "m", "input": "x", "dimensions": True}, "dimensions"),
    ({"model": "m", "input": "x", "user": 7}, "user"),
    ({"model": "m", "input": "x", "peer_tier": "gold"}, "peer_tier"),
    ({"model": "m", "input": "x", "peer_route": {"sort": "vibes"}}, "peer_route"),
])
def test_bad_bodies_get_a_400_naming_the_parameter(body, param):
    _rejected(body, param)


def test_more_inputs_than_openai_allows_are_refused():
    _rejected({"model": "m", "input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "input")
    assert len(_parse({"model": "m", "input": ["x"] * MAX_EMBEDDING_INPUTS}).inputs) == MAX_EMBEDDING_INPUTS


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    _rejected(raw, None)


def test_base64_is_little_endian_float32_as_the_openai_sdk_decodes_it():
    vector = [0.1, -2.5, 3.0e-7, 1.0]

    decoded = numpy.frombuffer(base64.b64decode(float32_base64(vector)), dtype="float32")

    assert decoded.tolist() == numpy.array(vector, dtype="float32").tolist()
    assert float32_bytes([vector, [2.0]]) == struct.pack("<5f", *vector, 2.0)


def test_the_inputs_hash_covers_their_order_and_exact_text():
    assert inputs_text(["a", "b"]) != inputs_text(["b", "a"])
    assert inputs_text(["é"]) == '["é"]'


@pytest.mark.parametrize("data, problem", [
    ([[1.0, 0.0]], "expected 2 vectors, got 1"),
    ([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "expected 2 vectors, got 3"),
    ([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "vector 0 has 3 dimensions, the model has 2"),
    ([[1.0, 0.0], [math.nan, 0.0]], "vector 1 holds a value that is not a finite float32"),
    ([[1.0, math.inf], [0.0, 1.0]], "vector 0 holds a value that is not a finite float32"),
    ([[1.0, 1e39], [0.0, 1.0]], "vector 0 holds a value that is not a finite float32"),
])
def test_a_workers_vectors_are_refused_unless_one_finite_vector_of_the_models_length_per_input(data, problem):
    assert vectors_problem(data, count=2, dimensions=2) == problem


def test_good_vectors_pass_and_an_unknown_length_is_not_checked():
    assert vectors_problem([[0.6, 0.8], [1, 0]], count=2, dimensions=2) is None
    assert vectors_problem([[0.6, 0.8, 0.0]], count=1, dimensions=None) is None


class _Job:
    """What embedding_body reads of a settled job."""
    id = "00000000-0000-0000-0000-000000000001"
    public_model, tier, served_model, worker_id = "all-minilm-l6-v2", "verified", "all-minilm-l6-v2-int8", None
    prompt_tokens, charged_amount, hold_amount, commitment = 7, 120_700, 121_000, None


def test_the_response_has_openais_shape_in_both_encodings():
    vectors = [[0.6, 0.8], [1.0, 0.0]]

    plain = embedding_body(_Job(), vectors, encoding_format="float")
    packed = embedding_body(_Job(), vectors, encoding_format="base64")

    assert plain["object"] == "list" and plain["model"] == "all-minilm-l6-v2"
    assert plain["data"] == [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]},
                             {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}]
    assert plain["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert plain["peer"]["price_micro_usdc"] == 120_700
    assert [item["embedding"] for item in packed["data"]] == [float32_base64(v) for v in vectors]
