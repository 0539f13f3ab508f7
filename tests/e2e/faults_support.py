"""Shared parts of the fault tests (tests/e2e/test_faults_*.py): a catalogue entry served over
the `openai` agent backend, the bundled agent started against a mock OpenAI-compatible server
(tests/support/mock_backends.py), and the money checks every fault scenario ends with.

The mock server stands in for llama-server/vLLM only; the agent is the real `python -m worker`
process, the node a real daphne process, the ledger the real PostgreSQL one.
"""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from django.db.models import Sum

from apps.credits.models import Asset, LedgerAccount
from apps.credits.selectors import ledger_invariant_violations
from apps.marketplace.models import Job
from apps.workers.models import CatalogueModel

from .conftest import OUTPUT, ROOT

MOCK_MODEL = "qwen2.5-0.5b-instruct"  # one of MockOpenAI.models
MOCK_DIGEST = "sha256:" + "5e" * 32
PUBLIC_NAME = "qwen-mock"
HELLO = [{"role": "user", "content": "hello"}]


def mock_catalogue() -> CatalogueModel:
    """The public name the tests buy: the mock server's model, with the digest the agents give.
    No tokenizer file: the node estimates usage from the text it relayed (4 bytes a token)."""
    return CatalogueModel.objects.update_or_create(name=PUBLIC_NAME, defaults={
        "served_model": MOCK_MODEL, "digests": [MOCK_DIGEST], "context_length": 4096,
        "tokenizer_path": "", "active": True, "description": "mock OpenAI-compatible backend"})[0]


@contextmanager
def http_agent(node_url: str, token: str, backend_url: str, log_name: str = "agent-http.log"):
    """`python -m worker --backend openai` serving the mock server's model; yields the process.
    Stopped with SIGTERM on exit unless the test already ended it."""
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / log_name, "a")
    agent = subprocess.Popen(
        [sys.executable, "-m", "worker", "--server", node_url, "--token", token, "--backend", "openai",
         "--backend-url", backend_url, "--model", MOCK_MODEL, "--model-digest", MOCK_DIGEST,
         "--embeddings", "none", "--log-level", "INFO"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        log.close()


def usdc_outside_issuers() -> int:
    """USDC held by every account that is not an issuer: a fault may move it, never change it."""
    return LedgerAccount.objects.filter(asset=Asset.USDC, allow_negative=False).aggregate(
        total=Sum("balance"))["total"] or 0


def wait_until(predicate, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def wait_for_jobs_settled(timeout: float = 30.0) -> None:
    """The node settles a job when its relay ends, which may trail the client's last byte."""
    wait_until(lambda: not Job.objects.filter(hold_state=Job.HoldState.HELD).exists(), timeout,
               "settling every job")


def assert_money_sound(usdc_before: int) -> None:
    """After a fault: no job still holds credits or claims to be queued or running, the ledger's
    invariants hold (each hold settled at most once), and no USDC was created or lost."""
    assert not Job.objects.filter(hold_state=Job.HoldState.HELD).exists()
    assert not Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).exists()
    assert ledger_invariant_violations() == []
    assert usdc_outside_issuers() == usdc_before
