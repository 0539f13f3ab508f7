"""`make run`'s embedded mode (SQLite, in-memory channel layer, Celery in the node) serves the
paper's example, embeddings, and a confidential chat through the local proxy to its simulated-enclave
worker, with the key it prints. The suite itself runs on PostgreSQL and Redis; this
test starts the node the way `make run` does, in a subprocess with neither configured."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from client.confidential import AttestationPolicy
from client.proxy import ProxyConfig, make_server

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
        # The demo's one enclave worker is simulated, said so, and serves the confidential tier.
        assert "SIMULATED-enclave worker" in log_path.read_text()
        _wait_for_attested(f"http://127.0.0.1:{port}", key, timeout=90)
        answer = _confidential_chat(f"http://127.0.0.1:{port}", key)
        assert answer.choices[0].message.content
        assert answer.model_extra["peer"]["verified"] == {"attestation": True, "signature": True, "simulated": True}
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    assert node.returncode == 0


def _wait_for_attested(node_url, key, timeout):
    """Until the node lists an attested enclave for the demo model (its verdict is recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = httpx.get(f"{node_url}/v1/attestation", params={"model": "peer-mixtral"}, timeout=30,
                            headers={"authorization": f"Bearer {key}"})
        if listing.status_code == 200 and listing.json()["enclaves"]:
            assert all(enclave["simulated"] for enclave in listing.json()["enclaves"])
            return
        time.sleep(0.5)
    raise AssertionError(f"no attested enclave after {timeout}s")


def _confidential_chat(node_url, key):
    """Through the local proxy, as the banner says: `python -m client proxy ... --allow-simulated`."""
    server = make_server(ProxyConfig(upstream=node_url, api_key=key, policy=AttestationPolicy(allow_simulated=True)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", max_retries=0)
        return client.chat.completions.create(model="peer-mixtral", max_tokens=8,
                                              messages=[{"role": "user", "content": "a sealed hello"}])
    finally:
        server.shutdown()
        server.server_close()


def _wait_for(path, pattern, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found.group(1) if found.groups() else found.group(0)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in {path}:\n{path.read_text()[-3000:]}")
