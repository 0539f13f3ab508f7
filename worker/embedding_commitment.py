"""The commitment over one embed.assign chunk: which model embedded which texts into which vectors.

An embedding job is served by one worker over several embed.assign chunks (at most
protocol.MAX_EMBED_INPUTS inputs each); the worker signs each chunk's answer as it sends it, so
every vector a client receives is covered by a signature. The encoding is canonical, so that the
node, the agent and an offline checker compute the very same hash:

  input_sha256   = sha256 of the chunk's texts as a JSON array (no spaces, UTF-8, non-ASCII kept)
  vectors_sha256 = sha256 of the chunk's vectors, in order, every number as an IEEE 754 float32,
                   little-endian (what OpenAI's base64 encoding_format decodes to)
  inputs = {kind: "embedding", model_id, model_digest, count, dimensions, input_sha256, vectors_sha256}
  hash   = sha256(JSON of inputs, keys sorted, no spaces, UTF-8)
  signature = Ed25519(key, SIGNING_CONTEXT + hash as lowercase hex), as for chat (commitment.py)

The agent sends decimals that name each float32 exactly (worker/backends/minilm.py), so the
node's float32s, read back from JSON, are the agent's own bit for bit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from worker.commitment import commitment_hash, signature_valid


def inputs_text(inputs: list[str]) -> str:
    """The texts of an embedding job or chunk as one string (canonical JSON): what its hash covers."""
    return json.dumps(inputs, ensure_ascii=False, separators=(",", ":"))


def float32_bytes(vectors: list[list[float]]) -> bytes:
    """Every vector, in order, as little-endian float32: OpenAI's base64 encoding_format decodes
    to exactly these (its SDK reads them with numpy's float32 or array('f'))."""
    return b"".join(struct.pack(f"<{len(vector)}f", *vector) for vector in vectors)


def float32_vectors(data: bytes, *, dimensions: int) -> list[list[float]]:
    """The inverse of float32_bytes for vectors of `dimensions` numbers."""
    numbers = struct.unpack(f"<{len(data) // 4}f", data)
    return [list(numbers[start:start + dimensions]) for start in range(0, len(numbers), dimensions)]


def vectors_base64(vectors: list[list[float]]) -> str:
    return base64.b64encode(float32_bytes(vectors)).decode("ascii")


def response_vectors(body: Any) -> list[list[float]]:
    """The vectors of a /v1/embeddings response (floats or base64 float32s), or of a plain list."""
    if isinstance(body, list):
        return body
    vectors = []
    for item in sorted(body["data"], key=lambda item: item["index"]):
        embedding = item["embedding"]
        if isinstance(embedding, str):
            data = base64.b64decode(embedding)
            embedding = float32_vectors(data, dimensions=len(data) // 4)[0]
        vectors.append(embedding)
    return vectors


def chunk_inputs(*, model_id: str, model_digest: str, texts: list[str], vectors: list[list[float]]) -> dict[str, Any]:
    return {
        "kind": "embedding",
        "model_id": model_id,
        "model_digest": model_digest,
        "count": len(vectors),
        "dimensions": len(vectors[0]) if vectors else 0,
        "input_sha256": hashlib.sha256(inputs_text(texts).encode("utf-8")).hexdigest(),
        "vectors_sha256": hashlib.sha256(float32_bytes(vectors)).hexdigest(),
    }


def chunk_commitment(*, model_id: str, model_digest: str, texts: list[str],
                     vectors: list[list[float]]) -> tuple[dict[str, Any], str]:
    """The chunk's commitment inputs and their hash (hex)."""
    inputs = chunk_inputs(model_id=model_id, model_digest=model_digest, texts=texts, vectors=vectors)
    return inputs, commitment_hash(inputs)


def embedding_proof_problems(proof: dict[str, Any], *, vectors: list[list[float]],
                             texts: list[str] | None = None) -> list[str]:
    """Re-check an embedding job's proof (GET /v1/jobs/{id}/proof) against the vectors received,
    in order (and the texts sent, if given): each chunk's vectors and texts hash as committed, each
    chunk's hash covers its inputs, and the worker's key signed each. Empty when it all stands."""
    chunks = (proof.get("commitment") or {}).get("chunks") or []
    key = str(proof.get("worker_public_key") or "")
    problems = [] if chunks else ["the proof holds no signed chunks"]
    start = 0
    for number, chunk in enumerate(chunks):
        inputs = dict(chunk.get("inputs") or {})
        count = int(inputs.get("count") or 0)
        mine = vectors[start:start + count]
        if len(mine) != count or hashlib.sha256(float32_bytes(mine)).hexdigest() != inputs.get("vectors_sha256"):
            problems.append(f"chunk {number}: the vectors' sha256 is not the one committed to")
        if texts is not None and hashlib.sha256(inputs_text(texts[start:start + count]).encode("utf-8")).hexdigest() \
                != inputs.get("input_sha256"):
            problems.append(f"chunk {number}: the inputs' sha256 is not the one committed to")
        if commitment_hash(inputs) != chunk.get("hash"):
            problems.append(f"chunk {number}: the commitment hash does not match its inputs")
        if not signature_valid(public_key=key, commitment=str(chunk.get("hash") or ""),
                               signature=str(chunk.get("signature") or "")):
            problems.append(f"chunk {number}: the worker's signature does not verify")
        start += count
    if start != len(vectors):
        problems.append(f"the chunks commit to {start} vectors, {len(vectors)} were given")
    return problems
