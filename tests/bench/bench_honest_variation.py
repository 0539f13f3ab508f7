"""How likely are honest answers under a validator's run of the same model, and how likely are a
cheater's substitutes? The figures the verified tier's comparison thresholds are set from
(docs/verification.md).

For each prompt, seed and temperature: the "worker" (builtin backend, 2 threads) answers; a
"validator" (a second instance with 1 thread: other numerics, as on another machine) scores that
answer by teacher forcing, and scores what `--cheat cached` and `--cheat truncate` would have sent
instead. Prints per case the mean and lowest token log-probability, the log-probability of
ending there and, for sampled answers, the fit's z (SampledFit: excess / sqrt(variance)), then
the spread per kind. No thresholds are asserted here: this measures.

Run: .venv/bin/python tests/bench/bench_honest_variation.py [--prompts N] [--seeds N]
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from worker.backends import Finish, Request  # noqa: E402
from worker.backends.builtin import BuiltinBackend  # noqa: E402
from worker.cheat import FALLBACK_ANSWER  # noqa: E402

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain in two sentences what a CPU does.",
    "List the days of the week.",
    "Give one tip for sleeping well.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "Describe a cat in one sentence.",
    "Why is the sky blue? Answer briefly.",
    "Suggest a name for a small bakery.",
    "What does HTTP stand for?",
]


def _answer(backend, request, params) -> tuple[str, str]:
    pieces, reason = [], "length"
    for piece in backend.generate(backend.model_id, request, params, threading.Event()):
        if isinstance(piece, Finish):
            reason = piece.reason
        else:
            pieces.append(piece)
    return "".join(pieces), reason


def _figures(scored) -> tuple[float, float, float | None, float | None]:
    """Mean and lowest token log-probability, ending there, and (sampled jobs) the fit's z."""
    logprobs = scored.token_logprobs or [0.0]
    fit = scored.sampled_fit
    z = fit.excess / math.sqrt(fit.variance) if fit is not None and fit.variance > 0 else None
    return mean(logprobs), min(logprobs), scored.end_logprob, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--temperatures", default="0,0.7,1.0")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    worker, validator = BuiltinBackend.load(None, n_threads=2), BuiltinBackend.load(None, n_threads=1)
    rows: dict[str, list[tuple]] = {"honest": [], "honest, same run": [], "cached": [], "truncate": []}
    print(f"{'kind':18} {'temp':>4} {'seed':>4} {'tokens':>6} {'mean':>7} {'lowest':>7} {'end':>7} {'fit z':>7} {'identical':>9}  prompt")
    for prompt in PROMPTS[:args.prompts]:
        request = Request(messages=[{"role": "user", "content": prompt}])
        for temperature in [float(t) for t in args.temperatures.split(",")]:
            for seed in range(args.seeds if temperature > 0 else 1):
                params = {"max_tokens": args.max_tokens, "temperature": temperature, "top_p": 1.0, "seed": seed}
                claimed, reason = _answer(worker, request, params)
                rerun, _ = _answer(validator, request, params)
                cases = {"honest": claimed, "cached": "".join(FALLBACK_ANSWER)}
                if reason == "stop" and len(claimed) > 3:
                    cases["truncate"] = claimed[: len(claimed) // 3]
                for kind, output in cases.items():
                    figures = _figures(validator.score(validator.model_id, request, output, temperature))
                    rows[kind].append((*figures, reason if kind == "honest" else "stop"))
                    end = f"{figures[2]:7.2f}" if figures[2] is not None else "      -"
                    z = f"{figures[3]:7.2f}" if figures[3] is not None else "      -"
                    same = str(rerun == claimed) if kind == "honest" else ""
                    print(f"{kind:18} {temperature:4.1f} {seed:4d} {len(output):6d} {figures[0]:7.2f} "
                          f"{figures[1]:7.2f} {end} {z} {same:>9}  {prompt[:40]}", flush=True)
                if rerun == claimed:
                    rows["honest, same run"].append(())
    print("\nspread per kind (mean log-prob per token; lowest token; end, for answers that claim a natural stop)")
    for kind in ("honest", "cached", "truncate"):
        found = rows[kind]
        if not found:
            continue
        means, lowest = [r[0] for r in found], [r[1] for r in found]
        ends = [r[2] for r in found if r[4] == "stop" and r[2] is not None]
        zs = [r[3] for r in found if r[3] is not None]
        print(f"  {kind:9} n={len(found):3d}  mean: {min(means):6.2f} .. {max(means):6.2f}   lowest token: "
              f"{min(lowest):6.2f} .. {max(lowest):6.2f}   end: "
              + (f"{min(ends):6.2f} .. {max(ends):6.2f}" if ends else "-")
              + (f"   sampled fit z: {min(zs):6.2f} .. {max(zs):6.2f}" if zs else ""))
    total = len(rows["honest"])
    print(f"  the validator's own run gave the very same text in {len(rows['honest, same run'])} of {total} cases")


if __name__ == "__main__":
    main()
