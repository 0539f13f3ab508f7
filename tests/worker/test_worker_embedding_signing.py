"""Signed embedding chunks (worker/embedding_commitment.py): the canonical encoding, the agent's
signature on each embed.done, the node's check of it, the offline check of a proof, and the
cheating embedder, which signs its substitute like honest vectors. No database."""

import base64
import hashlib
import json
import random
import struct
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps.marketplace.embedding_proofs import ChunkRejected, chunk_proof
from worker import protocol
from worker.cheat import CheatingEmbedder
from worker.commitment import commitment_sign, main as check_proof, public_key_text
from worker.embedding_commitment import (
    chunk_commitment,
    embedding_proof_problems,
    float32_bytes,
    response_vectors,
)
from worker.validation import can_validate

from .nodestub import FakeBackend, FakeEmbedder, embed, frames_until_embedded, welcome
from .test_worker_agent import run, run_one_session

TEXTS = ["A man is eating food.", "Ein Mann isst.", "東京"]
VECTORS = [[0.25, -1.5, 3.0], [1e-3, 0.1, -0.2], [0.0, 1.0, 0.5]]


def _signed_frame(key, texts=TEXTS, vectors=VECTORS, digest="sha256:" + "cd" * 32):
    _, commitment = chunk_commitment(model_id="m", model_digest=digest, texts=texts, vectors=vectors)
    return protocol.embed_done(job_id="j", model_digest=digest, data=vectors, prompt_tokens=3,
                               commitment=commitment, signature=commitment_sign(key, commitment))


def test_the_encoding_is_little_endian_float32_and_utf8_json_without_spaces():
    assert float32_bytes([[1.0, -2.5]]) == struct.pack("<2f", 1.0, -2.5) == bytes.fromhex("0000803f000020c0")
    inputs, _ = chunk_commitment(model_id="m", model_digest="d", texts=["a b", "東京"], vectors=[[1.0], [2.0]])
    assert inputs["input_sha256"] == hashlib.sha256('["a b","東京"]'.encode()).hexdigest()
    assert inputs["vectors_sha256"] == hashlib.sha256(struct.pack("<2f", 1.0, 2.0)).hexdigest()
    assert (inputs["kind"], inputs["count"], inputs["dimensions"]) == ("embedding", 2, 1)


def test_the_agent_signs_each_chunk_it_embeds_with_the_key_it_announced():
    async def script(ws):
        hello = await welcome(ws)
        await ws.send(embed("job-1", FakeEmbedder.digest, TEXTS))
        return hello, await frames_until_embedded(ws, "job-1")

    async def scenario():
        hello, done = await run_one_session(FakeBackend(), script, FakeEmbedder())
        decoded = protocol.decode_agent_frame(json.dumps(done))
        assert [m.get("validates") for m in hello["models"] if m["kind"] == "embedding"] == [True]
        # The node's own check: its hash from what it sent and received, the announced key.
        proof = chunk_proof(decoded, texts=TEXTS, model_id="fake-embedding", public_key=hello["signing_key"],
                            required=True)
        assert proof["signature"] == done["signature"] and proof["hash"] == done["commitment"]

    run(scenario)


def test_a_chunk_signed_by_another_key_or_over_other_vectors_or_unsigned_is_rejected_on_the_verified_tier():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    frame = _signed_frame(key)
    assert chunk_proof(frame, texts=TEXTS, model_id="m", public_key=public_key_text(key), required=True)["signature"]
    with pytest.raises(ChunkRejected, match="signed"):
        chunk_proof(frame, texts=TEXTS, model_id="m", public_key=public_key_text(other), required=True)
    altered = {**frame, "data": [[0.25, -1.5, 3.0000002], *VECTORS[1:]]}  # one float32 step
    with pytest.raises(ChunkRejected):
        chunk_proof(altered, texts=TEXTS, model_id="m", public_key=public_key_text(key), required=True)
    with pytest.raises(ChunkRejected):  # signed over other texts than the node sent
        chunk_proof(frame, texts=TEXTS[:2] + ["Tokyo"], model_id="m", public_key=public_key_text(key), required=True)
    unsigned = protocol.embed_done(job_id="j", model_digest=frame["model_digest"], data=VECTORS, prompt_tokens=3)
    with pytest.raises(ChunkRejected, match="no signature"):
        chunk_proof(unsigned, texts=TEXTS, model_id="m", public_key=public_key_text(key), required=True)
    # The open tier accepts an unsigned chunk, and records no signature for it.
    assert chunk_proof(unsigned, texts=TEXTS, model_id="m", public_key="", required=False)["signature"] is None


def test_embed_done_carries_commitment_and_signature_as_strings_or_not_at_all():
    protocol.decode_agent_frame(json.dumps(protocol.embed_done(job_id="j", model_digest="d", data=VECTORS,
                                                               prompt_tokens=1)))
    with pytest.raises(protocol.ProtocolError, match="signature"):
        protocol.decode_agent_frame(json.dumps({**protocol.embed_done(job_id="j", model_digest="d", data=VECTORS,
                                                                      prompt_tokens=1), "signature": 7}))


def _proof(key, chunks):
    return {"worker_public_key": public_key_text(key),
            "commitment": {"chunks": [chunk_proof(frame, texts=texts, model_id="m", public_key=public_key_text(key),
                                                  required=True) for frame, texts in chunks]}}


def test_a_proof_is_checked_offline_from_the_vectors_received_and_fails_on_any_change(tmp_path, capsys):
    key = Ed25519PrivateKey.generate()
    second = [[9.0, 8.0, 7.0]]
    proof = _proof(key, [(_signed_frame(key), TEXTS), (_signed_frame(key, ["more"], second), ["more"])])
    vectors = VECTORS + second
    assert embedding_proof_problems(proof, vectors=vectors, texts=TEXTS + ["more"]) == []
    assert embedding_proof_problems(proof, vectors=vectors[:3] + [[9.0, 8.0, 7.5]])[0].startswith("chunk 1")
    assert embedding_proof_problems(proof, vectors=vectors, texts=TEXTS + ["less"])[0].startswith("chunk 1")
    assert any("signature" in p for p in embedding_proof_problems(
        {**proof, "worker_public_key": public_key_text(Ed25519PrivateKey.generate())}, vectors=vectors))

    # The command reads an embeddings response in either encoding.
    response = {"data": [{"index": i, "embedding": base64.b64encode(float32_bytes([v])).decode()}
                         for i, v in enumerate(vectors)]}
    assert float32_bytes(response_vectors(response)) == float32_bytes(vectors)
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "reply.json").write_text(json.dumps(response))
    assert check_proof([str(tmp_path / "proof.json"), "--vectors", str(tmp_path / "reply.json")]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 chunk(s) signed by")
    response["data"][0]["embedding"] = base64.b64encode(float32_bytes([[0.25, -1.5, 3.5]])).decode()
    (tmp_path / "reply.json").write_text(json.dumps(response))
    assert check_proof([str(tmp_path / "proof.json"), "--vectors", str(tmp_path / "reply.json")]) == 1


def test_the_cheating_embedder_substitutes_and_never_offers_to_validate():
    honest = FakeEmbedder()
    [vector] = CheatingEmbedder(honest, mode="cached", rate=1.0, dimensions=2).embed(
        "fake-embedding", ["anything"], threading.Event()).data
    assert abs(sum(x * x for x in vector) - 1) < 1e-6 and not honest.inputs  # a fixed unit vector, no model run
    cached = CheatingEmbedder(honest, mode="cached", rate=0.5, rng=random.Random(3), dimensions=2)
    answers = [cached.embed("fake-embedding", ["x" * n], threading.Event()).data[0] for n in range(1, 31)]
    assert 5 < cached.cheated < 25 and len(honest.inputs) == 30 - cached.cheated
    first_honest = next(a for n, a in enumerate(answers, 1) if a == [float(n), 1.0])
    assert answers.count(first_honest) > 1  # replayed for later inputs
    truncate = CheatingEmbedder(FakeEmbedder(), mode="truncate", rate=1.0)
    assert truncate.embed("fake-embedding", ["one two three four five six"], threading.Event()).data == [[7.0, 1.0]]
    assert not can_validate(truncate, "embedding") and can_validate(honest, "embedding")
    assert not can_validate(honest, "chat")  # embedding alone is no way to score a chat answer
    with pytest.raises(ValueError):
        CheatingEmbedder(honest, mode="noise", rate=0.5)
