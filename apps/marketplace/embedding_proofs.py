"""Checking a worker's signature on each chunk of an embedding job, and what the job keeps of them.

The node computes each chunk's commitment itself, from the texts it sent and the vectors it
received (worker/embedding_commitment.py), and checks the worker's signature over that hash with
the key the worker announced: the worker's own claimed hash is only quoted in the error. Pure.
"""

from worker.commitment import signature_problem
from worker.embedding_commitment import chunk_commitment


class ChunkRejected(Exception):
    """A verified job's chunk without the worker's valid signature over the node's commitment."""


def chunk_proof(frame: dict, *, texts: list[str], model_id: str, public_key: str, required: bool) -> dict:
    """The chunk's {hash, inputs, signature} (signature None when absent or invalid, allowed only
    when not `required`). Raises ChunkRejected on a verified job's unsigned or mis-signed chunk."""
    inputs, commitment = chunk_commitment(model_id=model_id, model_digest=frame["model_digest"], texts=texts,
                                          vectors=frame["data"])
    signature = frame.get("signature")
    problem = signature_problem(public_key=public_key, signature=signature, commitment=commitment,
                                claimed=frame.get("commitment"))
    if required and problem:
        raise ChunkRejected(problem)
    return {"hash": commitment, "inputs": inputs, "signature": signature if problem is None else None}


def chunks_signed(chunks: list[dict] | None) -> bool:
    """Whether an embedding job's chunks (its commitment's "chunks") are there and all signed."""
    return bool(chunks) and all(chunk.get("signature") for chunk in chunks)
