"""`python -m worker` as operators and the node's seeding script run it, with the real model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection

from tests.worker.nodestub import NodeStub, frames_until_finished, receive, welcome
from worker import protocol

REPO_ROOT = Path(__file__).resolve().parents[2]


def worker_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_print_model_prints_id_digest_and_path_as_json(backend):
    result = worker_command("--print-model")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["id"] == "gemma-3-270m-q4_k_m"
    assert printed["digest"] == backend.digest
    assert Path(printed["path"]) == backend.path


def test_help_documents_every_option_and_environment_variable():
    result = worker_command("--help")
    assert result.returncode == 0
    for word in ("--server", "--token", "--backend", "--model-path", "--threads", "--name",
                 "--log-level", "--print-model", "PEER_SERVER", "PEER_WORKER_TOKEN",
                 "PEER_THREADS", "PEER_MODEL_PATH", "PEER_MODEL_DIR", "--key-file", "PEER_WORKER_KEY_FILE"):
        assert word in result.stdout


def test_missing_server_or_token_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k not in ("PEER_SERVER", "PEER_WORKER_TOKEN")}
    result = worker_command("--server", "http://127.0.0.1:9", env=env)
    assert result.returncode == 2
    assert "--token" in result.stderr


def test_agent_process_exits_with_status_3_and_a_clear_message_when_the_token_is_rejected(backend):
    async def refuse(ws: ServerConnection) -> None:
        await receive(ws)
        await ws.send(protocol.encode(protocol.error(code="bad_token", message="Unknown token.")))
        await ws.close(code=protocol.CLOSE_BAD_TOKEN)

    async def scenario() -> tuple[int, str, int]:
        async with NodeStub(refuse) as node:
            env = {**os.environ, "PEER_SERVER": node.url, "PEER_WORKER_TOKEN": "wrong"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "--threads", "1", cwd=REPO_ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode, stderr.decode(), node.connections

    code, stderr, connections = asyncio.run(scenario())
    assert code == 3, stderr
    assert "rejected the worker token" in stderr
    assert connections == 1


def test_real_model_job_through_the_agent_streams_what_the_backend_generates(backend, generate):
    from worker.agent import Agent, AgentConfig, hardware_info
    from worker.prompt import format_chat

    messages = [{"role": "user", "content": "List the numbers from 1 to 200, separated by commas."}]
    params = {"max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 11, "stop": []}
    expected = generate(backend, format_chat(messages), params)

    async def script(ws: ServerConnection) -> list[dict]:
        hello = await welcome(ws)
        assert hello["models"][0]["digest"] == backend.digest
        await ws.send(protocol.encode(protocol.job_assign(
            job_id="j", model=backend.model_id, model_digest=backend.digest,
            messages=messages, params=params)))
        return await frames_until_finished(ws, "j")

    async def scenario() -> list[dict]:
        result: asyncio.Future = asyncio.get_running_loop().create_future()

        async def session(ws: ServerConnection) -> None:
            result.set_result(await script(ws))
            await ws.wait_closed()

        async with NodeStub(session) as node:
            agent = Agent(AgentConfig(server=node.url, token="t"), [backend], hardware_info(2))
            task = asyncio.create_task(agent.run())
            frames = await asyncio.wait_for(result, 60)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return frames

    frames = asyncio.run(scenario())
    deltas = [f for f in frames if f["type"] == "job.delta"]
    assert "".join(d["text"] for d in deltas) == expected.text
    assert frames[-1]["finish_reason"] == expected.finish.reason
    assert frames[-1]["usage"]["completion_tokens"] == expected.finish.completion_tokens
