"""The adversarial agent (worker/cheat.py): what it substitutes, how often, and that it signs the
substitute like an honest answer, so that only re-execution can catch it."""

import random
import threading

import pytest

from worker.backends import Finish, Request
from worker.cheat import FALLBACK_ANSWER, CheatingBackend

from .nodestub import FakeBackend, assign, frames_until_finished, welcome
from .test_worker_agent import run, run_one_session

PIECES = tuple(f" w{i}" for i in range(12))
PARAMS = {"max_tokens": 12, "temperature": 0, "top_p": 1, "seed": 7, "stop": []}


def _generate(backend, params=PARAMS):
    return list(backend.generate("fake-model", Request(prompt="x"), params, threading.Event()))


def test_truncate_stops_at_a_third_of_max_tokens_and_calls_it_a_natural_stop():
    honest = FakeBackend(pieces=PIECES)
    pieces = _generate(CheatingBackend(honest, mode="truncate", rate=1.0))
    assert pieces == [*PIECES[:4], Finish("stop", 4)]


def test_cached_replays_the_first_honest_answer_without_running_the_model():
    honest = FakeBackend(pieces=PIECES)
    cheater = CheatingBackend(honest, mode="cached", rate=0.5, rng=random.Random(3))
    outputs = [_generate(cheater) for _ in range(40)]
    assert 10 < cheater.cheated < 30  # about half of the jobs
    assert len(honest.requests) == 40 - cheater.cheated  # a cheated job never reached the model
    texts = ["".join(p for p in out if isinstance(p, str)) for out in outputs]
    first_honest = texts.index("".join(PIECES))
    # Before the first honest answer it replays the fixed sentence; from then on, that answer.
    assert set(texts[:first_honest]) <= {"".join(FALLBACK_ANSWER)}
    assert set(texts[first_honest:]) == {"".join(PIECES)}


def test_cached_before_any_honest_answer_replays_a_fixed_sentence():
    pieces = _generate(CheatingBackend(FakeBackend(pieces=PIECES), mode="cached", rate=1.0))
    assert "".join(p for p in pieces if isinstance(p, str)) == "".join(FALLBACK_ANSWER)


def test_rate_zero_is_an_honest_agent_and_bad_settings_are_refused():
    honest = FakeBackend(pieces=PIECES)
    assert _generate(CheatingBackend(honest, mode="truncate", rate=0.0)) == [*PIECES, Finish("length", 12)]
    with pytest.raises(ValueError):
        CheatingBackend(honest, mode="smaller", rate=0.5)
    with pytest.raises(ValueError):
        CheatingBackend(honest, mode="cached", rate=1.5)


def test_the_cheaters_substitute_is_signed_like_an_honest_answer():
    from worker.commitment import commitment_hash, commitment_inputs, signature_valid
    from worker.prompt import job_prompt

    backend = CheatingBackend(FakeBackend(pieces=PIECES), mode="truncate", rate=1.0)

    async def script(ws):
        hello = await welcome(ws)
        await ws.send(assign("job-1", FakeBackend.digest, max_tokens=12))
        return hello, await frames_until_finished(ws, "job-1")

    async def scenario():
        hello, frames = await run_one_session(backend, script)
        sent = "".join(f["text"] for f in frames if f["type"] == "job.delta")
        assert sent == "".join(PIECES[:4])
        params = {"max_tokens": 12, "temperature": 0, "top_p": 1, "seed": 7, "stop": []}
        expected = commitment_hash(commitment_inputs(
            model_id="fake-model", model_digest=FakeBackend.digest, seed=7, params=params,
            prompt=job_prompt(messages=[{"role": "user", "content": "Say hello."}], prompt=None)[0], output=sent))
        done = frames[-1]
        assert done["finish_reason"] == "stop" and done["commitment"] == expected
        assert signature_valid(public_key=hello["signing_key"], commitment=expected, signature=done["signature"])

    run(scenario)
