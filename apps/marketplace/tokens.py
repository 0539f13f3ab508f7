"""Token counting on the node, so that usage is never taken from the worker's word.

A catalogue entry may name a local GGUF file with the model's vocabulary; the node loads only
the vocabulary (llama.cpp `vocab_only`, milliseconds, no weights) and tokenizes with it. For a
model the node has no vocabulary for, it estimates one token per 4 UTF-8 bytes (rounded up)
and says so in the response's `peer.usage_source`.
"""

import atexit
import logging
import threading

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_vocabularies: dict = {}


def _vocabulary(path: str):
    """Caller holds _lock."""
    if path not in _vocabularies:
        from llama_cpp import Llama  # imported lazily: the node starts without loading llama.cpp

        _vocabularies[path] = Llama(model_path=path, vocab_only=True, verbose=False)
    return _vocabularies[path]


@atexit.register
def _close_vocabularies():
    # Closed before interpreter teardown, when llama.cpp's own finaliser can no longer run.
    for vocab in _vocabularies.values():
        vocab.close()
    _vocabularies.clear()


def count_tokens(text: str, *, tokenizer_path: str, add_bos: bool) -> tuple[int, str]:
    """(count, source) where source is "tokenizer" or "estimate"."""
    if tokenizer_path:
        try:
            with _lock:  # llama.cpp's tokenizer object is not documented as thread-safe
                vocab = _vocabulary(tokenizer_path)
                return len(vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)), "tokenizer"
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning("cannot load tokenizer %s: %s; estimating", tokenizer_path, exc)
    return max(1, -(-len(text.encode("utf-8")) // 4)) if text else 0, "estimate"
