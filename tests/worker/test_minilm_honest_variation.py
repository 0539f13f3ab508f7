"""Honest variation of the real MiniLM backend (int8 ONNX on onnxruntime), measured, and the
embedding comparison rule (apps/verification/compare.py) set from it: the same texts embedded by
agents on other thread counts, and by sessions built with other graph optimisations (other
kernels and fusions, standing in for another build or CPU), must pass; `--cheat truncate` and
`--cheat cached` vectors must not. Figures print with -s (docs/verification.md quotes them)."""

import threading

import numpy
import onnxruntime
import pytest
from tokenizers import Tokenizer

from apps.verification.compare import VECTOR_COSINE_MIN, VECTOR_NORM_TOLERANCE, compare_vectors
from worker.backends import minilm
from worker.cheat import CheatingEmbedder

TOPICS = ["cooking pasta", "the orbit of Mars", "tax law", "jazz piano", "mountain hiking", "database indexes",
          "medieval castles"]
TEXTS = (["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awful.",
          "Interest rates were raised by the central bank.", "hello", "Ein Mann isst.", "東京は日本の首都です。",
          "Quantum chromodynamics describes the strong force between quarks and gluons."]
         + [f"Note {i}: a few words about {TOPICS[i % 7]}, " + "and some more detail " * (i % 9) for i in range(56)]
         + ["word " * 200, "The quarterly figures for the northern region were revised again " * 6])



def _session_backend(level, threads: int) -> minilm.MiniLMBackend:
    """The agent's backend on a session built with another graph optimisation level."""
    onnx, tokenizer_file = minilm.model_files()
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(minilm.MAX_TOKENS)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level, options.log_severity_level = level, 3
    session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    return minilm.MiniLMBackend(session, tokenizer, minilm.model_info())


def _embed(backend) -> list[list[float]]:
    """As the relay sends them: in chunks of 32."""
    vectors = []
    for start in range(0, len(TEXTS), 32):
        vectors += backend.embed(minilm.MODEL_ID, TEXTS[start:start + 32], threading.Event()).data
    return vectors


def _figures(claimed, validator) -> tuple[float, float, int]:
    a, b = numpy.asarray(claimed, dtype=numpy.float64), numpy.asarray(validator, dtype=numpy.float64)
    cosines = (a * b).sum(1) / numpy.linalg.norm(a, axis=1) / numpy.linalg.norm(b, axis=1)
    norms = numpy.abs(numpy.linalg.norm(a, axis=1) - numpy.linalg.norm(b, axis=1))
    identical = int((numpy.asarray(claimed, numpy.float32) == numpy.asarray(validator, numpy.float32)).all(1).sum())
    return float(1 - cosines.min()), float(norms.max()), identical


def test_honest_agents_pass_and_cheats_do_not():
    served = minilm.MiniLMBackend.load(threads=2)  # as every agent runs by default
    worker = _embed(served)
    alone = [served.embed(minilm.MODEL_ID, [text], threading.Event()).data[0] for text in TEXTS]
    print(f"\nthe same texts embedded alone, not in chunks: identical {_figures(worker, alone)[2]}/{len(TEXTS)}")
    assert compare_vectors(claimed=worker, validator=alone).outcome in ("match", "plausible")
    others = {f"{n} thread(s)": minilm.MiniLMBackend.load(threads=n) for n in (1, 4)}
    levels = onnxruntime.GraphOptimizationLevel
    others |= {f"{name}, {n} thread(s)": _session_backend(level, n) for name, level in
               [("no graph optimisation", levels.ORT_DISABLE_ALL), ("basic optimisation", levels.ORT_ENABLE_BASIC)]
               for n in (1, 2)}
    print(f"{len(TEXTS)} texts; worker on 2 threads; rule: cosine >= {VECTOR_COSINE_MIN}, "
          f"norms within {VECTOR_NORM_TOLERANCE}")
    for name, backend in others.items():
        validator = _embed(backend)
        one_minus_cos, norm, identical = _figures(worker, validator)
        print(f"honest, {name}: identical {identical}/{len(TEXTS)}, max 1-cos {one_minus_cos:.2e}, "
              f"max |norm diff| {norm:.2e}")
        assert compare_vectors(claimed=worker, validator=validator).outcome in ("match", "plausible")

    honest = minilm.MiniLMBackend.load(threads=1)
    for mode in ("truncate", "cached"):
        cheat = _embed(CheatingEmbedder(honest, mode=mode, rate=1.0, dimensions=minilm.DIMENSIONS))
        changed = [i for i, text in enumerate(TEXTS) if mode == "cached" or len(text.split()) >= 3]
        closest = max(float(numpy.dot(cheat[i], worker[i])) for i in changed)
        print(f"--cheat {mode}: closest cosine {closest:.4f} over {len(changed)} changed inputs")
        for i in changed:
            assert compare_vectors(claimed=[cheat[i]], validator=[worker[i]]).outcome == "mismatch", TEXTS[i]
