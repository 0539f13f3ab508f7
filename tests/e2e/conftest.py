"""A real node (daphne in a subprocess, on the test database and Redis) and agents for it.

`agent_process` is the bundled agent (`python -m worker`) with the real built-in model;
`ScriptedAgent` is a test double speaking the same wire protocol over a real WebSocket, for
faults a real agent does not commit on purpose (garbage, dropping mid-stream, refusing).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from apps.accounts.services import api_key_issue
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker import protocol
from worker.commitment import commitment_hash, commitment_inputs, commitment_sign, public_key_text
from worker.embedding_commitment import chunk_commitment
from worker.prompt import job_prompt

ROOT = Path(__file__).resolve().parents[2]
# PEER_TEST_OUTPUT: another folder for logs and screenshots, so that two runs side by side do
# not write over each other's node.log.
OUTPUT = Path(os.environ.get("PEER_TEST_OUTPUT") or ROOT / "test-output")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def running_node(log_name: str = "node.log", **extra_env):
    """daphne serving the node on the test database; yields its base URL."""
    with node_process(log_name, **extra_env) as (_, url):
        yield url


@contextmanager
def node_process(log_name: str = "node.log", **extra_env):
    """As running_node, yielding (daphne's process, base URL): for tests that kill a node."""
    db = settings.DATABASES["default"]
    port = _free_port()
    # extra_env may override these test defaults (e.g. PEER_QUEUE_TIMEOUT, REDIS_URL). The job
    # timeout is generous: on a loaded 2-core machine the built-in model can drop to 3 tok/s.
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
           "PEER_QUEUE_TIMEOUT": "4", "PEER_JOB_TIMEOUT": "180", "PEER_LOG_LEVEL": "INFO", **extra_env}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = open(OUTPUT / log_name, "w")
    # The Procfile's listen backlog (daphne's default is 50): a burst of clients is accepted, not reset.
    server = subprocess.Popen([sys.executable, "-m", "daphne", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
                               "peercycles.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, 30)
        yield server, f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def node_url(django_db_setup, django_db_blocker):
    with running_node() as url:
        yield url


@pytest.fixture
def catalogue(transactional_db):
    model_id, digest, path = catalogue_seed_builtin()
    return {"id": model_id, "digest": digest, "path": path}


@pytest.fixture
def alice_key(alice):
    credits_grant(user=alice, credits=1000)
    return api_key_issue(user=alice, name="test")[1]


@pytest.fixture
def bob_worker(bob):
    worker, token = worker_register(operator=bob, name="bob-cpu-1", tiers=["open", "verified"])
    return bond(worker), token


def wait_for_status(worker_id, status, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Worker.objects.filter(id=worker_id, status=status).exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {worker_id} never became {status}")


@contextmanager
def builtin_agent_running(node_url: str, worker, token: str, model_path: str, *extra: str, log_name="agent.log"):
    """The bundled agent, as an operator would start it, serving the built-in model, until the
    block ends; `extra`: more command-line arguments."""
    log = open(OUTPUT / log_name, "a")
    agent = subprocess.Popen([sys.executable, "-m", "worker", "--server", node_url, "--token", token,
                              "--model-path", model_path, *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_status(worker.id, Worker.Status.IDLE)
        yield worker
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        log.close()


@pytest.fixture
def agent_process(node_url, catalogue, bob_worker):
    worker, token = bob_worker
    with builtin_agent_running(node_url, worker, token, catalogue["path"], "--threads", "2"):
        yield worker


class SigningLink:
    """A scripted agent's socket: records the deltas it sends and signs its job.done frames, and
    its embed.done frames over the chunk last assigned (`jobs` holds each job's last assignment)."""

    def __init__(self, ws, key):
        self.ws, self.key = ws, key
        self.jobs: dict[str, dict] = {}
        self.texts: dict[str, list[str]] = {}

    async def send(self, text):
        try:
            frame = json.loads(text)
        except ValueError:  # a script sending garbage on purpose
            return await self.ws.send(text)
        if not isinstance(frame, dict):
            return await self.ws.send(text)
        job = self.jobs.get(frame.get("job_id"))
        if frame.get("type") == "job.delta":
            self.texts.setdefault(frame["job_id"], []).append(frame.get("text", ""))
        elif frame.get("type") == "job.done" and "signature" not in frame and job is not None:
            commitment = commitment_hash(commitment_inputs(
                model_id=job["model"], model_digest=job["model_digest"], seed=job["params"].get("seed"),
                params=job["params"], prompt=job_prompt(messages=job["messages"], prompt=job["prompt"])[0],
                output="".join(self.texts.get(frame["job_id"], []))))
            frame.update(commitment=commitment, signature=commitment_sign(self.key, commitment))
            text = json.dumps(frame)
        elif frame.get("type") == "embed.done" and "signature" not in frame and job is not None:
            _, commitment = chunk_commitment(model_id=job["model"], model_digest=frame["model_digest"],
                                             texts=job["input"], vectors=frame["data"])
            frame.update(commitment=commitment, signature=commitment_sign(self.key, commitment))
            text = json.dumps(frame)
        await self.ws.send(text)

    def __getattr__(self, name):
        return getattr(self.ws, name)


class ScriptedAgent:
    """Speaks the agent protocol from a thread; `on_job(ws, frame)` decides what it does. Like a
    real agent it signs each job.done it sends (unless the script put a signature in it) over
    the commitment to what it streamed for that job."""

    def __init__(self, node_url: str, token: str, model: dict, on_job, validates: bool = False):
        self.url = node_url.replace("http://", "ws://") + "/ws/agent/"
        self.token, self.model, self.on_job = token, model, on_job
        self.validates = validates  # announced in its hello: it gets validate.assign (to on_job) too
        self.received: list[dict] = []
        self.closed_with = None
        self.key = Ed25519PrivateKey.generate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self):
        async with websockets.connect(self.url) as ws:
            await ws.send(json.dumps(protocol.hello(
                token=self.token, agent_version="scripted", backends=["builtin"], hardware={},
                models=[{"id": self.model["id"], "digest": self.model["digest"], "backend": "builtin",
                         "validates": self.validates}],
                signing_key=public_key_text(self.key))))
            link = SigningLink(ws, self.key)
            while not self._stop.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.2))
                except TimeoutError:
                    continue
                except websockets.ConnectionClosed as closed:
                    self.closed_with = closed.rcvd.code if closed.rcvd else None
                    return
                self.received.append(frame)
                if frame["type"] in ("job.assign", "validate.assign"):
                    link.jobs[frame["job_id"]] = frame
                    if await self.on_job(link, frame) == "hang up":
                        return
