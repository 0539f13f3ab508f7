"""Helpers for the confidential tier's end-to-end tests: an agent with a simulated enclave, and a
search of every table for a string (where plaintext must not be)."""

import subprocess
import sys
import time
from contextlib import contextmanager

from django.db import connection

from apps.workers.models import Worker
from apps.workers.services import worker_register

from .conftest import OUTPUT, ROOT


@contextmanager
def enclave_agent(node_url, operator, model_path, name):
    """The bundled agent with a simulated enclave, logging every frame (--log-level DEBUG), until
    the node has verified its evidence."""
    worker, token = worker_register(operator=operator, name=name, tiers=["confidential"])
    log_path = OUTPUT / f"{name}.log"
    log = open(log_path, "w")
    agent = subprocess.Popen([sys.executable, "-m", "worker", "--server", node_url, "--token", token,
                              "--enclave", "simulated", "--model-path", model_path, "--threads", "2",
                              "--embeddings", "none", "--log-level", "DEBUG", "--name", name],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not Worker.objects.filter(id=worker.id, attested_until__isnull=False).exists():
            assert agent.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"never attested:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield agent, worker, log_path
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(timeout=15)
        log.close()


def database_holds(text: str) -> list[str]:
    """Every table of the schema whose rows, as JSON, contain `text`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [row[0] for row in cursor.fetchall()]
        found = []
        for table in tables:
            cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE row_to_json(t)::text LIKE %s', [f"%{text}%"])
            if cursor.fetchone()[0]:
                found.append(table)
    return found
