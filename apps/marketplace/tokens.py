"""Token counting on the node, so that usage is never taken from the worker's word.

A catalogue entry may name a local GGUF file with the model's vocabulary; the node loads only
the vocabulary (llama.cpp `vocab_only`, milliseconds, no weights) and tokenizes with it; an
embedding model's entry names its tokenizer.json, read with Hugging Face `tokenizers`. For a
model the node has no vocabulary for, it estimates one token per 4 UTF-8 bytes (rounded up)
and says so in the response's `peer.usage_source`.
"""

import atexit
import logging
import threading
from dataclasses import dataclass

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


_tokenizers: dict = {}


def _tokenizer(path: str):
    """A Hugging Face tokenizer.json, cached; caller holds _lock."""
    if path not in _tokenizers:
        from tokenizers import Tokenizer  # lazily, like llama.cpp above

        tokenizer = Tokenizer.from_file(path)
        # A shipped tokenizer.json may pad or truncate (all-MiniLM's pads to 128): the node counts
        # every token of every input, so that an input too long for the model is refused, never cut.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        _tokenizers[path] = tokenizer
    return _tokenizers[path]


@dataclass(frozen=True)
class EmbeddingCount:
    tokens: list[int]  # the caller's tokens of each input: what usage counts and the price is for
    special: int  # tokens the model adds to every input ([CLS] and [SEP]): they fill its window too
    source: str  # "tokenizer" or "estimate", as above


def count_embedding_tokens(texts: list[str], *, tokenizer_path: str) -> EmbeddingCount:
    """Count an embedding request's inputs with the model's own tokenizer.json, else estimate."""
    if tokenizer_path:
        try:
            with _lock:
                tokenizer = _tokenizer(tokenizer_path)
            # Rust-side and read-only once configured: encoding needs no lock.
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            special = tokenizer.num_special_tokens_to_add(is_pair=False)
            return EmbeddingCount([len(e.ids) for e in encodings], special, "tokenizer")
        except Exception as exc:  # tokenizers raises a bare Exception for a bad or missing file
            logger.warning("cannot load tokenizer %s: %s; estimating", tokenizer_path, exc)
    return EmbeddingCount([max(1, -(-len(t.encode("utf-8")) // 4)) if t else 0 for t in texts], 0, "estimate")
