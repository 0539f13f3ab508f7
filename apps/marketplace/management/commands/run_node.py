"""`make run`: the whole node on one machine — web (daphne), Celery, and local worker agents."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.marketplace.demo import demo_seed


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


class Command(BaseCommand):
    help = "Seed the demo fleet and serve the node with its local worker agents until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PEER_PORT", 8000)))
        parser.add_argument("--agents", type=int, default=int(os.environ.get("PEER_DEMO_AGENTS", 2)),
                            help="local worker agents to start (default 2)")
        # More llama.cpp threads than cores slows every agent down several times over.
        parser.add_argument("--agent-threads", type=int, default=0,
                            help="CPU threads per agent (default: the CPUs shared among the agents)")

    def handle(self, *args, port, agents, agent_threads, **options):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise CommandError(f"Port {port} is taken; set PEER_PORT to another port.")
        fleet = demo_seed(agents=agents)
        agent_threads = agent_threads or max(1, (os.cpu_count() or 1) // max(1, agents))
        self.children: list[subprocess.Popen] = []
        python = sys.executable
        # The demo's enclave worker is SIMULATED: the node routes confidential jobs to it only
        # because this demo allows it, and says so below and in every proof (attestation.simulated).
        os.environ["PEER_ALLOW_SIMULATED_ENCLAVE"] = "1"
        self._spawn([python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "peercycles.asgi:application"])
        if not _wait_for_port(port, 30):
            self._stop()
            raise CommandError("The web server did not start; see its output above.")
        if settings.REDIS_URL:
            self._spawn([python, "-m", "celery", "-A", "peercycles", "worker", "--beat", "-l", "warning",
                         "--concurrency", "1"])
            celery_mode = "Celery worker + beat on Redis"
        else:
            threading.Thread(target=self._embedded_beat, daemon=True).start()
            celery_mode = "Celery tasks run inside the node (no REDIS_URL)"
        server = f"http://127.0.0.1:{port}"
        # Every agent also serves the embedding model when it is installed (so an embedding
        # request fails over as a chat one does); said outright, so the banner cannot lie.
        embeddings = "minilm" if fleet.embedding_model else "none"
        for name, token in fleet.worker_tokens:
            self._spawn([python, "-m", "worker", "--server", server, "--token", token,
                         "--threads", str(agent_threads), "--name", name, "--embeddings", embeddings,
                         "--key-file", str(settings.BASE_DIR / "var" / "worker-key.pem")])
        if fleet.cheater_token:
            name, token = fleet.cheater_token
            self._spawn([python, "-m", "worker", "--server", server, "--token", token, "--cheat", "truncate",
                         "--threads", str(agent_threads), "--name", name, "--embeddings", "none",
                         "--key-file", str(settings.BASE_DIR / "var" / "worker-key.pem")])
        if fleet.enclave_token:
            name, token = fleet.enclave_token
            self._spawn([python, "-m", "worker", "--server", server, "--token", token, "--enclave", "simulated",
                         "--threads", str(agent_threads), "--name", name, "--embeddings", "none",
                         "--key-file", str(settings.BASE_DIR / "var" / "worker-key.pem")])
        database = "PostgreSQL" if settings.DATABASE_URL else "SQLite (var/peercycles.sqlite3)"
        layer = "Redis" if settings.REDIS_URL else "in-memory"
        self.stdout.write(self.style.SUCCESS(f"\nPeer Cycles node: {server}\n"))
        self.stdout.write(f"  OpenAI base URL  {server}/v1\n  demo API key     {fleet.api_key}\n"
                          f"  model            peer-mixtral -> {fleet.model_id} ({fleet.model_digest[:19]}…)\n"
                          f"  embeddings       {fleet.embedding_model or 'none (the minilm packages are missing)'}"
                          " on POST /v1/embeddings\n"
                          f"  services         {database}, {layer} channel layer, {celery_mode}\n"
                          f"  agents           {len(fleet.worker_tokens)} local builtin workers"
                          + (", 1 SIMULATED-enclave worker (confidential tier; simulated enclaves allowed on "
                             "this demo node: no hardware guarantee)" if fleet.enclave_token else "")
                          + (", 1 CHEATING worker (--cheat truncate: /network/ shows it caught and slashed)"
                             if fleet.cheater_token else "") + "\n"
                          f"  watch it work     {server}/network/ (sign up, then Run workflow)\n"
                          f"  confidential     python -m client proxy --upstream {server} --port 8100 "
                          f"--api-key {fleet.api_key} --allow-simulated\n\n"
                          f"  curl {server}/v1/chat/completions -H \"authorization: Bearer {fleet.api_key}\" "
                          "-H \"content-type: application/json\" -d '{\"model\":\"peer-mixtral\",\"peer_tier\":"
                          "\"verified\",\"messages\":[{\"role\":\"user\",\"content\":\"explain attestation\"}]}'\n\n"
                          "Ctrl-C stops everything.\n")
        signal.signal(signal.SIGTERM, lambda *_: self._stop(exit_code=0))
        try:
            while all(child.poll() is None for child in self.children[:1]):
                time.sleep(0.5)
            raise CommandError("The web server exited.")
        except KeyboardInterrupt:
            pass
        finally:
            self._stop()

    def _spawn(self, argv):
        self.children.append(subprocess.Popen(argv))

    def _embedded_beat(self):
        """Without a broker, run the beat schedule's tasks here, in the node's own process."""
        from peercycles.celery import app

        app.autodiscover_tasks(force=True)  # discovery is lazy; this process never imported them
        while True:
            time.sleep(30)
            for entry in settings.CELERY_BEAT_SCHEDULE.values():
                app.tasks[entry["task"]].apply()

    def _stop(self, exit_code=None):
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        if exit_code is not None:
            sys.exit(exit_code)
