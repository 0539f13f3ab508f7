"""Scale-out: two node processes (two daphne servers) on one PostgreSQL database and one Redis.

An agent's WebSocket lands on one node and a client's HTTP request on another, as behind a load
balancer with no sticky sessions: the job must run, stream and settle exactly once wherever each
end is connected. The reapers may run on both nodes at once without settling anything twice.
"""

import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import openai
import pytest
from django.utils import timezone

from apps.credits.models import LedgerAccount
from apps.credits.pricing import split_capture
from apps.credits.selectors import balance_get, held_get, transactions_for_reference
from apps.marketplace.models import Job
from apps.marketplace.services import jobs_reap_stale
from apps.workers.models import Worker
from apps.workers.services import worker_claim, worker_register
from apps.workers.tasks import workers_reap_silent_task
from tests.conftest import bond
from tests.support.mock_backends import MockOpenAI
from tests.support.races import run_at_once
from tests.support.tcp_balancer import TcpBalancer

from .conftest import OUTPUT, ROOT, node_process, running_node, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


@pytest.fixture(scope="module")
def node_b(django_db_setup, django_db_blocker):
    """A second node process beside `node_url` (node A): same database, same Redis."""
    with running_node("node-b.log") as url:
        yield url


@contextmanager
def agent_on(server: str, token: str, *options: str):
    """A real `python -m worker` connected to `server`; yields the process."""
    log = open(OUTPUT / "agent-scale-out.log", "a")
    agent = subprocess.Popen([sys.executable, "-m", "worker", "--server", server, "--token", token,
                              "--embeddings", "none", *options], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.terminate()
        agent.wait(timeout=10)
        log.close()


def builtin_agent_on(server: str, token: str, catalogue: dict):
    return agent_on(server, token, "--threads", "2", "--model-path", catalogue["path"])


def _client(url, key):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _assert_settled_once(job: Job, worker_id):
    job.refresh_from_db()
    assert (job.status, job.hold_state, job.worker_id) == ("completed", "captured", worker_id)
    hold, capture = transactions_for_reference(reference=f"job:{job.id}")  # exactly two, no more
    assert (hold.kind, capture.kind) == ("hold", "capture")
    amounts = {entry.account.code: entry.amount for entry in capture.entries.all()}
    assert amounts[f"worker:{worker_id}:USDC"] == split_capture(job.charged_amount).worker


def _worker_earned(worker_id) -> int:
    account = LedgerAccount.objects.filter(code=f"worker:{worker_id}:USDC").first()
    return account.balance if account else 0


@pytest.mark.parametrize("agent_side, client_side", [("a", "b"), ("b", "a")])
def test_an_agent_on_one_node_serves_a_client_of_another_streamed_and_not_settled_once(
        node_url, node_b, catalogue, alice, alice_key, bob_worker, agent_side, client_side):
    nodes = {"a": node_url, "b": node_b}
    worker, token = bob_worker
    before = balance_get(user=alice)
    with builtin_agent_on(nodes[agent_side], token, catalogue):
        wait_for_status(worker.id, Worker.Status.IDLE)
        client = _client(nodes[client_side], alice_key)
        plain = client.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, temperature=0,
                                               max_tokens=24)
        chunks = list(client.chat.completions.create(
            model="gemma-3-270m", messages=MESSAGES, temperature=0, max_tokens=24, stream=True,
            stream_options={"include_usage": True}))
    text = plain.choices[0].message.content
    assert text.strip() and plain.model_extra["peer"]["worker_id"] == str(worker.id)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    jobs = list(Job.objects.filter(user=alice))
    assert len(jobs) == 2
    for job in jobs:
        _assert_settled_once(job, worker.id)
    charged = sum(job.charged_amount for job in jobs)
    assert balance_get(user=alice) == before - charged and held_get(user=alice) == 0
    assert _worker_earned(worker.id) == sum(split_capture(job.charged_amount).worker for job in jobs)
    assert Worker.objects.get(id=worker.id).status == Worker.Status.OFFLINE  # the agent stopped


@pytest.mark.parametrize("client_side", ["a", "b"])
def test_a_worker_killed_before_its_first_token_fails_over_to_an_agent_on_the_other_node(
        node_url, node_b, catalogue, alice, alice_key, bob, bob_worker, client_side):
    """The first worker's agent is a real process on node A whose inference server has not
    produced a token yet when the agent is killed; the job moves to the agent on node B."""
    survivor, survivor_token = bob_worker
    doomed, doomed_token = worker_register(operator=bob, name="bob-doomed", tiers=["verified"])
    bond(doomed)
    before = balance_get(user=alice)
    stalled = MockOpenAI(tokens_per_second=0.02, models=[{"name": catalogue["id"]}]).start()  # 50 s a token
    result = {}

    def ask():
        try:
            stream = _client({"a": node_url, "b": node_b}[client_side], alice_key).chat.completions.create(
                model="gemma-3-270m", messages=MESSAGES, temperature=0, max_tokens=16, stream=True,
                extra_body={"peer_route": {"order": ["bob-doomed"]}})
            result["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    try:
        with agent_on(node_url, doomed_token, "--backend", "openai", "--backend-url", stalled.url,
                      "--model-digest", f"{catalogue['id']}={catalogue['digest']}") as doomed_agent, \
                builtin_agent_on(node_b, survivor_token, catalogue):
            wait_for_status(doomed.id, Worker.Status.IDLE)
            wait_for_status(survivor.id, Worker.Status.IDLE)
            client = threading.Thread(target=ask)
            client.start()
            deadline = time.monotonic() + 30
            while not stalled.bodies("/v1/chat/completions") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stalled.bodies("/v1/chat/completions"), "the doomed agent never got the job"
            doomed_agent.send_signal(signal.SIGKILL)
            client.join(timeout=90)
    finally:
        stalled.stop()
    assert "error" not in result, result.get("error")
    assert result["text"].strip()
    job = Job.objects.get(user=alice)
    _assert_settled_once(job, survivor.id)
    assert balance_get(user=alice) == before - job.charged_amount and held_get(user=alice) == 0
    assert _worker_earned(doomed.id) == 0
    assert Worker.objects.get(id=doomed.id).status == Worker.Status.OFFLINE


@pytest.mark.parametrize("stop", ["killed", "stopped"])
def test_when_a_node_goes_away_mid_job_the_job_fails_over_to_a_worker_on_another_node(
        node_b, catalogue, alice, alice_key, bob, bob_worker, stop):
    """Node A goes while its agent holds a job whose client is on node B.

    killed: SIGKILL, so none of A's disconnect handlers run; the agent reconnects through the
    balancer, to node B, and its new link tells the job its worker is gone.
    stopped: SIGTERM, as a deploy or a scale-in does; the balancer has no other node for the
    agent. A tries to offline the worker and tell the job before it exits, but daphne's shutdown
    does not always let it (when the link closes before daphne cancels the application); then
    the relay on B sees the worker silent past PEER_WORKER_SILENCE_LIMIT and moves the job on.
    Either way the job moves on, not at its timeout."""
    survivor, survivor_token = bob_worker
    stranded, stranded_token = worker_register(operator=bob, name="bob-stranded", tiers=["verified"])
    bond(stranded)
    stalled = MockOpenAI(tokens_per_second=0.02, models=[{"name": catalogue["id"]}]).start()
    result = {}

    def ask():
        try:
            stream = _client(node_b, alice_key).chat.completions.create(
                model="gemma-3-270m", messages=MESSAGES, temperature=0, max_tokens=16, stream=True,
                extra_body={"peer_route": {"order": ["bob-stranded"]}})
            result["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    try:
        with node_process(f"node-a-{stop}.log") as (node_a, node_a_url), \
                TcpBalancer([node_a_url, node_b] if stop == "killed" else [node_a_url]) as balancer, \
                agent_on(balancer.url, stranded_token, "--backend", "openai", "--backend-url", stalled.url,
                         "--model-digest", f"{catalogue['id']}={catalogue['digest']}"), \
                builtin_agent_on(node_b, survivor_token, catalogue):
            wait_for_status(stranded.id, Worker.Status.IDLE)
            wait_for_status(survivor.id, Worker.Status.IDLE)
            client = threading.Thread(target=ask)
            client.start()
            deadline = time.monotonic() + 30
            while not stalled.bodies("/v1/chat/completions") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stalled.bodies("/v1/chat/completions"), "the stranded agent never got the job"
            node_a.send_signal(signal.SIGKILL if stop == "killed" else signal.SIGTERM)
            node_a.wait(timeout=30)
            stranded_after_exit = Worker.objects.get(id=stranded.id).status
            client.join(timeout=90)
            backends = list(balancer.connections)
    finally:
        stalled.stop()
    assert "error" not in result, result.get("error")
    assert result["text"].strip()
    if stop == "killed":
        assert [port for _, port in backends][-1] == int(node_b.rsplit(":", 1)[1])  # came back via B
    else:  # offline at once, or still claimed by the dead link (never idle: it would get jobs)
        assert stranded_after_exit in (Worker.Status.OFFLINE, Worker.Status.BUSY)
    job = Job.objects.get(user=alice)
    _assert_settled_once(job, survivor.id)
    assert _worker_earned(stranded.id) == 0 and held_get(user=alice) == 0


def test_a_node_stopped_mid_stream_settles_its_job_and_frees_the_worker_on_the_other_node(
        node_b, catalogue, alice, alice_key, bob_worker):
    """A deploy stops the client's node (SIGTERM) while it relays a stream from an agent on
    node B: the stream ends, the job is settled before the process exits (the tokens sent are
    charged, the rest released) and the worker is told to stop, so it is free again."""
    worker, token = bob_worker
    slow = MockOpenAI(tokens_per_second=4, models=[{"name": catalogue["id"]}]).start()
    received = []
    try:
        with node_process("node-c-stopped.log") as (node_c, node_c_url), \
                agent_on(node_b, token, "--backend", "openai", "--backend-url", slow.url,
                         "--model-digest", f"{catalogue['id']}={catalogue['digest']}"):
            wait_for_status(worker.id, Worker.Status.IDLE)
            stream = _client(node_c_url, alice_key).chat.completions.create(
                model="gemma-3-270m", messages=MESSAGES, max_tokens=64, stream=True)
            with pytest.raises(openai.APIError):  # the stream is cut short with the node
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
                    if sum(1 for text in received if text) == 2:
                        node_c.send_signal(signal.SIGTERM)
            node_c.wait(timeout=30)
            job = Job.objects.get(user=alice)
            assert job.hold_state != "held"  # settled by the stopping node, not left to the reaper
            wait_for_status(worker.id, Worker.Status.IDLE, timeout=30)
            # The cancel reached the agent, which closed its backend stream (the mock sees it
            # when its next token cannot be written).
            deadline = time.monotonic() + 15
            while slow.disconnects < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        slow.stop()
    assert slow.disconnects == 1
    assert (job.status, job.finish_reason) == ("completed", "cancelled")
    assert 0 < job.charged_amount < job.hold_amount and held_get(user=alice) == 0
    assert "".join(received).startswith(job.output_text[:len("".join(received))])


def test_reapers_running_on_two_nodes_at_once_refund_each_job_once(alice, bob, catalogue, settings):
    """Each node's Celery may run the same periodic reaper at the same moment (two beats by
    mistake, or a task delivered twice): every stale job is still refunded exactly once."""
    from apps.credits.services import credits_grant
    from apps.marketplace.services import job_create
    from apps.workers.models import CatalogueModel
    from tests.marketplace.test_reapers import _chat

    credits_grant(user=alice, credits=500)
    before = balance_get(user=alice)
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    stale = [job_create(user=alice, chat=_chat(), entry=entry) for _ in range(6)]
    silent_jobs = []
    for n in range(3):
        worker, _ = worker_register(operator=bob, name=f"silent-{n}", tiers=["verified"])
        Worker.objects.filter(id=worker.id).update(
            status="idle", channel_name=f"specific.gone!{n}",
            last_seen_at=timezone.now() - timezone.timedelta(seconds=settings.PEER_WORKER_SILENCE_LIMIT + 5))
        job = job_create(user=alice, chat=_chat(), entry=entry)
        assert worker_claim(worker_id=worker.id, job_id=job.id)
        silent_jobs.append(job)
    # All past their deadline: the silent workers' jobs are raced by both reapers.
    Job.objects.update(deadline_at=timezone.now() - timezone.timedelta(seconds=1))

    outcomes = run_at_once(lambda i: jobs_reap_stale() if i % 2 == 0 else workers_reap_silent_task.apply().get(), 4)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for job in stale + silent_jobs:
        job.refresh_from_db()
        assert (job.status, job.hold_state) == ("failed", "released")
        hold, release = transactions_for_reference(reference=f"job:{job.id}")  # exactly two, no more
        assert (hold.kind, release.kind) == ("hold", "refund")
    assert balance_get(user=alice) == before and held_get(user=alice) == 0
    assert not Worker.objects.exclude(status="offline").filter(name__startswith="silent-").exists()
