"""parse_completion_request: the legacy /v1/completions body. No database."""

import json

import pytest

from apps.marketplace.errors import ApiError
from apps.marketplace.requests import parse_completion_request


def _parse(**body):
    return parse_completion_request(json.dumps({"model": "m", **body}).encode(), default_tier="verified",
                                    default_max_tokens=16, max_tokens_limit=64)


def test_a_prompt_string_is_run_as_given_without_the_chat_format():
    request = _parse(prompt="2 + 2 =")
    assert request.prompt == "2 + 2 =" and request.prompt_text() == "2 + 2 =" and request.messages == []


def test_a_list_holding_one_prompt_is_accepted():
    assert _parse(prompt=["Once upon"]).prompt == "Once upon"


@pytest.mark.parametrize("prompt", [None, "", ["a", "b"], 42, [1]])
def test_anything_but_one_prompt_string_is_a_400_naming_prompt(prompt):
    with pytest.raises(ApiError) as caught:
        _parse(**({} if prompt is None else {"prompt": prompt}))
    assert caught.value.status == 400 and caught.value.param == "prompt"


@pytest.mark.parametrize("extra", [{"echo": True}, {"best_of": 3}, {"suffix": "end"}])
def test_unsupported_options_are_refused_rather_than_ignored(extra):
    with pytest.raises(ApiError) as caught:
        _parse(prompt="x", **extra)
    assert caught.value.status == 400


def test_the_shared_options_are_checked_as_for_chat():
    with pytest.raises(ApiError) as caught:
        _parse(prompt="x", peer_tier="gold")
    assert caught.value.param == "peer_tier"
    assert _parse(prompt="x", max_tokens=5, seed=3).params()["max_tokens"] == 5
