"""Embedding vectors: checking what a worker sent, and the float32 bytes clients and commitments
use. Pure, no I/O."""

import base64
import math

# The canonical encodings live with the agent, which signs over them (docs/verification.md).
from worker.embedding_commitment import float32_bytes, inputs_text  # noqa: F401 (re-exported)

FLOAT32_MAX = 3.4028234663852886e38


def float32_base64(vector: list[float]) -> str:
    return base64.b64encode(float32_bytes([vector])).decode("ascii")


def vectors_problem(data, *, count: int, dimensions: int | None) -> str | None:
    """Why an embed.done's data is not `count` vectors of `dimensions` finite numbers, or None.

    The protocol decoder has checked the shape of each item (a non-empty list of numbers, all of
    one length); Python's JSON reader also accepts NaN and Infinity, which are not numbers a
    client can use (nor valid JSON to send on), and numbers beyond float32's range.
    """
    if not isinstance(data, list) or len(data) != count:
        return f"expected {count} vectors, got {len(data) if isinstance(data, list) else 'none'}"
    for index, vector in enumerate(data):
        if dimensions is not None and len(vector) != dimensions:
            return f"vector {index} has {len(vector)} dimensions, the model has {dimensions}"
        if not all(math.isfinite(x) and abs(x) <= FLOAT32_MAX for x in vector):
            return f"vector {index} holds a value that is not a finite float32"
    return None
