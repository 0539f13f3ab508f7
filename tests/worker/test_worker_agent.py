"""The agent against a stand-in node over a real WebSocket: handshake, jobs, cancel, reconnect."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from typing import Any, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection

import worker
from tests.worker.nodestub import (FakeBackend, NodeStub, assign, frames_until_finished,
                                   receive, refusing_backend, welcome)
from worker import protocol
from worker.backends import Finish, Request
from worker.agent import Agent, AgentConfig, FatalError, agent_url, backoff_delay

HARDWARE = {"cpu": "test cpu", "threads": 2, "ram_gb": 1.0}


def make_agent(url: str, *backends: Any, token: str = "tok-123") -> Agent:
    config = AgentConfig(server=url, token=token, name="test-agent",
                         backoff_base=0.01, backoff_max=0.05)
    return Agent(config, list(backends), HARDWARE, rng=random.Random(0))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_one_session(backend: Any,
                          script: Callable[[ServerConnection], Awaitable[Any]],
                          *more_backends: Any) -> Any:
    """Start an agent, let `script` play the node on its first connection, return its result."""
    result: asyncio.Future = asyncio.get_running_loop().create_future()

    async def session(ws: ServerConnection) -> None:
        try:
            result.set_result(await script(ws))
        except Exception as exc:  # surfaced in the test, not lost in the server's log
            result.set_exception(exc)
        await ws.wait_closed()

    async with NodeStub(session) as node:
        task = asyncio.create_task(make_agent(node.url, backend, *more_backends).run())
        try:
            return await result
        finally:
            await stop(task)


@pytest.mark.parametrize("server, expected", [
    ("http://node.example:8000", "ws://node.example:8000/ws/agent/"),
    ("https://node.example/", "wss://node.example/ws/agent/"),
    ("https://node.example/peer", "wss://node.example/peer/ws/agent/"),
    ("ws://127.0.0.1:9/ws/agent/", "ws://127.0.0.1:9/ws/agent/"),
    ("wss://node.example/ws/agent", "wss://node.example/ws/agent/"),
])
def test_server_url_is_turned_into_the_agent_websocket_url(server, expected):
    assert agent_url(server) == expected


@pytest.mark.parametrize("server", ["ftp://node.example", "node.example:8000", "http://"])
def test_server_url_that_is_not_http_or_ws_is_rejected(server):
    with pytest.raises(ValueError):
        agent_url(server)


def test_backoff_doubles_from_one_second_up_to_thirty_with_jitter():
    rng = random.Random(1)
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (4, 16), (5, 30), (50, 30)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_hello_announces_token_version_model_backend_and_hardware():
    backend = FakeBackend()

    async def scenario() -> None:
        async with NodeStub(lambda ws: receive_into(ws, hellos)) as node:
            task = asyncio.create_task(make_agent(node.url, backend).run())
            hello = await asyncio.wait_for(hellos.get(), 10)
            await stop(task)
            assert node.paths == ["/ws/agent/"]
        assert hello["protocol"] == protocol.PROTOCOL_VERSION
        assert hello["token"] == "tok-123"
        assert hello["agent_version"] == worker.__version__
        assert hello["backends"] == ["fake"]
        assert hello["models"] == [{"id": "fake-model", "digest": backend.digest,
                                    "backend": "fake", "context_length": 128, "kind": "chat",
                                    "validates": False}]  # FakeBackend cannot score answers
        assert hello["hardware"] == HARDWARE
        assert hello["name"] == "test-agent"

    hellos: asyncio.Queue = asyncio.Queue()
    run(scenario)


async def receive_into(ws: ServerConnection, queue: asyncio.Queue) -> None:
    await queue.put(await receive(ws))
    await ws.wait_closed()


def test_job_done_carries_a_signature_over_the_commitment_the_node_can_recompute():
    from worker.commitment import commitment_hash, commitment_inputs, signature_valid
    from worker.prompt import job_prompt

    backend = FakeBackend(pieces=("Hel", "lo"))

    async def script(ws: ServerConnection) -> tuple[dict, list[dict]]:
        hello = await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        return hello, await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        hello, frames = await run_one_session(backend, script)
        done = frames[-1]
        params = {"max_tokens": 16, "temperature": 0, "top_p": 1, "seed": 7, "stop": []}
        # What the node computes from the job it sent and the text it relayed.
        expected = commitment_hash(commitment_inputs(
            model_id="fake-model", model_digest=backend.digest, seed=7, params=params,
            prompt=job_prompt(messages=[{"role": "user", "content": "Say hello."}], prompt=None)[0],
            output="Hello"))
        assert done["commitment"] == expected
        assert signature_valid(public_key=hello["signing_key"], commitment=expected, signature=done["signature"])

    run(scenario)


def test_job_is_accepted_then_streamed_in_order_then_done():
    backend = FakeBackend(pieces=("Hel", "lo", ",", " world"))

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        return await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert [f["type"] for f in frames] == ["job.accepted"] + ["job.delta"] * 4 + ["job.done"]
        deltas = frames[1:-1]
        assert [d["seq"] for d in deltas] == [0, 1, 2, 3]
        assert "".join(d["text"] for d in deltas) == "Hello, world"
        done = frames[-1]
        assert done["finish_reason"] == "length"
        assert done["model_digest"] == backend.digest
        assert done["usage"] == {"completion_tokens": 4}
        assert backend.model_ids == ["fake-model"]
        assert backend.requests == [Request(messages=[{"role": "user", "content": "Say hello."}])]

    run(scenario)


def _unstreamed(job_id: str, digest: str) -> str:
    return protocol.encode(protocol.job_assign(
        job_id=job_id, model="fake-model", model_digest=digest, messages=[{"role": "user", "content": "Say hello."}],
        params={"max_tokens": 16, "temperature": 0, "top_p": 1, "seed": 7, "stop": []}, stream=False))


def test_a_job_nobody_streams_sends_its_first_piece_then_the_rest_in_batches(monkeypatch):
    from worker.commitment import signature_valid

    monkeypatch.setattr(worker.agent, "BATCH_SECONDS", 30.0)  # only the size ends a batch here
    monkeypatch.setattr(worker.agent, "BATCH_CHARS", 25)
    backend = FakeBackend(pieces=("Hel",) + ("0123456789",) * 8)

    async def script(ws: ServerConnection) -> tuple[dict, list[dict]]:
        hello = await welcome(ws)
        await ws.send(_unstreamed("job-1", backend.digest))
        return hello, await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        hello, frames = await run_one_session(backend, script)
        assert [f["type"] for f in frames] == ["job.accepted"] + ["job.delta"] * 4 + ["job.done"]
        deltas = frames[1:-1]
        assert [d["seq"] for d in deltas] == [0, 1, 2, 3]
        # The first piece alone (the node's time to first token), then 3 pieces a batch (30
        # characters reach 25), then what was left when the answer ended.
        assert [d["text"] for d in deltas] == ["Hel", "0123456789" * 3, "0123456789" * 3, "0123456789" * 2]
        done = frames[-1]
        assert done["usage"] == {"completion_tokens": 9}
        assert signature_valid(public_key=hello["signing_key"], commitment=done["commitment"],
                               signature=done["signature"])

    run(scenario)


class _PausingBackend(FakeBackend):
    """Two pieces at once, then nothing until `resume` is set (at most 10 s), then a third."""

    def __init__(self) -> None:
        super().__init__(pieces=("a", "b", "c"))
        self.resume = threading.Event()

    def generate(self, model_id, request, params, cancel):
        yield "a"
        yield "b"
        self.resume.wait(10)
        yield "c"
        yield Finish("length", 3)


def test_a_batch_goes_out_once_it_is_batch_seconds_old_while_the_model_pauses(monkeypatch):
    monkeypatch.setattr(worker.agent, "BATCH_SECONDS", 0.2)
    backend = _PausingBackend()

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(_unstreamed("job-1", backend.digest))
        frames = [await receive(ws), await receive(ws), await receive(ws)]  # accepted, "a", "b"
        backend.resume.set()  # only now: "b" came on its own, by the batch's clock
        return frames + await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert [(f["type"], f.get("text")) for f in frames] == [
            ("job.accepted", None), ("job.delta", "a"), ("job.delta", "b"), ("job.delta", "c"), ("job.done", None)]

    run(scenario)


def test_a_raw_prompt_job_hands_the_backend_the_prompt_as_given():
    backend = FakeBackend(pieces=("4",))

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(protocol.encode(protocol.job_assign(
            job_id="job-raw", model="fake-model", model_digest=backend.digest, prompt="2 + 2 =",
            params={"max_tokens": 4, "temperature": 0, "stop": ["\n"]})))
        return await frames_until_finished(ws, "job-raw")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert frames[-1]["type"] == "job.done"
        assert backend.requests == [Request(prompt="2 + 2 =")]
        assert backend.params[0]["stop"] == ["\n"]

    run(scenario)


def test_a_chat_job_hands_the_backend_the_messages_and_the_callers_params_unchanged():
    # Formatting (and its stop sequences) is the backend's business: builtin formats for its
    # base model, ollama and openai servers apply the model's own chat template.
    backend = FakeBackend(pieces=("Hi",))

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(assign("job-chat", backend.digest, stop=["END"]))
        return await frames_until_finished(ws, "job-chat")

    async def scenario() -> None:
        await run_one_session(backend, script)
        assert backend.requests[0].messages == [{"role": "user", "content": "Say hello."}]
        assert backend.params[0]["stop"] == ["END"]

    run(scenario)


def test_job_assigned_while_busy_is_refused_as_busy():
    backend = FakeBackend(pieces=("a",) * 20, delay=0.02)

    async def script(ws: ServerConnection) -> tuple[list[dict], list[dict]]:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        assert (await receive(ws))["type"] == "job.accepted"
        await ws.send(assign("job-2", backend.digest))
        second = await frames_until_finished(ws, "job-2")
        return second, await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        second, first = await run_one_session(backend, script)
        assert [(f["type"], f.get("code")) for f in second] == [("job.error", "busy")]
        assert first[-1]["type"] == "job.done" and first[-1]["finish_reason"] == "length"

    run(scenario)


def test_cancel_stops_generation_and_reports_cancelled():
    backend = FakeBackend(pieces=("tick ",) * 500, delay=0.01)

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        assert (await receive(ws))["type"] == "job.accepted"
        assert (await receive(ws))["type"] == "job.delta"
        await ws.send(protocol.encode(protocol.job_cancel(job_id="job-1", reason="client left")))
        return await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert frames[-1]["type"] == "job.done"
        assert frames[-1]["finish_reason"] == "cancelled"
        assert len(frames) < 100
        assert backend.cancelled.is_set()

    run(scenario)


def test_job_for_a_model_the_worker_does_not_serve_is_refused():
    backend = FakeBackend()

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(assign("job-1", "sha256:" + "00" * 32))
        return await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert [(f["type"], f["code"]) for f in frames] == [("job.error", "model_unavailable")]
        assert backend.requests == []

    run(scenario)


def test_backend_refusal_is_reported_as_job_error_with_its_code():
    backend = refusing_backend("context_length_exceeded")

    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        return await frames_until_finished(ws, "job-1")

    async def scenario() -> None:
        frames = await run_one_session(backend, script)
        assert [f["type"] for f in frames] == ["job.accepted", "job.error"]
        assert frames[-1]["code"] == "context_length_exceeded"

    run(scenario)


def test_unexpected_backend_failure_is_reported_and_the_agent_keeps_serving():
    backend = FakeBackend(error=RuntimeError("boom"))

    async def script(ws: ServerConnection) -> tuple[list[dict], list[dict]]:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        failed = await frames_until_finished(ws, "job-1")
        backend.error = None
        await ws.send(assign("job-2", backend.digest))
        return failed, await frames_until_finished(ws, "job-2")

    async def scenario() -> None:
        failed, served = await run_one_session(backend, script)
        assert failed[-1]["type"] == "job.error" and failed[-1]["code"] == "backend_error"
        assert served[-1]["type"] == "job.done"

    run(scenario)


def test_heartbeats_are_sent_at_the_interval_the_node_asks_for():
    async def script(ws: ServerConnection) -> list[dict]:
        await welcome(ws, heartbeat_interval=0.05)
        await ws.send(protocol.encode({"type": "heartbeat"}))  # the node's own: ignored
        return [await receive(ws, skip_heartbeats=False) for _ in range(3)]

    async def scenario() -> None:
        frames = await run_one_session(FakeBackend(), script)
        assert [f["type"] for f in frames] == ["heartbeat"] * 3

    run(scenario)


@pytest.mark.parametrize("close_code", [protocol.CLOSE_BAD_TOKEN, protocol.CLOSE_REVOKED])
def test_rejected_token_ends_the_agent_without_retrying(close_code):
    async def refuse(ws: ServerConnection) -> None:
        await receive(ws)
        await ws.send(protocol.encode(protocol.error(code="bad_token", message="Unknown token.")))
        await ws.close(code=close_code, reason="token refused")

    async def scenario() -> None:
        async with NodeStub(refuse) as node:
            with pytest.raises(FatalError) as fatal:
                await make_agent(node.url, FakeBackend(), token="wrong").run()
            await asyncio.sleep(0.2)  # several backoff periods: any retry would show here
            assert node.connections == 1
        assert fatal.value.close_code == close_code

    run(scenario)


def test_token_revoked_mid_session_ends_the_agent():
    async def revoke(ws: ServerConnection) -> None:
        await welcome(ws)
        await asyncio.sleep(0.05)
        await ws.close(code=protocol.CLOSE_REVOKED, reason="revoked")

    async def scenario() -> None:
        async with NodeStub(revoke) as node:
            with pytest.raises(FatalError, match="revoked"):
                await make_agent(node.url, FakeBackend()).run()
            assert node.connections == 1

    run(scenario)


def test_agent_reconnects_after_the_server_drops_the_connection():
    hellos: asyncio.Queue = asyncio.Queue()

    async def drop(ws: ServerConnection) -> None:
        await hellos.put(await welcome(ws))
        await ws.close(code=1011, reason="node restarting")

    async def stay(ws: ServerConnection) -> None:
        await hellos.put(await welcome(ws))
        await ws.wait_closed()

    async def scenario() -> None:
        async with NodeStub(drop, drop, stay) as node:
            task = asyncio.create_task(make_agent(node.url, FakeBackend()).run())
            received = [await asyncio.wait_for(hellos.get(), 10) for _ in range(3)]
            await stop(task)
            assert node.connections == 3
        assert all(h["type"] == "hello" for h in received)

    run(scenario)


def test_connection_lost_mid_job_stops_generation_and_the_next_link_serves_again():
    backend = FakeBackend(pieces=("tick ",) * 500, delay=0.01)
    done: asyncio.Future = None  # set in scenario

    async def drop_mid_job(ws: ServerConnection) -> None:
        await welcome(ws)
        await ws.send(assign("job-1", backend.digest))
        await receive(ws)
        await receive(ws)  # a delta: generation is running
        await ws.close(code=1011)

    async def serve_again(ws: ServerConnection) -> None:
        await welcome(ws)
        backend.pieces = ("ok",)
        await ws.send(assign("job-2", backend.digest))
        done.set_result(await frames_until_finished(ws, "job-2"))
        await ws.wait_closed()

    async def scenario() -> None:
        nonlocal done
        done = asyncio.get_running_loop().create_future()
        async with NodeStub(drop_mid_job, serve_again) as node:
            task = asyncio.create_task(make_agent(node.url, backend).run())
            frames = await done
            await stop(task)
        assert await asyncio.to_thread(backend.cancelled.wait, 5)
        assert frames[-1]["type"] == "job.done" and frames[-1]["finish_reason"] == "length"

    run(scenario)


def test_agent_keeps_retrying_until_the_node_comes_up():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hellos: asyncio.Queue = asyncio.Queue()

    async def stay(ws: ServerConnection) -> None:
        await hellos.put(await welcome(ws))
        await ws.wait_closed()

    async def scenario() -> None:
        task = asyncio.create_task(make_agent(f"http://127.0.0.1:{port}", FakeBackend()).run())
        await asyncio.sleep(0.3)  # connections refused meanwhile, retried with backoff
        assert not task.done()
        async with NodeStub(stay, port=port):
            hello = await asyncio.wait_for(hellos.get(), 10)
            await stop(task)
        assert hello["type"] == "hello"

    run(scenario)
