"""Checking a worker's signature on each chunk of an embedding job, and what the job keeps of them.

The node computes each chunk's commitment itself, from the texts it sent and the vectors it
received (worker/embedding_commitment.py), and checks the worker's signature over that hash with
the key the worker announced: the worker's own claimed hash is only quoted in the error. Pure.
"""

from worker.commitment import signature_valid
from worker.embedding_commitment import chunk_commitment


class ChunkRejected(Exception):
    """A verified job's chunk without the worker's valid signature over the node's commitment."""


def chunk_proof(frame: dict, *, texts: list[str], model_id: str, public_key: str, required: bool) -> dict:
    """The chunk's {hash, inputs, signature} (signature None when absent or invalid, allowed only
    when not `required`). Raises ChunkRejected on a verified job's unsigned or mis-signed chunk."""
    inputs, commitment = chunk_commitment(model_id=model_id, model_digest=frame["model_digest"], texts=texts,
                                          vectors=frame["data"])
    signature = frame.get("signature")
    signed = bool(public_key and signature) and signature_valid(public_key=public_key, commitment=commitment,
                                                                signature=signature)
    if required and not signed:
        why = "sent no signature" if not signature else "has no signing key" if not public_key else \
            f"signed {frame.get('commitment') or 'another commitment'}, not {commitment}"
        raise ChunkRejected(f"the worker {why}")
    return {"hash": commitment, "inputs": inputs, "signature": signature if signed else None}


def chunks_signed(commitment: dict | None) -> bool:
    """Whether a job's commitment is an embedding job's with every chunk signed."""
    chunks = (commitment or {}).get("chunks") or []
    return bool(chunks) and all(chunk.get("signature") for chunk in chunks)
