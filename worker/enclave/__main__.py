"""`python -m worker.enclave`: the enclave process, spoken to in JSON lines on stdin and stdout.

The agent's host process starts it (host.py) with its settings as JSON in PEER_ENCLAVE_SETTINGS:
the chat backend's keys of worker.cli.Settings (backend, backend_url, backend_api_key, models,
model_digests, context_length, model_path, threads; log_level too). Protocol, one JSON object a
line, ASCII:

    enclave -> host  {"op": "ready", "kind", "enclave_key", "signing_key", "code_measurement",
                      "models": [...]}                                      first line, once
                     {"op": "failed", "message"}                 instead of ready; exit 1
    host -> enclave  {"op": "evidence", "id", "nonce", "model_digest"}
    enclave -> host  {"op": "evidence", "id", "evidence"} | {"op": "error", "id", "code", "message"}
    host -> enclave  {"op": "run", "id", "job_id", "model_digest", "sealed", "params"}
    enclave -> host  {"op": "chunk", "job_id", "seq", "sealed"} ..., then
                     {"op": "done", "job_id", "finish_reason", "usage", "enclave_signature"}
                     | {"op": "job_error", "job_id", "code", "message"}
    host -> enclave  {"op": "cancel", "job_id"}

One job runs at a time, in a thread, so evidence is answered while it generates; a second run
meanwhile gets job_error "busy". A line that is not a request gets {"op": "error", "id": null,
...}. End of stdin ends the process (exit 0). Logs go to stderr, never plaintext.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from client.attestation.simulated import SimulatedEnclave
from worker.enclave.runtime import EnclaveError, EnclaveRuntime

SETTINGS_VARIABLE = "PEER_ENCLAVE_SETTINGS"
SETTINGS_KEYS = frozenset({"backend", "backend_url", "backend_api_key", "models", "model_digests",
                           "context_length", "model_path", "threads", "log_level", "enclave", "pccs_url"})
JOIN_TIMEOUT = 5.0  # how long a cancelled job may take to stop when stdin closes

log = logging.getLogger("worker.enclave")


class LineWriter:
    """One JSON object per line; a lock keeps the job thread's and the reader's lines whole."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, message: dict[str, Any]) -> None:
        line = (json.dumps(message, ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def settings_from_json(text: str | None) -> Any:
    """A worker.cli.Settings for the chat backend only: no embeddings and never --cheat."""
    from worker.cli import Settings

    values = json.loads(text) if text else {}
    if not isinstance(values, dict):
        raise ValueError(f"{SETTINGS_VARIABLE} must be a JSON object")
    unknown = sorted(set(values) - SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"{SETTINGS_VARIABLE}: unknown key(s) {', '.join(unknown)}")
    values = {key: value for key, value in values.items() if value is not None}
    if "models" in values:
        models = values["models"]
        values["models"] = tuple(models.split(",") if isinstance(models, str) else models)
    if "model_digests" in values:
        values["model_digests"] = dict(values["model_digests"])
    if "model_path" in values:
        values["model_path"] = Path(values["model_path"]).expanduser()
    return Settings(**values, embeddings="none")


class EnclaveServer:
    """Reads requests, answers evidence at once, runs one job at a time in a thread."""

    def __init__(self, runtime: EnclaveRuntime, writer: LineWriter) -> None:
        self.runtime = runtime
        self.writer = writer
        self._lock = threading.Lock()
        self._job: tuple[str, threading.Event, threading.Thread] | None = None

    def serve(self, stdin: BinaryIO) -> None:
        for line in stdin:
            if line.strip():
                self.handle(line)
        self.stop()

    def handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            self.writer.write({"op": "error", "id": None, "code": "bad_request",
                               "message": "not a JSON object with an op"})
            return
        if op == "evidence":
            self._evidence(request)
        elif op == "run":
            self._run(request)
        elif op == "cancel":
            self._cancel(request.get("job_id"))
        else:
            self.writer.write({"op": "error", "id": request.get("id"), "code": "bad_request",
                               "message": f"unknown op {op!r}"})

    def stop(self) -> None:
        """Cancel the running job and give it a moment to stop (stdin closed: nobody listens)."""
        with self._lock:
            job = self._job
        if job is not None:
            job[1].set()
            job[2].join(JOIN_TIMEOUT)

    def _evidence(self, request: dict[str, Any]) -> None:
        request_id = request.get("id")
        try:
            evidence = self.runtime.evidence(request.get("nonce"), request.get("model_digest"))
        except EnclaveError as error:
            self.writer.write({"op": "error", "id": request_id, "code": error.code,
                               "message": error.message})
            return
        self.writer.write({"op": "evidence", "id": request_id, "evidence": evidence})

    def _run(self, request: dict[str, Any]) -> None:
        job_id = request.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            self.writer.write({"op": "error", "id": request.get("id"), "code": "bad_request",
                               "message": "run needs a job_id"})
            return
        with self._lock:
            if self._job is not None:
                self.writer.write({"op": "job_error", "job_id": job_id, "code": "busy",
                                   "message": f"job {self._job[0]} is running"})
                return
            cancel = threading.Event()
            thread = threading.Thread(target=self._job_thread, args=(request, job_id, cancel),
                                      name=f"enclave-job-{job_id}", daemon=True)
            self._job = (job_id, cancel, thread)
        thread.start()

    def _job_thread(self, request: dict[str, Any], job_id: str, cancel: threading.Event) -> None:
        # The slot is freed before the job's last line is written: a host that sends its next
        # run as soon as it reads "done" must not find this job still running.
        try:
            for message in self.runtime.run(job_id, request.get("model_digest"),
                                            request.get("sealed"), request.get("params") or {},
                                            cancel):
                if message["op"] == "done":
                    self._release(job_id)
                self.writer.write(message)
        except EnclaveError as error:
            log.warning("job %s: %s: %s", job_id, error.code, error.message)
            self._release(job_id)
            self._write_quietly({"op": "job_error", "job_id": job_id, "code": error.code,
                                 "message": error.message})
        except OSError:  # stdout gone: the host died; nothing to tell anyone
            cancel.set()
        except Exception as error:
            log.error("job %s: enclave failure (%s)", job_id, type(error).__name__)
            self._release(job_id)
            self._write_quietly({"op": "job_error", "job_id": job_id, "code": "enclave_error",
                                 "message": f"enclave failure ({type(error).__name__})"})
        finally:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        with self._lock:
            if self._job is not None and self._job[0] == job_id:
                self._job = None

    def _cancel(self, job_id: object) -> None:
        with self._lock:
            job = self._job
        if job is not None and job[0] == job_id:
            log.info("job %s: cancel requested", job_id)
            job[1].set()

    def _write_quietly(self, message: dict[str, Any]) -> None:
        try:
            self.writer.write(message)
        except OSError:
            pass


def protocol_stdout() -> BinaryIO:
    """The real stdout, for protocol lines only; fd 1 and sys.stdout then point at stderr.

    Native code (llama.cpp, a library's stray print) writes to fd 1 whenever it likes; one such
    line in the middle of the protocol would break the host's reader.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb", buffering=0)


def enclave_for(settings: Any) -> Any:
    """The keys and evidence source --enclave names: simulated, or the CPU's (configfs-tsm)."""
    if settings.enclave == "tsm":
        from worker.enclave.tsm import TsmEnclave

        return TsmEnclave(pccs_url=settings.pccs_url)
    return SimulatedEnclave()


def main() -> int:
    writer = LineWriter(protocol_stdout())
    try:
        settings = settings_from_json(os.environ.get(SETTINGS_VARIABLE))
        logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from worker.cli import load_backends

        enclave = enclave_for(settings)  # before the model loads: a machine with no TEE stops at once
        runtime = EnclaveRuntime(load_backends(settings), enclave=enclave)
        if not runtime.models:
            raise ValueError("no model this enclave can serve confidentially (a chat model "
                             "with a sha256 digest)")
    except Exception as error:  # noqa: BLE001 - whatever stops the start is reported to the host
        logging.basicConfig(stream=sys.stderr)
        log.error("cannot start: %s: %s", type(error).__name__, error)
        writer.write({"op": "failed", "message": f"{type(error).__name__}: {error}"})
        return 1
    writer.write(runtime.ready_message())
    log.info("enclave ready: %s models, measurement %s", len(runtime.models),
             runtime.code_measurement)
    try:
        EnclaveServer(runtime, writer).serve(sys.stdin.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
