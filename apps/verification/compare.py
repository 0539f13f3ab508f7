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
4. A sampled answer (temperature above 0) that differs is **inconclusive**: its log-probabilities
   cannot tell an honest divergence from a substitute (honest means reach -5.0 at temperature 1),
   and a validator with other numerics does diverge honestly (measured: a validator with batch 8
   against the agent's 512 differed on 9 of 24 sampled honest answers, tests/bench/
   bench_verification.py). Never evidence of a fault.

A mismatch is evidence, not yet a verdict: a second validator must confirm it before a bond is
slashed (services.verdict_apply). The thresholds are provisional: set from one machine's measurements.
"""

from dataclasses import dataclass
from statistics import mean

GREEDY_MEAN_MIN = -2.0
GREEDY_TOKEN_MIN = -5.0
GREEDY_END_MIN = -4.0


@dataclass(frozen=True)
class Evidence:
    """What a validator sent back (validate.done)."""

    output: str  # its own run of the job
    token_logprobs: list[float]  # each token of the claimed output, under its model
    end_logprob: float | None  # the claimed output ending where it does


@dataclass(frozen=True)
class Comparison:
    outcome: str  # "match", "plausible", "inconclusive" or "mismatch"
    reason: str
    mean_logprob: float | None = None
    lowest_logprob: float | None = None


def compare(*, claimed: str, claimed_finish: str, temperature: float, evidence: Evidence) -> Comparison:
    if evidence.output == claimed:
        return Comparison("match", "the validator's run gave the same text")
    figures = dict(mean_logprob=mean(evidence.token_logprobs) if evidence.token_logprobs else None,
                   lowest_logprob=min(evidence.token_logprobs) if evidence.token_logprobs else None)
    if claimed_finish == "stop" and len(evidence.output) > len(claimed) and evidence.output.startswith(claimed):
        return Comparison("mismatch", "the answer stops where the validator's run goes on: cut short", **figures)
    if temperature > 0:
        return Comparison("inconclusive", "a sampled answer that differs from the validator's run: its scores "
                          "cannot tell other numerics from a substitute", **figures)
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
