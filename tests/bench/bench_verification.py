"""The verified tier, measured: false slashes of honest workers, detection of cheaters, and what
re-execution costs (docs/verification.md, "Measured").

1. On the real model (builtin backend, Gemma 3 270M): a "worker" (2 threads, batch 512, as the
   agent runs) answers each prompt at temperature 0 and, with two seeds, 0.7; "validators" with
   other thread counts and batch sizes re-execute and score the answer exactly as an agent does
   on validate.assign (worker/validation.py), and the node's rule (apps/verification/compare.py)
   compares. Every honest answer is checked by every validator setting: a mismatch there would be
   a false accusation, and two would be a false slash. The same validators score what
   `--cheat cached` and `--cheat truncate` would have sent. Times each serve and each validation.
2. Detection, by simulation over those measured outcomes: a cheater substituting on a fraction p
   of its jobs, sampled at rate q with the node's own draw (apps/verification/sampling.py), a
   sampled job checked by a first and, on a mismatch, a second validator (outcomes drawn from
   part 1's, per validator setting, per temperature): jobs until the first slash, against
   1 - (1 - p·q·d)^n, d the measured chance that a sampled substitute is proven.
3. Cost: validation compute over serving compute, per sampling rate.

Run: .venv/bin/python tests/bench/bench_verification.py [--prompts N] [--trials N]
Prints its figures; asserts nothing (the test suite does).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import threading
import time
from pathlib import Path
from statistics import mean, median

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.verification.compare import Evidence, compare  # noqa: E402
from apps.verification.sampling import drawn  # noqa: E402
from tests.bench.bench_honest_variation import PROMPTS, _answer  # noqa: E402
from worker.backends import Request  # noqa: E402
from worker.backends.builtin import BuiltinBackend  # noqa: E402
from worker.cheat import FALLBACK_ANSWER  # noqa: E402
from worker.validation import validation_result  # noqa: E402

WORKER_SETTING = (2, 512)
VALIDATOR_SETTINGS = [(1, 512), (2, 64), (1, 8)]  # (threads, batch): other numerics than the worker's
TEMPERATURES = (0.0, 0.7)
OUTCOMES = ("match", "plausible", "inconclusive", "mismatch")
COST_SETTING = (2, 64)


def _validate(backend, request, params, claimed, claimed_finish):
    """What a validator agent sends (validate.done) and the node's comparison of it; seconds."""
    started = time.perf_counter()
    done = asyncio.run(validation_result(backend, backend.model_id, backend.digest, request, params, claimed,
                                         threading.Event()))
    seconds = time.perf_counter() - started
    comparison = compare(claimed=claimed, claimed_finish=claimed_finish, temperature=params["temperature"],
                         evidence=Evidence(output=done["output"], token_logprobs=done["token_logprobs"],
                                           end_logprob=done["end_logprob"], sampled_fit=done.get("sampled_fit")))
    return comparison.outcome, seconds


def measure(prompts: list[str], max_tokens: int) -> dict:
    worker = BuiltinBackend.load(None, n_threads=WORKER_SETTING[0], n_batch=WORKER_SETTING[1])
    validators = {setting: BuiltinBackend.load(None, n_threads=setting[0], n_batch=setting[1])
                  for setting in VALIDATOR_SETTINGS}
    outcomes = {"honest": [], "cached": [], "truncate": []}  # per case: {validator setting: outcome}
    serve_seconds, validate_seconds = [], {}
    print(f"{'kind':9} {'temp':>4} {'seed':>4} " + " ".join(f"{f'v{t}t/b{b}':>11}" for t, b in VALIDATOR_SETTINGS)
          + "  prompt")
    for prompt in prompts:
        request = Request(messages=[{"role": "user", "content": prompt}])
        for temperature, seed in [(0.0, 0), *((t, seed) for t in TEMPERATURES if t > 0 for seed in (0, 1))]:
            params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": 1.0, "seed": seed}
            started = time.perf_counter()
            claimed, reason = _answer(worker, request, params)
            serve_seconds.append(time.perf_counter() - started)
            cases = {"honest": (claimed, reason), "cached": ("".join(FALLBACK_ANSWER), "stop")}
            if reason == "stop" and len(claimed) > 3:
                cases["truncate"] = (claimed[: len(claimed) // 3], "stop")
            for kind, (output, finish) in cases.items():
                row = {}
                for setting, validator in validators.items():
                    row[setting], seconds = _validate(validator, request, params, output, finish)
                    if kind == "honest":
                        validate_seconds.setdefault(setting, []).append(seconds)
                outcomes[kind].append({**row, "temperature": temperature})
                print(f"{kind:9} {temperature:4.1f} {seed:4d} " + " ".join(f"{row[s]:>11}" for s in VALIDATOR_SETTINGS)
                      + f"  {prompt[:36]}", flush=True)
    return {"outcomes": outcomes, "serve": serve_seconds, "validate": validate_seconds}


def _slashed(row_pool: list[dict], rng: random.Random) -> bool:
    """One sampled job: a first validator's outcome, and a second's (another setting) on a mismatch."""
    row = rng.choice(row_pool)
    first, second = rng.sample(VALIDATOR_SETTINGS, 2)
    return row[first] == "mismatch" and row[second] == "mismatch"


def _pair_rate(rows: list[dict]) -> float:
    """The share of (answer, ordered validator pair) in which both validators find a mismatch."""
    pairs = [(row, a, b) for row in rows for a in VALIDATOR_SETTINGS for b in VALIDATOR_SETTINGS if a != b]
    return sum(1 for row, a, b in pairs if row[a] == row[b] == "mismatch") / len(pairs) if pairs else 0.0


def detection(outcomes: dict, *, trials: int, cheat_rates, sample_rates, cap: int, temperature: float) -> None:
    rng = random.Random(20261130)
    cheats = [row for row in outcomes["cached"] + outcomes["truncate"] if row["temperature"] == temperature]
    honest = [row for row in outcomes["honest"] if row["temperature"] == temperature]
    d = _pair_rate(cheats)
    print(f"\n2. detection at temperature {temperature}: {trials} cheaters per cell, substitutes drawn from the "
          f"{len(cheats)} measured (cached and truncate); a sampled substitute is proven (two mismatches) with "
          f"d = {d:.2f}; capped at {cap} jobs")
    if d == 0:
        print("   no substitute at this temperature is ever proven: a cheater here is not caught (see above)")
        return
    print(f"{'p (cheat)':>9} {'q (sample)':>10} {'mean jobs':>10} {'median':>7} {'1/(pqd)':>8} "
          f"{'P(slash by n=1/pqd)':>19} {'1-(1-pqd)^n':>11} {'not caught':>10}")
    for p in cheat_rates:
        for q in sample_rates:
            firsts, uncaught = [], 0
            for _ in range(trials):
                for n in range(1, cap + 1):
                    cheated = rng.random() < p
                    if drawn(q) and _slashed(cheats if cheated else honest, rng):
                        firsts.append(n)
                        break
                else:
                    uncaught += 1
            horizon = round(1 / (p * q * d))
            empirical = sum(1 for n in firsts if n <= horizon) / trials
            formula = 1 - (1 - p * q * d) ** horizon
            print(f"{p:9.2f} {q:10.2f} {mean(firsts) if firsts else math.nan:10.1f} "
                  f"{median(firsts) if firsts else math.nan:7.0f} {horizon:8d} {empirical:19.3f} "
                  f"{formula:11.3f} {uncaught:10d}")


def honest_slashes(outcomes: dict, *, jobs: int, sample_rates) -> None:
    rng = random.Random(7)
    print(f"\n   an honest worker over {jobs} jobs per sampling rate (outcomes drawn from the measured honest ones):")
    for q in sample_rates:
        sampled = slashes = 0
        for _ in range(jobs):
            if drawn(q):
                sampled += 1
                slashes += _slashed(outcomes["honest"], rng)
        print(f"   q={q:.2f}: {sampled} re-executed, {slashes} slashed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--trials", type=int, default=300, help="simulated cheaters per (p, q)")
    parser.add_argument("--cap", type=int, default=20_000, help="jobs a simulated cheater serves at most")
    args = parser.parse_args()
    cheat_rates, sample_rates = (1.0, 0.3, 0.1), (0.01, 0.05, 0.10)

    print(f"1. honest and cheating answers, {args.prompts} prompts; worker {WORKER_SETTING[0]} threads, batch "
          f"{WORKER_SETTING[1]}; validators (threads, batch) {VALIDATOR_SETTINGS}")
    measured = measure(PROMPTS[:args.prompts], args.max_tokens)
    outcomes = measured["outcomes"]
    for kind, rows in outcomes.items():
        verdicts = [row[setting] for row in rows for setting in VALIDATOR_SETTINGS]
        pairs = len(rows) * len(VALIDATOR_SETTINGS) * (len(VALIDATOR_SETTINGS) - 1)
        slashes = round(_pair_rate(rows) * pairs)
        print(f"   {kind:9} {len(rows):3d} answers x {len(VALIDATOR_SETTINGS)} validators: "
              + ", ".join(f"{name} {verdicts.count(name)}" for name in OUTCOMES)
              + f"; two validators both mismatch (a slash) in {slashes} of {pairs} ordered pairs")
    honest = outcomes["honest"]
    false_accusations = sum(1 for row in honest for setting in VALIDATOR_SETTINGS if row[setting] == "mismatch")
    print(f"   false-positive rate: {false_accusations} mismatches in {len(honest) * len(VALIDATOR_SETTINGS)} "
          f"honest validations; false slashes: 0 of {len(honest)} honest answers" if false_accusations == 0 else
          f"   FALSE POSITIVES: {false_accusations} mismatches on honest answers")

    for temperature in TEMPERATURES:
        detection(outcomes, trials=args.trials, cheat_rates=cheat_rates, sample_rates=sample_rates, cap=args.cap,
                  temperature=temperature)
    honest_slashes(outcomes, jobs=100_000, sample_rates=sample_rates)

    serve = mean(measured["serve"])
    print(f"\n3. cost: serving a job (worker, {WORKER_SETTING[0]} threads) {serve * 1000:.0f} ms on average; "
          "validating it (re-run + scoring), per validator setting:")
    for setting, seconds in measured["validate"].items():
        took = mean(seconds)
        print(f"   {setting[0]} threads, batch {setting[1]}: {took * 1000:.0f} ms ({took / serve:.2f}x)")
    # The cost figure from a validator with the worker's thread count: compute, not a slower machine.
    validate = mean(measured["validate"][COST_SETTING])
    for q in sample_rates:
        print(f"   q={q:.2f}: extra compute {q * validate / serve:.1%} of served compute "
              f"(plus a second validation per mismatch)")


if __name__ == "__main__":
    main()
