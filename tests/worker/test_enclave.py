"""The enclave runtime: sealed requests in, sealed and signed answers out, plaintext never outside.

Runtime tests use a stand-in backend in this process; process tests start the real
`python -m worker.enclave` with the builtin model and read it only through EnclaveProcess, as the
agent does, recording every line the host reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from client import sealing
from client.answer_stream import AnswerOpener
from client.attestation.simulated import SimulatedPolicy, verify_simulated
from client.binding import fresh_nonce
from client.proof import answer_signature_ok
from worker.backends import BackendError, Finish, ModelInfo, Request
from worker.enclave.host import EnclaveProcess, EnclaveStartError
from worker.enclave.runtime import EnclaveError, EnclaveRuntime
from worker.measurement import REPO_ROOT, code_measurement
from worker.prompt import format_chat

DIGEST = "sha256:" + "ab" * 32
SECRET = "the-secret-plum-42"


class FakeChatBackend:
    """Yields `pieces` then a Finish, recording what it was asked; stops when cancelled."""

    name = "fake"

    def __init__(self, pieces: list[str], *, tokens_per_text: int | None = None,
                 error: BackendError | None = None) -> None:
        self.models = [ModelInfo("fake-1", DIGEST, "fake", 2048)]
        self.pieces = pieces
        self.error = error
        self.calls: list[tuple[str, Request, dict[str, Any]]] = []
        if tokens_per_text is not None:
            self.count_tokens = lambda text: tokens_per_text

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Any]:
        self.calls.append((model_id, request, params))
        if self.error is not None:
            raise self.error
        sent = 0
        for piece in self.pieces:
            if cancel.is_set():
                yield Finish("cancelled", sent)
                return
            yield piece
            sent += 1
        yield Finish("stop", sent)


def chat_body(content: str = f"Tell me about {SECRET}.", **extra: Any) -> bytes:
    return json.dumps({"model": "fake", "messages": [{"role": "user", "content": content}],
                       **extra}).encode("utf-8")


def sealed_for(enclave_key: str, body: bytes, *, info: bytes = sealing.REQUEST_INFO) -> tuple[Any, dict]:
    """(the client's reply private key, the job's `sealed` field)."""
    reply_private, reply_key = sealing.keypair()
    return reply_private, {"request": sealing.seal(enclave_key, body, info=info),
                           "reply_key": reply_key}


def run_all(runtime: EnclaveRuntime, sealed: dict, params: dict | None = None,
            cancel: threading.Event | None = None) -> list[dict]:
    return list(runtime.run("job-1", DIGEST, sealed, params or {"max_tokens": 16},
                            cancel or threading.Event()))


def opened_text(reply_private: Any, messages: list[dict]) -> str:
    chunks = [message["sealed"] for message in messages if message["op"] == "chunk"]
    opener = AnswerOpener(reply_private)
    return b"".join(opener.open_piece(chunk) for chunk in chunks).decode("utf-8")


@pytest.fixture
def backend() -> FakeChatBackend:
    return FakeChatBackend(["Plums ", "are ", "purple."])


@pytest.fixture
def runtime(backend: FakeChatBackend) -> EnclaveRuntime:
    return EnclaveRuntime([backend], code_measurement="sha256:" + "cd" * 32)


# --- the runtime ------------------------------------------------------------------------------

def test_ready_announces_keys_measurement_and_confidential_models(runtime):
    ready = runtime.ready_message()
    assert ready["op"] == "ready" and ready["kind"] == "simulated"
    assert ready["enclave_key"] == runtime.enclave.public_key
    assert ready["signing_key"] == runtime.enclave.signing_key
    assert ready["code_measurement"] == "sha256:" + "cd" * 32
    assert ready["models"] == [{"id": "fake-1", "digest": DIGEST, "backend": "fake",
                                "context_length": 2048, "kind": "chat", "confidential": True}]


def test_a_sealed_request_is_answered_in_sealed_chunks_that_open_in_order(runtime):
    reply_private, sealed = sealed_for(runtime.ready_message()["enclave_key"], chat_body())
    messages = run_all(runtime, sealed)
    assert [m["op"] for m in messages] == ["chunk", "chunk", "chunk", "done"]
    assert [m["seq"] for m in messages[:-1]] == [0, 1, 2]
    assert all(m["job_id"] == "job-1" for m in messages)
    assert opened_text(reply_private, messages) == "Plums are purple."
    assert messages[-1]["finish_reason"] == "stop"
    assert messages[-1]["usage"]["completion_tokens"] == 3


def test_the_signature_covers_the_exact_request_bytes_and_the_answer(runtime):
    body = chat_body()
    reply_private, sealed = sealed_for(runtime.enclave.public_key, body)
    messages = run_all(runtime, sealed)
    signature, answer = messages[-1]["enclave_signature"], opened_text(reply_private, messages)
    key = runtime.ready_message()["signing_key"]
    assert answer_signature_ok(signing_key=key, signature=signature, request_body=body,
                               response_text=answer)
    other_body = body[:-1] + b" "  # one byte different
    assert not answer_signature_ok(signing_key=key, signature=signature,
                                   request_body=other_body, response_text=answer)
    assert not answer_signature_ok(signing_key=key, signature=signature, request_body=body,
                                   response_text=answer[:-1] + "!")


def test_prompt_tokens_come_from_the_backend_count_when_it_has_one():
    counting = EnclaveRuntime([FakeChatBackend(["x"], tokens_per_text=37)],
                              code_measurement="sha256:" + "cd" * 32)
    _, sealed = sealed_for(counting.enclave.public_key, chat_body())
    assert run_all(counting, sealed)[-1]["usage"]["prompt_tokens"] == 37


def test_prompt_tokens_are_estimated_from_bytes_without_a_backend_count(runtime):
    _, sealed = sealed_for(runtime.enclave.public_key, chat_body("héllo"))
    prompt = format_chat([{"role": "user", "content": "héllo"}])
    usage = run_all(runtime, sealed)[-1]["usage"]
    assert usage["prompt_tokens"] == len(prompt.encode("utf-8")) // 4 + 1


@pytest.mark.parametrize("sealed_max, clear_max, expected", [
    (5, 16, 5), (64, 16, 16), (None, 16, 16), (9, None, 9)])
def test_max_tokens_is_the_smaller_of_the_sealed_and_the_clear_one(runtime, backend, sealed_max,
                                                                   clear_max, expected):
    body = chat_body(max_tokens=sealed_max) if sealed_max else chat_body()
    _, sealed = sealed_for(runtime.enclave.public_key, body)
    run_all(runtime, sealed, {"max_tokens": clear_max})
    assert backend.calls[-1][2]["max_tokens"] == expected


def test_max_completion_tokens_counts_as_max_tokens(runtime, backend):
    _, sealed = sealed_for(runtime.enclave.public_key, chat_body(max_completion_tokens=3))
    run_all(runtime, sealed, {"max_tokens": 16})
    assert backend.calls[-1][2]["max_tokens"] == 3


def test_the_sealed_sampling_parameters_reach_the_backend(runtime, backend):
    body = chat_body(stop=["\n\n", "END"], temperature=0.3, top_p=0.9, seed=7)
    _, sealed = sealed_for(runtime.enclave.public_key, body)
    run_all(runtime, sealed, {"max_tokens": 16, "seed": 99})
    model_id, request, params = backend.calls[-1]
    assert model_id == "fake-1"
    assert request.messages == [{"role": "user", "content": f"Tell me about {SECRET}."}]
    assert params == {"max_tokens": 16, "temperature": 0.3, "top_p": 0.9, "seed": 7,
                      "stop": ["\n\n", "END"]}


def test_without_sealed_sampling_the_defaults_and_the_clear_seed_apply(runtime, backend):
    _, sealed = sealed_for(runtime.enclave.public_key, chat_body())
    run_all(runtime, sealed, {"max_tokens": 16, "seed": 99})
    assert backend.calls[-1][2] == {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0,
                                    "seed": 99, "stop": []}


def _tampered(envelope: dict) -> dict:
    raw = bytearray(base64.b64decode(envelope["ciphertext"]))
    raw[0] ^= 1
    return {**envelope, "ciphertext": base64.b64encode(bytes(raw)).decode("ascii")}


BAD_MESSAGES = [
    b"not json " + SECRET.encode(),
    json.dumps([SECRET]).encode(),
    json.dumps({"messages": []}).encode(),
    json.dumps({"messages": [{"role": "wizard", "content": SECRET}]}).encode(),
    json.dumps({"messages": [{"role": "user", "content": 42}], "note": SECRET}).encode(),
    json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                            "image_url": SECRET}]}]}).encode(),
    chat_body(stop=["a", "b", "c", "d", SECRET]),
    chat_body(temperature=2.5),
    chat_body(top_p=-0.1),
    chat_body(seed=-1),
    chat_body(max_tokens=0),
    chat_body(max_completion_tokens=True),
]


@pytest.mark.parametrize("body", BAD_MESSAGES)
def test_a_request_that_is_not_a_valid_chat_body_is_refused_without_echoing_it(runtime, backend,
                                                                               body):
    _, sealed = sealed_for(runtime.enclave.public_key, body)
    with pytest.raises(EnclaveError) as refused:
        run_all(runtime, sealed)
    assert refused.value.code == "sealed_request_invalid"
    assert SECRET not in str(refused.value) and SECRET not in refused.value.message
    assert not backend.calls


def test_a_request_that_does_not_open_is_refused(runtime, backend):
    other_key = sealing.keypair()[1]
    cases = [sealed_for(other_key, chat_body())[1],
             sealed_for(runtime.enclave.public_key, chat_body(), info=sealing.RESPONSE_INFO)[1]]
    good = sealed_for(runtime.enclave.public_key, chat_body())[1]
    cases.append({**good, "request": _tampered(good["request"])})
    cases.append({**good, "request": {"hpke": "x"}})
    cases.append({**good, "reply_key": "not a key"})
    cases.append({"request": good["request"]})
    for sealed in cases:
        with pytest.raises(EnclaveError) as refused:
            run_all(runtime, sealed)
        assert refused.value.code == "sealed_request_invalid"
        assert SECRET not in str(refused.value)
    assert not backend.calls


def test_a_model_it_does_not_serve_is_refused(runtime):
    _, sealed = sealed_for(runtime.enclave.public_key, chat_body())
    with pytest.raises(EnclaveError) as refused:
        list(runtime.run("job-1", "sha256:" + "00" * 32, sealed, {}, threading.Event()))
    assert refused.value.code == "model_unavailable"


def test_a_backend_error_becomes_an_enclave_error_with_its_code():
    failing = EnclaveRuntime([FakeChatBackend([], error=BackendError("invalid_params", "no"))],
                             code_measurement="sha256:" + "cd" * 32)
    _, sealed = sealed_for(failing.enclave.public_key, chat_body())
    with pytest.raises(EnclaveError) as refused:
        run_all(failing, sealed)
    assert (refused.value.code, refused.value.message) == ("invalid_params", "no")


def test_cancel_stops_generation(runtime):
    many = FakeChatBackend([f"word{n} " for n in range(100)])
    runtime = EnclaveRuntime([many], code_measurement="sha256:" + "cd" * 32)
    reply_private, sealed = sealed_for(runtime.enclave.public_key, chat_body())
    cancel, messages = threading.Event(), []
    for message in runtime.run("job-1", DIGEST, sealed, {"max_tokens": 100}, cancel):
        messages.append(message)
        if len(messages) == 2:
            cancel.set()
    assert messages[-1]["op"] == "done" and messages[-1]["finish_reason"] == "cancelled"
    assert len(messages) == 3
    assert opened_text(reply_private, messages) == "word0 word1 "


def test_evidence_verifies_and_binds_the_ready_keys_and_measurement(runtime):
    nonce = fresh_nonce()
    evidence = runtime.evidence(base64.b64encode(nonce).decode(), DIGEST)
    ready = runtime.ready_message()
    verdict = verify_simulated(evidence, policy=SimulatedPolicy(allow_simulated=True,
                                                                expected_nonce=nonce))
    assert verdict.ok, verdict.problems
    assert verdict.enclave_public_key == ready["enclave_key"]
    assert verdict.signing_key == ready["signing_key"]
    assert evidence["code_measurement"] == ready["code_measurement"]
    assert evidence["model_digest"] == DIGEST


@pytest.mark.parametrize("nonce", ["", "AAAA", base64.b64encode(b"x" * 31).decode(), None,
                                   base64.b64encode(b"x" * 32).decode().rstrip("=")])
def test_evidence_refuses_a_bad_nonce(runtime, nonce):
    with pytest.raises(EnclaveError) as refused:
        runtime.evidence(nonce, DIGEST)
    assert refused.value.code == "invalid_nonce"


def test_evidence_refuses_a_digest_it_does_not_serve(runtime):
    with pytest.raises(EnclaveError) as refused:
        runtime.evidence(base64.b64encode(fresh_nonce()).decode(), "sha256:" + "00" * 32)
    assert refused.value.code == "model_unavailable"


def test_the_server_refuses_a_second_job_and_lines_that_are_not_requests(runtime):
    import io

    from worker.enclave.__main__ import EnclaveServer, LineWriter

    out = io.BytesIO()
    server = EnclaveServer(runtime, LineWriter(out))
    blocked = threading.Event()
    runtime.run = lambda *args: iter([blocked.wait(10) and {"op": "done", "job_id": "job-1"}])
    server.handle(b'{"op": "run", "id": "1", "job_id": "job-1"}')
    server.handle(b'{"op": "run", "id": "2", "job_id": "job-2"}')
    server.handle(b"not json")
    server.handle(b'{"op": "launch", "id": "3"}')
    blocked.set()
    server.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["op"], line.get("code")) for line in lines] == [
        ("job_error", "busy"), ("error", "bad_request"), ("error", "bad_request"), ("done", None)]


# --- the code measurement ---------------------------------------------------------------------

def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def test_the_code_measurement_is_stable_and_well_formed():
    assert code_measurement() == code_measurement(REPO_ROOT)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", code_measurement())


def test_the_code_measurement_follows_its_documented_encoding(tmp_path):
    import hashlib

    root = _tree(tmp_path, {"worker/a.py": b"A", "client/b.py": b"BB", "worker/notes.txt": b"x",
                            "worker/__pycache__/c.py": b"cached", "tests/t.py": b"T"})
    expected = hashlib.sha256()
    for name, content in ((b"client/b.py", b"BB"), (b"worker/a.py", b"A")):
        expected.update(len(name).to_bytes(4, "big") + name + len(content).to_bytes(8, "big")
                        + content)
    assert code_measurement(root) == "sha256:" + expected.hexdigest()


def test_the_code_measurement_changes_when_a_file_changes(tmp_path):
    original = tmp_path / "original"
    for package in ("worker", "client"):
        shutil.copytree(REPO_ROOT / package, original / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    changed = tmp_path / "changed"
    shutil.copytree(original, changed)
    agent = changed / "worker" / "agent.py"
    agent.write_bytes(agent.read_bytes() + b"\n")
    same = tmp_path / "same"
    shutil.copytree(original, same)
    assert code_measurement(same) == code_measurement(original)
    assert code_measurement(changed) != code_measurement(original)


# --- the process, through EnclaveProcess --------------------------------------------------------

BUILTIN = {"backend": "builtin", "threads": 2}


@pytest.fixture(scope="module")
def enclave_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, EnclaveProcess, list[bytes]]]:
    """One enclave process with the builtin model for the module's process tests, on one loop
    (the process's pipes belong to it), with every raw line the host read."""
    loop, lines = asyncio.new_event_loop(), []
    process = loop.run_until_complete(EnclaveProcess.start(BUILTIN, on_line=lines.append))
    yield loop, process, lines
    loop.run_until_complete(process.close())
    loop.close()


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coroutine, 60))


async def collect(process: EnclaveProcess, job_id: str, sealed: dict,
                  max_tokens: int = 8) -> list[dict]:
    digest = process.models[0]["digest"]
    return [message async for message in process.run(job_id, digest, sealed,
                                                      {"max_tokens": max_tokens, "seed": 1})]


def builtin_body(content: str, max_tokens: int = 8) -> bytes:
    return json.dumps({"model": "gemma", "messages": [{"role": "user", "content": content}],
                       "max_tokens": max_tokens, "temperature": 0}).encode("utf-8")


def test_the_process_announces_itself_and_attests(enclave_loop):
    loop, process, _ = enclave_loop
    assert process.kind == "simulated" and process.models[0]["confidential"] is True
    # Uncached: the checkout may have changed since this test process first measured it.
    assert process.code_measurement == code_measurement.__wrapped__()
    nonce = fresh_nonce()
    evidence = run_on(loop, process.evidence(base64.b64encode(nonce).decode(),
                                             process.models[0]["digest"]))
    verdict = verify_simulated(evidence, policy=SimulatedPolicy(allow_simulated=True,
                                                                expected_nonce=nonce))
    assert verdict.ok, verdict.problems
    assert (verdict.enclave_public_key, verdict.signing_key) == (process.enclave_key,
                                                                 process.signing_key)
    with pytest.raises(EnclaveError) as refused:
        run_on(loop, process.evidence("AAAA", process.models[0]["digest"]))
    assert refused.value.code == "invalid_nonce"


def test_a_sealed_job_runs_end_to_end_and_the_host_never_reads_plaintext(enclave_loop):
    loop, process, lines = enclave_loop
    body = builtin_body(f"Repeat exactly: {SECRET}", max_tokens=8)
    reply_private, sealed = sealed_for(process.enclave_key, body)
    first_line = len(lines)
    messages = run_on(loop, collect(process, "job-e2e", sealed))
    assert messages[-1]["op"] == "done" and messages[-1]["usage"]["completion_tokens"] <= 8
    assert messages[-1]["usage"]["prompt_tokens"] > 0
    answer = opened_text(reply_private, messages)
    assert answer
    assert answer_signature_ok(signing_key=process.signing_key,
                               signature=messages[-1]["enclave_signature"], request_body=body,
                               response_text=answer)
    read = lines[first_line:]
    assert len(read) == len(messages)
    assert not [line for line in lines if SECRET.encode() in line]
    # A short answer could turn up inside base64 by chance; a longer one cannot.
    if len(answer.strip()) >= 6:
        assert not [line for line in lines if answer.strip().encode() in line]


def test_evidence_is_answered_while_a_job_runs(enclave_loop):
    loop, process, lines = enclave_loop
    body = builtin_body("Count from one to one hundred, in words.", max_tokens=200)
    _, sealed = sealed_for(process.enclave_key, body)
    digest = process.models[0]["digest"]

    async def scenario() -> tuple[list[str], bool]:
        ops, answered_mid_job = [], False
        async for message in process.run("job-long", digest, sealed, {"max_tokens": 200}):
            ops.append(message["op"])
            if len(ops) == 1:
                await process.evidence(base64.b64encode(fresh_nonce()).decode(), digest)
                # No "done" of this job had been read when the evidence came back.
                answered_mid_job = not [line for line in lines if b'"op": "done"' in line
                                        and b'"job_id": "job-long"' in line]
        return ops, answered_mid_job

    ops, answered_mid_job = run_on(loop, scenario())
    assert ops[-1] == "done" and answered_mid_job


def test_a_bad_request_is_a_job_error_and_cancel_ends_a_job(enclave_loop):
    loop, process, _ = enclave_loop
    _, sealed = sealed_for(process.enclave_key, b"not json " + SECRET.encode())
    with pytest.raises(EnclaveError) as refused:
        run_on(loop, collect(process, "job-bad", sealed))
    assert refused.value.code == "sealed_request_invalid"
    assert SECRET not in refused.value.message

    body = builtin_body("Count from one to one hundred, in words.", max_tokens=200)
    _, sealed = sealed_for(process.enclave_key, body)

    async def cancelled() -> list[dict]:
        messages = []
        async for message in process.run("job-cancel", process.models[0]["digest"], sealed,
                                         {"max_tokens": 200}):
            messages.append(message)
            if len(messages) == 1:
                await process.cancel("job-cancel")
        return messages

    messages = run_on(loop, cancelled())
    assert messages[-1]["finish_reason"] in ("cancelled", "stop")
    assert messages[-1]["usage"]["completion_tokens"] < 200


def test_close_ends_the_process_and_later_calls_fail_as_lost():

    async def scenario() -> None:
        process = await EnclaveProcess.start(BUILTIN)
        await process.close()
        assert process.process.returncode == 0
        with pytest.raises(EnclaveError) as lost:
            await process.evidence(base64.b64encode(fresh_nonce()).decode(),
                                   process.models[0]["digest"])
        assert lost.value.code == "enclave_lost"

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_dead_process_fails_every_pending_call():

    async def scenario() -> None:
        process = await EnclaveProcess.start(BUILTIN)
        digest = process.models[0]["digest"]
        _, sealed = sealed_for(process.enclave_key,
                               builtin_body("Count from one to one hundred.", max_tokens=200))
        job = process.run("job-dies", digest, sealed, {"max_tokens": 200})
        await job.__anext__()
        process.process.kill()
        with pytest.raises(EnclaveError) as lost:
            async for _ in job:
                pass
        assert lost.value.code == "enclave_lost"
        await process.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_start_that_fails_raises_with_the_enclave_s_message():
    async def scenario() -> None:
        with pytest.raises(EnclaveStartError, match="unknown key"):
            await EnclaveProcess.start({"backend": "builtin", "wrong": 1})

    asyncio.run(asyncio.wait_for(scenario(), 60))
