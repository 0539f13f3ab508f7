"""Comparing a claimed answer with a validator's re-execution (docs/verification.md). Pure.

1. The validator's own run gave the same text: a **match** (60 of 60 honest reruns did, measured).
2. The claimed text is a strict beginning of the validator's run and claims a natural stop: the
   answer was **cut short** (a mismatch), however likely its tokens are.
3. Otherwise, for a greedy answer (temperature 0) the claimed tokens must be likely under the
   validator's model: mean log-probability per token at least GREEDY_MEAN_MIN, no token below
   GREEDY_TOKEN_MIN, and for a natural stop, ending there at least GREEDY_END_MIN. Measured honest
   greedy answers: mean -1.44 and up, lowest token -2.82 and up, end -2.73 and up; the cached
   substitute: mean -3.39 and lower, a token at -9.68 or lower. Within them: **plausible** (honest
   nondeterminism, e.g. another CPU or a GPU); outside: a mismatch.
4. A sampled answer (temperature above 0) that differs: its raw log-probabilities cannot tell an
   honest divergence from a substitute (honest means reach -5.0 at temperature 1), and a validator
   with other numerics does diverge honestly (measured: a validator with batch 8 against the
   agent's 512 differed on 9 of 24 sampled honest answers, tests/bench/bench_verification.py).
   What can: how the claimed tokens fit samples of the model at the job's temperature (the
   validator's `sampled_fit`, worker/backends.SampledFit): z = excess / sqrt(variance) is about
   N(0, 1) for an honest sample (top_p only raises it). Over at least SAMPLED_MIN_TOKENS tokens,
   z below SAMPLED_Z_MISMATCH is a **mismatch** (measured: honest -2.72 and up; the cached
   substitute at 0.7 -4.79 to -7.74). Anything else is **inconclusive**, never evidence either
   way: a fit near 0 does not clear an answer (the cached substitute at temperature 1.0 fits at
   -2.10 to -0.66, as well as honest answers do).

Embedding jobs (compare_vectors): the validator embeds the same texts in the same chunks. The
same float32s are a **match**; otherwise every vector must point the same way (cosine similarity
at least VECTOR_COSINE_MIN) with the same length (norms within VECTOR_NORM_TOLERANCE) to be
**plausible** (honest nondeterminism: other thread counts, CPUs); any other is a **mismatch**.

A mismatch is evidence, not yet a verdict: a second validator must confirm it before a bond is
slashed (services.verdict_apply). The thresholds are provisional: set from one machine's measurements.
"""

import math
from dataclasses import dataclass
from statistics import mean

from worker.embedding_commitment import float32_bytes

GREEDY_MEAN_MIN = -2.0
GREEDY_TOKEN_MIN = -5.0
GREEDY_END_MIN = -4.0
# Sampled answers (docs/verification.md, "Sampled answers"): set from measured honest variation.
SAMPLED_MIN_TOKENS = 8
SAMPLED_Z_MISMATCH = -6.0
# Embeddings (docs/verification.md, "Embedding jobs"): set from measured honest variation.
VECTOR_COSINE_MIN = 0.999
VECTOR_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Evidence:
    """What a validator sent back (validate.done)."""

    output: str  # its own run of the job
    token_logprobs: list[float]  # each token of the claimed output, under its model
    end_logprob: float | None  # the claimed output ending where it does
    sampled_fit: dict | None = None  # a sampled job's {tokens, excess, variance} (validate.done)


@dataclass(frozen=True)
class Comparison:
    outcome: str  # "match", "plausible", "inconclusive" or "mismatch"
    reason: str
    mean_logprob: float | None = None
    lowest_logprob: float | None = None
    lowest_similarity: float | None = None  # embeddings: the least cosine similarity of any vector


def compare(*, claimed: str, claimed_finish: str, temperature: float, evidence: Evidence) -> Comparison:
    if evidence.output == claimed:
        return Comparison("match", "the validator's run gave the same text")
    figures = dict(mean_logprob=mean(evidence.token_logprobs) if evidence.token_logprobs else None,
                   lowest_logprob=min(evidence.token_logprobs) if evidence.token_logprobs else None)
    if claimed_finish == "stop" and len(evidence.output) > len(claimed) and evidence.output.startswith(claimed):
        return Comparison("mismatch", "the answer stops where the validator's run goes on: cut short", **figures)
    if temperature > 0:
        return _sampled(evidence.sampled_fit, figures)
    problems = []
    if figures["mean_logprob"] is not None and figures["mean_logprob"] < GREEDY_MEAN_MIN:
        problems.append(f"mean log-probability {figures['mean_logprob']:.2f} < {GREEDY_MEAN_MIN}")
    if figures["lowest_logprob"] is not None and figures["lowest_logprob"] < GREEDY_TOKEN_MIN:
        problems.append(f"a token at {figures['lowest_logprob']:.2f} < {GREEDY_TOKEN_MIN}")
    if claimed_finish == "stop" and evidence.end_logprob is not None and evidence.end_logprob < GREEDY_END_MIN:
        problems.append(f"ending there at {evidence.end_logprob:.2f} < {GREEDY_END_MIN}")
    if problems:
        return Comparison("mismatch", "; ".join(problems), **figures)
    return Comparison("plausible", "a greedy answer likely under the validator's model", **figures)


def _sampled(fit: dict | None, figures: dict) -> Comparison:
    """A sampled answer that differs from the validator's run, judged by its fit (rule 4)."""
    if not fit or fit["tokens"] < SAMPLED_MIN_TOKENS or fit["variance"] <= 0:
        return Comparison("inconclusive", "a sampled answer that differs from the validator's run, too short "
                          "(or unscored) for its fit to tell other numerics from a substitute", **figures)
    z = fit["excess"] / math.sqrt(fit["variance"])
    if z < SAMPLED_Z_MISMATCH:
        return Comparison("mismatch", f"a sampled answer the model would not have drawn: its {fit['tokens']} tokens "
                          f"fit samples at this temperature at z = {z:.2f} < {SAMPLED_Z_MISMATCH}", **figures)
    return Comparison("inconclusive", f"a sampled answer that differs from the validator's run and fits the "
                      f"model's samples at z = {z:.2f}: not evidence either way", **figures)


def compare_vectors(*, claimed: list[list[float]], validator: list[list[float]]) -> Comparison:
    """The claimed vectors of an embedding job against a validator's for the same texts, in order."""
    if len(claimed) != len(validator) or any(len(a) != len(b) for a, b in zip(claimed, validator)):
        return Comparison("mismatch", f"{len(claimed)} claimed vectors against the validator's {len(validator)}, "
                          "or of other lengths")
    # As float32s: the agent sends each as a decimal that names it, the job keeps the float32 itself.
    if float32_bytes(claimed) == float32_bytes(validator):
        return Comparison("match", "the validator's vectors are the same float32s", lowest_similarity=1.0)
    worst, worst_index, worst_norm = 1.0, 0, 0.0
    for index, (a, b) in enumerate(zip(claimed, validator)):
        norm_a, norm_b = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        cosine = sum(x * y for x, y in zip(a, b)) / (norm_a * norm_b) if norm_a and norm_b else 0.0
        if cosine < worst:
            worst, worst_index = cosine, index
        worst_norm = max(worst_norm, abs(norm_a - norm_b) / max(norm_b, 1e-12))
    if worst < VECTOR_COSINE_MIN:
        return Comparison("mismatch", f"vector {worst_index} has cosine similarity {worst:.6f} with the "
                          f"validator's, below {VECTOR_COSINE_MIN}", lowest_similarity=worst)
    if worst_norm > VECTOR_NORM_TOLERANCE:
        return Comparison("mismatch", f"a vector's length differs from the validator's by {worst_norm:.2e}, "
                          f"over {VECTOR_NORM_TOLERANCE}", lowest_similarity=worst)
    return Comparison("plausible", "every vector within the honest variation of the validator's",
                      lowest_similarity=worst)
