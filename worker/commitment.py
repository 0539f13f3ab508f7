"""The commitment over one job: what ran, on what, with which seed, and what came out.

hash = sha256(canonical JSON of {model_id, model_digest, seed, params, prompt_sha256,
output_sha256}). The node computes it from the prompt it sent and the text it relayed; the worker
computes it from the job it was given and the text it generated, and signs it with its Ed25519
key: signature = Ed25519(SIGNING_CONTEXT + hash as lowercase hex, ASCII). This module is shared by
both sides and by anyone re-checking a proof offline (`python -m worker.commitment --help`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "seed", "stop")
# Domain separation: a worker's key signs commitments under this prefix and nothing else.
SIGNING_CONTEXT = b"peercycles/commitment/v1\n"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def commitment_inputs(*, model_id: str, model_digest: str, seed: int, params: dict[str, Any],
                      prompt: str, output: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "model_digest": model_digest,
        "seed": seed,
        "params": {k: params.get(k) for k in SAMPLING_PARAMS},
        "prompt_sha256": sha256_hex(prompt),
        "output_sha256": sha256_hex(output),
    }


def commitment_hash(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def commitment_sign(key: Ed25519PrivateKey, commitment: str) -> str:
    """The worker's signature over a commitment hash (hex), base64."""
    return base64.b64encode(key.sign(SIGNING_CONTEXT + commitment.encode("ascii"))).decode("ascii")


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte Ed25519 public key, base64: what the agent announces and proofs carry."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def signature_valid(*, public_key: str, commitment: str, signature: str) -> bool:
    """Whether `signature` (base64) is the holder of `public_key` (base64, raw) signing `commitment`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), SIGNING_CONTEXT + commitment.encode("ascii"))
        return True
    except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError, TypeError):
        return False


def signature_problem(*, public_key: str, signature: str | None, commitment: str,
                      claimed: str | None = None) -> str | None:
    """Why `signature` is not the holder of `public_key` signing `commitment` (the node's own
    hash; `claimed`, the hash the worker says it signed, only for the message), or None when it
    is. What the node tells of a verified answer, or an embedding chunk, it cannot accept."""
    if not signature:
        return "the worker sent no signature"
    if not public_key:
        return "the worker has no signing key"
    if not signature_valid(public_key=public_key, commitment=commitment, signature=signature):
        return f"the worker signed {claimed or 'another commitment'}, not {commitment}"
    return None


def proof_problems(proof: dict[str, Any], *, output: str, prompt: str | None = None) -> list[str]:
    """Re-check a proof (GET /v1/jobs/{id}/proof) against the answer text: the output's hash,
    the prompt's if given, the commitment hash over the inputs, and the worker's signature.
    Returns what does not hold; empty when the proof stands."""
    commitment = proof.get("commitment") or {}
    inputs = dict(commitment.get("inputs") or {})
    problems = []
    if inputs.get("output_sha256") != sha256_hex(output):
        problems.append("the output's sha256 is not the one committed to")
    if prompt is not None and inputs.get("prompt_sha256") != sha256_hex(prompt):
        problems.append("the prompt's sha256 is not the one committed to")
    if commitment_hash(inputs) != commitment.get("hash"):
        problems.append("the commitment hash does not match its inputs")
    if not signature_valid(public_key=str(proof.get("worker_public_key") or ""),
                           commitment=str(commitment.get("hash") or ""),
                           signature=str(commitment.get("signature") or "")):
        problems.append("the worker's signature does not verify")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.commitment",
        description="Check a job's proof offline: recompute the commitment from the answer's text "
                    "(or an embedding job's vectors) and verify the worker's Ed25519 signature.")
    parser.add_argument("proof", help="the JSON of GET /v1/jobs/{id}/proof (a file, or - for stdin)")
    parser.add_argument("--output", help="a file holding the answer's text exactly as received")
    parser.add_argument("--prompt", help="a file holding the prompt as the worker ran it (optional)")
    parser.add_argument("--vectors", help="embedding jobs: the /v1/embeddings response (JSON, either "
                                          "encoding_format) or a JSON list of the vectors, in order")
    parser.add_argument("--inputs", help="embedding jobs: a JSON list of the texts sent (optional)")
    args = parser.parse_args(argv)
    if (args.output is None) == (args.vectors is None):
        parser.error("give --output (a chat or completion answer) or --vectors (an embedding job)")
    proof = json.load(sys.stdin if args.proof == "-" else open(args.proof, encoding="utf-8"))
    if args.vectors is not None:
        from worker.embedding_commitment import embedding_proof_problems, response_vectors

        vectors = response_vectors(json.load(open(args.vectors, encoding="utf-8")))
        texts = json.load(open(args.inputs, encoding="utf-8")) if args.inputs else None
        problems = embedding_proof_problems(proof, vectors=vectors, texts=texts)
        signed = f"{len(proof['commitment'].get('chunks') or [])} chunk(s)"
    else:
        output = open(args.output, encoding="utf-8").read()
        prompt = open(args.prompt, encoding="utf-8").read() if args.prompt else None
        problems = proof_problems(proof, output=output, prompt=prompt)
        signed = f"commitment {proof['commitment']['hash']}"
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"OK: {signed} signed by {proof['worker_public_key']}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
