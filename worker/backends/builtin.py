"""Backend "builtin": Gemma 3 270M (Q4_K_M GGUF) on the CPU through llama-cpp-python.

Chat jobs are formatted for the base model with `worker.prompt.job_prompt`, whose stop
sequences are added to the caller's; a raw prompt runs as given.

Reproducibility is the point of this backend: the node commits to (model digest, seed, params,
prompt, output), so the same job must give the same text on any worker. Hence:
  * every job starts from an empty KV cache (llama-cpp-python would otherwise reuse a cached
    prompt prefix, and a different evaluation split can change the numerics);
  * the sampler chain depends only on the protocol's params: top_k, min_p, typical_p and
    repetition penalties are pinned to their neutral values, not llama-cpp-python's defaults;
  * the seed is mapped onto llama.cpp's 32-bit seed space explicitly (see `_llama_seed`).
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from worker.backends import BackendError, Finish, ModelInfo, Piece, Request, SampledFit, Scored
from worker.backends.modelfile import ModelFile, resolve_model
from worker.backends.params import sampling
from worker.backends.textstream import StopStream
from worker.prompt import job_prompt

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 2048
# llama.cpp treats 0xFFFFFFFF as "pick a random seed"; reducing modulo this keeps it unused.
_SEED_SPACE = 0xFFFFFFFF


def _llama_seed(seed: int) -> int:
    return seed % _SEED_SPACE


def _shared(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


class BuiltinBackend:
    name = "builtin"

    def __init__(self, llm: Any, model: ModelFile, *, n_threads: int, load_seconds: float) -> None:
        import llama_cpp

        self._llm = llm
        self._llama_cpp = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._piece_buffer = ctypes.create_string_buffer(64)
        # One llama context can run one generation at a time.
        self._lock = threading.Lock()
        self.model = model
        self.model_id = model.id
        self.digest = model.digest
        self.path = model.path
        self.context_length = llm.n_ctx()
        self.models = [ModelInfo(model.id, model.digest, self.name, self.context_length)]
        self.n_threads = n_threads
        self.load_seconds = load_seconds

    @classmethod
    def load(cls, model_path: Path | None, *, n_threads: int,
             n_ctx: int = DEFAULT_CONTEXT_LENGTH, n_batch: int = 512) -> BuiltinBackend:
        """n_batch: the agent always uses 512; other values are for measuring honest variation
        (tests/bench/bench_verification.py)."""
        from llama_cpp import Llama

        model = resolve_model(model_path)
        started = time.perf_counter()
        # Everything that changes how the prompt is split or attention is summed is pinned,
        # so that a library default changing cannot make two workers disagree.
        llm = Llama(model_path=str(model.path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                    n_threads=n_threads, n_threads_batch=n_threads, flash_attn=False,
                    swa_full=True, n_gpu_layers=0, verbose=False)
        load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) from %s in %.2fs, %d threads",
                 model.id, model.digest, model.path, load_seconds, n_threads)
        return cls(llm, model, n_threads=n_threads, load_seconds=load_seconds)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        if model_id != self.model_id:
            raise BackendError("model_unavailable", f"this backend serves {self.model_id} only")
        # Validate before taking the lock so a bad job fails fast even while busy.
        wanted = sampling(params)
        prompt, format_stops = job_prompt(messages=request.messages, prompt=request.prompt)
        temperature = 1.0 if wanted.temperature is None else wanted.temperature
        top_p = 1.0 if wanted.top_p is None else wanted.top_p
        with self._lock:
            yield from self._generate(prompt, temperature, top_p, wanted.max_tokens, wanted.seed,
                                      [*wanted.stops, *format_stops], cancel)

    def _generate(self, prompt: str, temperature: float, top_p: float, max_tokens: int | None,
                  seed: int | None, stops: list[str], cancel: threading.Event) -> Iterator[Piece]:
        llm = self._llm
        # special=False: control-token text inside user content stays plain text.
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        budget = self.context_length - len(tokens)
        if budget <= 0:
            raise BackendError("context_length_exceeded",
                               f"prompt is {len(tokens)} tokens; context is {self.context_length}")
        limit = budget if max_tokens is None else min(max_tokens, budget)
        if cancel.is_set():
            yield Finish("cancelled", 0)
            return

        llm.reset()  # empty KV cache: no prefix reuse from the previous job
        # Without a seed a job gets a fresh one, not whatever the previous job left behind.
        llm.set_seed(_llama_seed(seed) if seed is not None else secrets.randbelow(_SEED_SPACE))
        stream = StopStream(stops)
        count, reason, stopped = 0, "length", False
        sampler = llm.generate(tokens, temp=temperature, top_p=top_p, top_k=0, min_p=0.0,
                               typical_p=1.0, repeat_penalty=1.0, frequency_penalty=0.0,
                               presence_penalty=0.0, reset=True)
        try:
            for token in sampler:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                count += 1
                step = stream.feed(self._piece(token))
                if step.text:
                    yield step.text
                if step.stopped:
                    reason, stopped = "stop", True
                    break
                if count >= limit:
                    break
        finally:
            sampler.close()
        # Text held back as a possible stop-sequence start is real output unless a stop matched.
        if not stopped:
            tail = stream.flush()
            if tail:
                yield tail
        yield Finish(reason, count)

    def score(self, model_id: str, request: Request, output: str, temperature: float = 0.0) -> Scored:
        """Teacher forcing: the log-probability this model gives each token of `output` after the
        job's prompt, and that the generation ends right there: with an end-of-generation token,
        or by going on with one of the chat format's stop sequences (which the answer leaves out).
        What a validator weighs when its own run differs from a claimed answer
        (docs/verification.md). One evaluation per token from an empty cache, as a generation
        runs; text is tokenized as a whole (prompt and output together), as a model reads it.
        With a temperature above 0, also how the tokens fit samples at that temperature
        (SampledFit)."""
        if model_id != self.model_id:
            raise BackendError("model_unavailable", f"this backend serves {self.model_id} only")
        prompt, format_stops = job_prompt(messages=request.messages, prompt=request.prompt)
        llm, lib = self._llm, self._llama_cpp
        tokenize = lambda text: llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)  # noqa: E731
        prompt_tokens, answer = tokenize(prompt), tokenize(prompt + output)
        start = _shared(prompt_tokens, answer)
        endings = [tokenize(prompt + output + stop) for stop in format_stops]
        if max(map(len, [answer, *endings])) + 1 > self.context_length:
            raise BackendError("context_length_exceeded", "prompt and output exceed the context")
        ends = [t for t in (lib.llama_vocab_eos(self._vocab), lib.llama_vocab_eot(self._vocab)) if t >= 0]
        with self._lock:
            llm.reset()
            llm.eval(answer[:start])
            fit = _FitCounter(temperature) if temperature > 0 else None
            token_logprobs = self._forced(answer, start, fit)
            alternatives = [float(self._logprobs()[token]) for token in ends]  # the answer's end token
            for ending in endings:
                # Going on with a stop sequence: from where the two tokenizations part, the
                # stop's branch less the answer's own last tokens (they may merge with the stop).
                split = _shared(answer, ending)
                alternatives.append(sum(self._forced(ending, split)) - sum(token_logprobs[max(split - start, 0):]))
        # At most 0 (a probability of 1): the stop branch is a ratio of two tokenizations, which
        # passes 1 when the answer's last characters are split unlike the model emitted them.
        end = min(float(np.logaddexp.reduce(alternatives)), 0.0) if alternatives else None
        return Scored(token_logprobs=token_logprobs, end_logprob=end,
                      sampled_fit=fit.result() if fit is not None else None)

    def _forced(self, tokens: list[int], start: int, fit: "_FitCounter | None" = None) -> list[float]:
        """From the state after tokens[:start] (evaluated already, or rewound to), the
        log-probability of each of tokens[start:], evaluating them (and counted into `fit`);
        caller holds the lock."""
        self._llm.n_tokens = start  # the next eval drops the cache past this point
        found = []
        for index in range(start, len(tokens)):
            if index == start and start > 0:
                self._llm.n_tokens = start - 1
                self._llm.eval([tokens[start - 1]])  # the logits that predict tokens[start]
            logprobs = self._logprobs()
            found.append(float(logprobs[tokens[index]]))
            if fit is not None:
                fit.add(logprobs, tokens[index])
            self._llm.eval([tokens[index]])
        return found

    def _logprobs(self):
        lib, llm = self._llama_cpp, self._llm
        n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).astype(np.float64)
        return logits - np.logaddexp.reduce(logits)

    def _piece(self, token: int) -> bytes:
        """The token's bytes. Unlike Llama.detokenize this grows its buffer for long pieces."""
        lib, buf = self._llama_cpp, self._piece_buffer
        n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            self._piece_buffer = buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]


class _FitCounter:
    """Sums, over forced positions, log p_T(token) - E[log p_T] and Var[log p_T], where p_T is
    the model's distribution at temperature T (logits / T; the top_p nucleus left out: it only
    keeps the likeliest tokens, so it can raise an honest sample's sum, never lower it)."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.tokens, self.excess, self.variance = 0, 0.0, 0.0

    def add(self, logprobs, token: int) -> None:
        scaled = logprobs / self.temperature
        scaled = scaled - np.logaddexp.reduce(scaled)
        p = np.exp(scaled)
        expected = float(np.dot(p, scaled))
        self.tokens += 1
        self.excess += float(scaled[token]) - expected
        self.variance += max(float(np.dot(p, scaled * scaled)) - expected * expected, 0.0)

    def result(self) -> SampledFit:
        return SampledFit(tokens=self.tokens, excess=self.excess, variance=self.variance)

