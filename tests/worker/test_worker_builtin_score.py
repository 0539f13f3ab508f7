"""Teacher forcing on the real model (BuiltinBackend.score): the evidence a validator weighs when
its own run of a job differs from the claimed answer. Figures are printed (-s) for
docs/verification.md; the assertions are orders of magnitude apart, not tuned to one machine."""

from __future__ import annotations

import math
from statistics import mean

from worker.backends import Request
from worker.cheat import FALLBACK_ANSWER

QUESTION = Request(messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
GREEDY = {"max_tokens": 48, "temperature": 0, "seed": 0}


def test_an_honest_answer_is_likely_under_the_model_and_a_substitute_is_not(backend, backend_one_thread, generate):
    honest = generate(backend, QUESTION, GREEDY)
    own = backend.score(backend.model_id, QUESTION, honest.text)
    other_threads = backend_one_thread.score(backend.model_id, QUESTION, honest.text)
    substitute = backend.score(backend.model_id, QUESTION, "".join(FALLBACK_ANSWER))
    print(f"honest: {len(own.token_logprobs)} tokens, mean {mean(own.token_logprobs):.3f}, "
          f"min {min(own.token_logprobs):.3f}, end {own.end_logprob}; 1 thread: mean "
          f"{mean(other_threads.token_logprobs):.3f}; substitute: mean {mean(substitute.token_logprobs):.3f}, "
          f"min {min(substitute.token_logprobs):.3f}")
    # Greedy: each claimed token was the model's most likely, so none is improbable.
    assert min(own.token_logprobs) > math.log(0.05)
    assert mean(substitute.token_logprobs) < mean(own.token_logprobs) - 2.0
    # Another thread count changes the numerics a little, never the verdict.
    assert abs(mean(other_threads.token_logprobs) - mean(own.token_logprobs)) < 0.1


def test_an_answer_cut_short_is_unlikely_to_end_where_it_was_cut(backend, generate):
    honest = generate(backend, QUESTION, GREEDY)
    assert honest.finish.reason == "stop"  # the model ended its sentence by itself
    cut = honest.text[: len(honest.text) // 3]
    whole, truncated = backend.score(backend.model_id, QUESTION, honest.text), \
        backend.score(backend.model_id, QUESTION, cut)
    print(f"end logprob: whole {whole.end_logprob:.3f}, cut at a third {truncated.end_logprob:.3f}")
    assert whole.end_logprob > math.log(0.2)
    assert truncated.end_logprob < whole.end_logprob - 3.0


COLORS = Request(messages=[{"role": "user", "content": "Name three primary colors."}])


def _z(scored) -> float:
    fit = scored.sampled_fit
    return fit.excess / math.sqrt(fit.variance)


def test_sampled_answers_fit_the_models_samples_and_a_substitute_does_not(backend, backend_one_thread, generate):
    """SampledFit at temperature 0.7: honest samples (drawn on 1 thread, scored on 2: other
    numerics) sit near z = 0, far above the mismatch threshold; the cached substitute falls below it."""
    from apps.verification.compare import SAMPLED_Z_MISMATCH

    honest = []
    for seed in range(4):
        answer = generate(backend_one_thread, COLORS, {"max_tokens": 48, "temperature": 0.7, "seed": seed})
        scored = backend.score(backend.model_id, COLORS, answer.text, 0.7)
        assert scored.sampled_fit.tokens == len(scored.token_logprobs)
        honest.append(_z(scored))
    substitute = _z(backend.score(backend.model_id, COLORS, "".join(FALLBACK_ANSWER), 0.7))
    print(f"sampled fit z at 0.7: honest {', '.join(f'{z:.2f}' for z in honest)}; substitute {substitute:.2f}")
    assert all(z > SAMPLED_Z_MISMATCH / 2 for z in honest)  # measured: -2.72 and up
    assert substitute < SAMPLED_Z_MISMATCH
    # Greedy scoring computes no fit (a greedy answer is judged by its log-probabilities).
    assert backend.score(backend.model_id, COLORS, "Red, yellow and blue.").sampled_fit is None
