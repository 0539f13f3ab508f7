// Confidential chat in the page (docs/confidential.md): the page attests the enclave itself,
// seals the request to it with HPKE (RFC 9180, @hpke/core), opens each sealed piece of the answer
// (AES-256-GCM, client/answer_stream.py) and checks the enclave's signature over request and
// answer (client/proof.py). The plaintext never leaves the page unsealed.
//
// What this page verifies itself: simulated evidence (its Ed25519 signature, the report-data
// binding of keys, model, code and this page's nonce). SEV-SNP and TDX evidence need the AMD and
// Intel chains, which the page does not check yet: it says so and relies on the node's verdict.
import { Aes128Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";

const SUITE_NAME = "X25519-HKDF-SHA256/HKDF-SHA256/AES-128-GCM";
const REQUEST_INFO = bytes("peercycles/request/v1");
const RESPONSE_INFO = bytes("peercycles/response/v1");
const KEY_AAD = bytes("peercycles/answer-key/v1");
const PIECE_AAD = bytes("peercycles/answer-piece/v1");
const STATEMENT_LABEL = bytes("peercycles/report-data/v1");
const SIMULATED_LABEL = bytes("peercycles/simulated-evidence/v1\n");
const ANSWER_LABEL = bytes("peercycles/enclave-answer/v1\n");

const suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Aes128Gcm() });

function bytes(text) { return new TextEncoder().encode(text); }
function b64(buffer) {
  const raw = new Uint8Array(buffer);
  let text = "";
  for (let at = 0; at < raw.length; at += 0x8000) text += String.fromCharCode(...raw.subarray(at, at + 0x8000));
  return btoa(text);
}
function unb64(text) { return Uint8Array.from(atob(text), (c) => c.charCodeAt(0)); }
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}
function field(raw) {
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, raw.length);
  return concat(length, raw);
}
async function sha256(data) { return new Uint8Array(await crypto.subtle.digest("SHA-256", data)); }
function same(a, b) { return a.length === b.length && a.every((x, i) => x === b[i]); }

async function ed25519Ok(publicKeyB64, signatureB64, message) {
  const key = await crypto.subtle.importKey("raw", unb64(publicKeyB64), { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, unb64(signatureB64), message);
}

// client/binding.py: SHA-256(fields) ‖ SHA-256(nonce).
async function reportData(evidence, nonce) {
  const statement = concat(field(STATEMENT_LABEL), field(unb64(evidence.enclave_public_key)),
                           field(unb64(evidence.signing_key)), field(bytes(evidence.model_digest)),
                           field(bytes(evidence.code_measurement)));
  return concat(await sha256(statement), await sha256(nonce));
}

// client/attestation/simulated.py: the label and the canonical JSON of every other field.
function simulatedMessage(evidence) {
  const body = {};
  for (const name of Object.keys(evidence).sort()) if (name !== "signature") body[name] = evidence[name];
  return concat(SIMULATED_LABEL, bytes(JSON.stringify(body)));
}

async function verifySimulated(evidence, nonce) {
  const problems = [];
  if (!(await ed25519Ok(evidence.platform_key, evidence.signature, simulatedMessage(evidence)))) {
    problems.push("signature does not verify");
  }
  if (!same(unb64(evidence.report_data), await reportData(evidence, nonce))) {
    problems.push("report data does not bind the keys, model, code and this page's nonce");
  }
  if (evidence.nonce !== b64(nonce)) problems.push("not this page's nonce");
  return problems;
}

// Attest the enclaves serving `model` with a fresh nonce; the first that passes.
export async function attest(model) {
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const url = `/chat/attestation.json?model=${encodeURIComponent(model)}&nonce=${encodeURIComponent(b64(nonce))}`;
  const response = await fetch(url, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : `attestation failed (${response.status})`);
  const refused = [];
  for (const enclave of body.enclaves) {
    const evidence = enclave.evidence;
    if (evidence.kind !== "simulated") {
      if (enclave.verdict && enclave.verdict.ok) {
        return { ...pick(enclave, evidence), checkedBy: "node", simulated: false };
      }
      continue;
    }
    const problems = await verifySimulated(evidence, nonce);
    if (evidence.enclave_public_key !== enclave.enclave_key || evidence.signing_key !== enclave.signing_key) {
      problems.push("the node listed other keys than the evidence's");
    }
    if (!problems.length) return { ...pick(enclave, evidence), checkedBy: "page", simulated: true };
    refused.push(`${enclave.worker}: ${problems.join("; ")}`);
  }
  throw new Error(`no enclave passed this page's checks${refused.length ? ": " + refused.join(" | ") : ""}`);
}

function pick(enclave, evidence) {
  return { worker: enclave.worker, enclaveKey: evidence.enclave_public_key, signingKey: evidence.signing_key,
           kind: evidence.kind, codeMeasurement: evidence.code_measurement };
}

// Seal `body` (the whole OpenAI request, as bytes) to the enclave: the peer_sealed object and
// the answer's opener, whose reply key is fresh for this request.
export async function seal(enclave, body) {
  const recipientPublicKey = await suite.kem.deserializePublicKey(unb64(enclave.enclaveKey));
  const sealed = await suite.seal({ recipientPublicKey, info: REQUEST_INFO }, body);
  const reply = await suite.kem.generateKeyPair();
  const replyKey = b64(await suite.kem.serializePublicKey(reply.publicKey));
  const request = { hpke: SUITE_NAME, enc: b64(sealed.enc), ciphertext: b64(sealed.ct) };
  return { peerSealed: { enclave_key: enclave.enclaveKey, reply_key: replyKey, request },
           opener: new AnswerOpener(reply.privateKey) };
}

export class AnswerOpener {
  constructor(replyPrivateKey) { this.replyPrivateKey = replyPrivateKey; this.key = null; this.seq = 0; }

  async open(sealed) {
    if (this.key === null) {
      if (!sealed.key) throw new Error("the first piece carries no answer key");
      const envelope = sealed.key;
      const raw = await suite.open({ recipientKey: this.replyPrivateKey, enc: unb64(envelope.enc),
                                     info: RESPONSE_INFO }, unb64(envelope.ciphertext), KEY_AAD);
      this.key = await crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["decrypt"]);
    } else if (sealed.key) {
      throw new Error("a second answer key mid-answer");
    }
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setBigUint64(4, BigInt(this.seq));
    const piece = await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: PIECE_AAD }, this.key,
                                              unb64(sealed.ciphertext));
    this.seq += 1;
    return new TextDecoder().decode(piece);
  }
}

// client/proof.py: Ed25519 over the label ‖ SHA-256(request body) ‖ SHA-256(answer).
export async function signatureOk(enclave, signature, body, answer) {
  if (!signature) return false;
  const message = concat(ANSWER_LABEL, await sha256(body), await sha256(bytes(answer)));
  try {
    return await ed25519Ok(enclave.signingKey, signature, message);
  } catch (error) {
    return false;
  }
}
