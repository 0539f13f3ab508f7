"""The agent as a validator (validate.assign -> validate.done, worker/validation.py), against a
scripted node over a real WebSocket: it reruns the job, scores a claimed output that differs
(for a sampled job, with how it fits the model's samples), and refuses without a scoring backend."""

from __future__ import annotations

import pytest
from websockets.asyncio.server import ServerConnection

from tests.worker.nodestub import FakeBackend, receive, welcome
from tests.worker.test_worker_agent import run, run_one_session
from worker import protocol


class _ScoringBackend(FakeBackend):
    """A FakeBackend that can validate: it scores every claimed output the same way."""

    def score(self, model_id, request, output, temperature=0.0):
        from worker.backends import SampledFit, Scored

        tokens = len(output.split())
        fit = SampledFit(tokens=tokens, excess=-0.75, variance=2.5) if temperature > 0 else None
        return Scored(token_logprobs=[-0.5] * tokens, end_logprob=-1.25, sampled_fit=fit)


def _validate_frame(digest: str, output: str = "Hello world", temperature: float = 0) -> str:
    from worker import protocol as wire

    return wire.encode(wire.validate_assign(
        job_id="val-1", model="fake-model", model_digest=digest, messages=[{"role": "user", "content": "Say hello."}],
        params={"max_tokens": 16, "temperature": temperature, "top_p": 1, "seed": 7, "stop": []}, output=output))


def test_a_validator_reruns_the_job_and_scores_the_claimed_output():
    backend = _ScoringBackend(pieces=("Hel", "lo"))

    async def script(ws: ServerConnection) -> dict:
        await welcome(ws)
        await ws.send(_validate_frame(backend.digest))
        return await receive(ws)

    async def scenario() -> None:
        done = await run_one_session(backend, script)
        assert done == {"type": "validate.done", "job_id": "val-1", "model_digest": backend.digest,
                        "output": "Hello", "finish_reason": "length", "token_logprobs": [-0.5, -0.5],
                        "end_logprob": -1.25}
        assert backend.params == [{"max_tokens": 16, "temperature": 0, "top_p": 1, "seed": 7, "stop": []}]
        assert protocol.decode_agent_frame(protocol.encode(done)) == done  # what the node accepts

    run(scenario)


def test_a_validator_of_a_sampled_job_also_sends_how_the_claimed_output_fits_its_samples():
    backend = _ScoringBackend(pieces=("Hel", "lo"))

    async def script(ws: ServerConnection) -> dict:
        await welcome(ws)
        await ws.send(_validate_frame(backend.digest, temperature=0.7))
        return await receive(ws)

    async def scenario() -> None:
        done = await run_one_session(backend, script)
        assert done["sampled_fit"] == {"tokens": 2, "excess": -0.75, "variance": 2.5}
        assert protocol.decode_agent_frame(protocol.encode(done)) == done

    run(scenario)


@pytest.mark.parametrize("fit", [{"tokens": 2, "excess": "x", "variance": 1.0}, {"tokens": -1, "excess": 0, "variance": 1},
                                 {"tokens": 2, "excess": 0.0, "variance": -1.0}, [2, 0.0, 1.0],
                                 {"tokens": True, "excess": 0.0, "variance": 1.0}])
def test_the_node_refuses_a_malformed_sampled_fit(fit):
    frame = {"type": "validate.done", "job_id": "val-1", "model_digest": "sha256:" + "0" * 64, "output": "Hi",
             "finish_reason": "stop", "token_logprobs": [-0.5], "end_logprob": None, "sampled_fit": fit}
    with pytest.raises(protocol.ProtocolError, match="sampled_fit"):
        protocol.decode_agent_frame(protocol.encode(frame))


def test_a_validator_whose_run_gives_the_claimed_text_does_not_score_it():
    backend = _ScoringBackend(pieces=("Hel", "lo"))
    scored = []
    backend.score = lambda *args: scored.append(args)  # a rerun that matches needs no scores

    async def script(ws: ServerConnection) -> dict:
        await welcome(ws)
        await ws.send(_validate_frame(backend.digest, output="Hello"))
        return await receive(ws)

    async def scenario() -> None:
        done = await run_one_session(backend, script)
        assert (done["type"], done["output"], done["token_logprobs"], done["end_logprob"]) == \
            ("validate.done", "Hello", [], None)
        assert scored == [] and protocol.decode_agent_frame(protocol.encode(done)) == done

    run(scenario)


def test_a_backend_that_cannot_score_refuses_to_validate():
    backend = FakeBackend()

    async def script(ws: ServerConnection) -> dict:
        await welcome(ws)
        await ws.send(_validate_frame(backend.digest))
        return await receive(ws)

    async def scenario() -> None:
        refused = await run_one_session(backend, script)
        assert (refused["type"], refused["job_id"], refused["code"]) == ("job.error", "val-1", "unsupported")

    run(scenario)
