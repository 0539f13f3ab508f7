"""The comparison of a claimed answer with a validator's run (apps/verification/compare.py), on
figures of the shape measured on the real model (docs/verification.md)."""

import pytest

from apps.verification.compare import Evidence, compare


def _compare(claimed, evidence, finish="stop", temperature=0.0):
    return compare(claimed=claimed, claimed_finish=finish, temperature=temperature, evidence=evidence)


def test_the_same_text_is_a_match_whatever_the_scores():
    assert _compare("Paris.", Evidence("Paris.", [-9.0], -9.0)).outcome == "match"


def test_an_answer_cut_short_is_a_mismatch_even_when_every_token_is_likely():
    result = _compare("The capital", Evidence("The capital of France is Paris.", [-0.2, -0.1], -0.5))
    assert result.outcome == "mismatch" and "cut short" in result.reason


def test_a_greedy_answer_that_differs_but_is_likely_is_plausible():
    # Honest greedy figures: mean -1.44 and up, lowest -2.82 and up, end -2.73 and up.
    result = _compare("The capital is Paris.", Evidence("Paris is the capital.", [-1.4, -2.8, -0.3], -2.7))
    assert result.outcome == "plausible" and result.mean_logprob == pytest.approx(-1.5)


@pytest.mark.parametrize("logprobs, end, why", [
    ([-3.4, -4.5, -3.9], -1.0, "mean"),       # the cached substitute's shape
    ([-0.5, -9.7, -0.4], -1.0, "a token"),     # one implausible token
    ([-0.5, -0.6], -8.4, "ending there"),      # stops where the model would go on
])
def test_an_unlikely_greedy_answer_is_a_mismatch(logprobs, end, why):
    result = _compare("I am sure the answer is forty-two.", Evidence("Paris.", logprobs, end))
    assert result.outcome == "mismatch" and why in result.reason


def test_a_sampled_answer_that_differs_without_a_fit_is_inconclusive_because_scores_cannot_tell():
    result = _compare("A tabby cat naps.", Evidence("A grey cat sleeps.", [-2.5, -3.0], -0.5), temperature=0.7)
    assert result.outcome == "inconclusive" and "sampled" in result.reason


def _fit(tokens, z, variance=40.0):
    return {"tokens": tokens, "excess": z * variance ** 0.5, "variance": variance}


@pytest.mark.parametrize("fit, outcome", [
    # A good fit never clears an answer: a short substitute at temperature 1 fits as well.
    (_fit(30, 0.4), "inconclusive"),     # an honest sample from other numerics: z about N(0, 1)
    (_fit(30, -5.9), "inconclusive"),
    (_fit(30, -6.1), "mismatch"),        # tokens the model would not have drawn
    (_fit(7, -20.0), "inconclusive"),    # too short for the statistic to say anything
    (_fit(30, -20.0, variance=0.0), "inconclusive"),
])
def test_a_sampled_answer_that_differs_is_judged_by_how_its_tokens_fit_the_models_samples(fit, outcome):
    evidence = Evidence("A grey cat sleeps on the mat.", [-2.5, -3.0], -0.5, sampled_fit=fit)
    result = _compare("A tabby cat naps.", evidence, temperature=0.7)
    assert result.outcome == outcome, result.reason
    if outcome == "mismatch":
        assert "would not have drawn" in result.reason


def test_the_fit_is_ignored_for_a_greedy_answer_and_a_cut_short_sampled_answer_is_still_a_mismatch():
    greedy = _compare("The capital is Paris.", Evidence("Paris is the capital.", [-1.4, -2.8, -0.3], -2.7,
                                                        sampled_fit=_fit(30, -20.0)))
    assert greedy.outcome == "plausible"
    cut = _compare("The capital", Evidence("The capital of France is Paris.", [-0.2], -0.5, sampled_fit=_fit(30, 1.0)),
                   temperature=1.0)
    assert cut.outcome == "mismatch" and "cut short" in cut.reason


def test_a_length_limited_answer_is_not_judged_by_its_end():
    assert _compare("Paris is", Evidence("Paris was", [-0.5, -1.0], -12.0), finish="length").outcome == "plausible"


# --- embeddings: compare_vectors ----------------------------------------------------------------

from apps.verification.compare import VECTOR_COSINE_MIN, compare_vectors  # noqa: E402

CLAIMED = [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]


def test_the_same_vectors_are_a_match_and_honest_float_noise_is_plausible():
    assert compare_vectors(claimed=CLAIMED, validator=[list(v) for v in CLAIMED]).outcome == "match"
    # Of the size measured between onnxruntime's graph optimisation levels (1 - cos < 1e-12).
    noisy = [[0.6 + 1e-7, 0.8 - 1e-7, 1e-8], [1e-7, 0.0, 1.0]]
    comparison = compare_vectors(claimed=CLAIMED, validator=noisy)
    assert comparison.outcome == "plausible" and comparison.lowest_similarity > 0.999999


@pytest.mark.parametrize("validator, why", [
    ([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], "cosine"),  # one vector points elsewhere (cos 0.96)
    ([[1.2, 1.6, 0.0], [0.0, 0.0, 1.0]], "length"),  # the same direction, twice the length
    ([[0.6, 0.8, 0.0]], "claimed vectors"),  # a vector missing
])
def test_vectors_that_point_elsewhere_or_differ_in_length_or_number_are_a_mismatch(validator, why):
    comparison = compare_vectors(claimed=CLAIMED, validator=validator)
    assert comparison.outcome == "mismatch" and why in comparison.reason


def test_the_threshold_sits_between_measured_honest_variation_and_the_closest_cheat():
    # docs/verification.md: honest 1 - cos <= 8.7e-13; --cheat truncate's closest vector 0.964.
    assert 0.964 < VECTOR_COSINE_MIN < 1 - 1e-9
