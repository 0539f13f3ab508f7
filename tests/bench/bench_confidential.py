"""What the confidential tier's cryptography adds to one request (docs/confidential.md), measured
on this machine with the code that runs it (client.confidential, client.sealing, client.proof):

  client   seal the request (a fresh reply key pair + one HPKE seal), open N sealed pieces,
           verify the enclave's Ed25519 signature over request and answer
  enclave  open the request, seal N pieces (one HPKE envelope with the answer key, then
           AES-256-GCM per piece: client.answer_stream), sign

for an answer of N pieces (default 64) and a request body of about 1 KiB. Network, attestation
(once per enclave per --attestation-ttl in the proxy) and generation are not included.
Prints p50/p99/mean per step over R requests, the cost per chunk, and p50 against a 1 ms target.

Run: .venv/bin/python tests/bench/bench_confidential.py [--pieces 64] [--requests 500]
         [--body-bytes 1024]
Prints its figures; asserts nothing (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cryptography  # noqa: E402

from client import proof, sealing  # noqa: E402
from client.answer_stream import AnswerSealer  # noqa: E402
from client.attestation.simulated import SimulatedEnclave  # noqa: E402
from client.confidential import AttestedEnclave, SealedAnswer, sealed_request  # noqa: E402
from client.sealing import REQUEST_INFO  # noqa: E402

TARGET_MS = 1.0
WARMUP = 20
PIECE = "tok "  # about one token of English text
CLIENT_STEPS = ("seal request", "open pieces", "verify signature")
ENCLAVE_STEPS = ("open request", "seal pieces", "sign")


def request_body(size: int) -> bytes:
    """An OpenAI chat request of about `size` bytes, as the proxy seals it."""
    body = {"model": "llama-3.1-8b-instruct", "max_tokens": 256, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a careful assistant."},
                         {"role": "user", "content": ""}]}
    padding = max(0, size - len(json.dumps(body, separators=(",", ":"))))
    body["messages"][1]["content"] = ("Summarise this record. " * (padding // 23 + 1))[:padding]
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def attested(enclave: SimulatedEnclave) -> AttestedEnclave:
    """The enclave as a client holds it after `attest` (verification is not timed here)."""
    return AttestedEnclave(worker="bench", enclave_key=enclave.public_key,
                           signing_key=enclave.signing_key, model_digest="sha256:" + "0" * 64,
                           code_measurement="bench", kind="simulated", simulated=True,
                           nonce="", verified_at=time.monotonic())


def one_request(enclave: SimulatedEnclave, client_view: AttestedEnclave, body: bytes,
                pieces: list[str]) -> dict[str, float]:
    """Seconds per step for one request, each step timed on its own."""
    timings, clock = {}, time.perf_counter
    started = clock()
    peer_sealed, reply_private_key = sealed_request(client_view, body)
    timings["seal request"] = clock() - started

    started = clock()
    plaintext = sealing.open_sealed(enclave.private_key, peer_sealed["request"], info=REQUEST_INFO)
    timings["open request"] = clock() - started
    started = clock()
    sealer = AnswerSealer(peer_sealed["reply_key"])
    sealed = [sealer.seal_piece(piece.encode("utf-8")) for piece in pieces]
    timings["seal pieces"] = clock() - started
    started = clock()
    signature = proof.answer_sign(enclave.signing_private_key, plaintext, "".join(pieces))
    timings["sign"] = clock() - started

    answer = SealedAnswer(client_view, body, reply_private_key)
    started = clock()
    for envelope in sealed:
        answer.open_next(envelope)
    timings["open pieces"] = clock() - started
    started = clock()
    ok = answer.signature_ok(signature)
    timings["verify signature"] = clock() - started
    if not ok or answer.text != "".join(pieces):
        raise SystemExit("the round trip failed: this benchmark measures nothing")
    timings["client total"] = sum(timings[step] for step in CLIENT_STEPS)
    timings["enclave total"] = sum(timings[step] for step in ENCLAVE_STEPS)
    timings["both"] = timings["client total"] + timings["enclave total"]
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=64, help="sealed pieces per answer")
    parser.add_argument("--requests", type=int, default=500, help="requests measured")
    parser.add_argument("--body-bytes", type=int, default=1024, help="request body size")
    args = parser.parse_args()

    enclave = SimulatedEnclave()
    client_view = attested(enclave)
    body = request_body(args.body_bytes)
    pieces = [PIECE] * args.pieces
    for _ in range(WARMUP):
        one_request(enclave, client_view, body, pieces)
    runs = [one_request(enclave, client_view, body, pieces) for _ in range(args.requests)]

    print(f"confidential tier, crypto per request: {args.pieces} pieces, {len(body)}-byte "
          f"request body, {args.requests} requests")
    print(f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{platform.machine()}")
    print(f"reproduce: .venv/bin/python tests/bench/bench_confidential.py --pieces {args.pieces} "
          f"--requests {args.requests} --body-bytes {args.body_bytes}\n")
    print(f"{'step':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [("client", step) for step in (*CLIENT_STEPS, "client total")] + \
        [("enclave", step) for step in (*ENCLAVE_STEPS, "enclave total")] + [("", "both")]
    summary = {}
    for side, step in rows:
        values = [run[step] * 1000 for run in runs]
        summary[step] = (percentile(values, 0.5), percentile(values, 0.99), statistics.mean(values))
        label = step if step.endswith(("total", "both")) else f"{side} {step}"
        label = label.replace("pieces", f"{args.pieces} pieces")
        print(f"{label:<34}" + "".join(f"{figure:9.3f}" for figure in summary[step]))

    per_chunk = {step: summary[step][0] * 1000 / max(1, args.pieces)
                 for step in ("seal pieces", "open pieces")}
    print(f"\nper chunk (p50): enclave seals one in {per_chunk['seal pieces']:.1f} µs, "
          f"client opens one in {per_chunk['open pieces']:.1f} µs")
    for step in ("client total", "enclave total", "both"):  # both: one request end to end
        p50 = summary[step][0]
        verdict = "within" if p50 <= TARGET_MS else f"{p50 / TARGET_MS:.1f}x over"
        print(f"{step:<14} p50 {p50:.3f} ms vs the {TARGET_MS:.0f} ms target: {verdict}")


if __name__ == "__main__":
    main()
