"""`make run`'s embedded mode (SQLite, in-memory channel layer, Celery in the node) serves the
paper's example, and embeddings, with the key it prints. The suite itself runs on PostgreSQL and Redis; this
test starts the node the way `make run` does, in a subprocess with neither configured."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import OUTPUT, ROOT, _free_port

pytestmark = pytest.mark.e2e


def test_the_embedded_node_answers_the_papers_example_and_embeds_with_the_printed_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PEER_SQLITE_PATH=str(tmp_path / "node.sqlite3"), PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = _free_port()
    OUTPUT.mkdir(exist_ok=True)
    log_path = OUTPUT / "make-run.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen([sys.executable, "manage.py", "run_node", "--port", str(port), "--agents", "1"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        key = _wait_for(log_path, r"demo API key\s+(pc_\S+)", timeout=90)
        _wait_for(log_path, r"worker\.agent: connected", timeout=90)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, headers={
            "authorization": f"Bearer {key}", "content-type": "application/json"},
            content='{"model": "peer-mixtral", "peer_tier": "verified", '
                    '"messages": [{ "role":"user", "content":"explain attestation" }]}')
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        embedded = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", timeout=120, headers={
            "authorization": f"Bearer {key}"}, json={"model": "all-minilm-l6-v2", "input": ["a", "b"]})
        assert embedded.status_code == 200, embedded.text
        assert [len(item["embedding"]) for item in embedded.json()["data"]] == [384, 384]
        for asset in ("css/site.css", "vendor/htmx.org/dist/htmx.min.js"):  # pages work: CSS and htmx load
            served = httpx.get(f"http://127.0.0.1:{port}/static/{asset}", timeout=30)
            assert served.status_code == 200 and served.content, asset
        assert "SQLite" in log_path.read_text() and "in-memory channel layer" in log_path.read_text()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    assert node.returncode == 0


def _wait_for(path, pattern, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found.group(1) if found.groups() else found.group(0)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in {path}:\n{path.read_text()[-3000:]}")
