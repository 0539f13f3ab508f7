// The network workflow page (apps/marketplace/workflow.py): "Run workflow" opens /ws/workflow/
// and each step the node reports fills its card. The confidential step's prompt is sealed here
// (confidential.js) and its answer opened here: the node is asked for nothing in the clear.
import * as confidential from "./confidential.js";

const steps = document.getElementById("steps");
const run = document.getElementById("run");
const overall = document.getElementById("workflow-state");
let socket = null;
let sealed = null;  // the confidential step's enclave, body and opener
let opening = Promise.resolve();

function card(name) { return document.getElementById(`step-${name}`); }

function fact(name, label, value) {
  const list = card(name).querySelector(".facts");
  const term = document.createElement("dt");
  term.textContent = label;
  const detail = document.createElement("dd");
  detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
  list.append(term, detail);
}

function setState(name, text) { card(name).querySelector(".state").textContent = text; }

function credits(micro) { return `${(micro / 10000).toFixed(2)} credits (${micro} micro-USDC)`; }
function peer(base) { return `${(base / 1e9).toLocaleString("en")} PEER`; }

async function seal(message) {
  try {
    const enclave = await confidential.attest(message.model);
    const body = new TextEncoder().encode(JSON.stringify({model: message.model,
      messages: [{role: "user", content: message.prompt}]}));
    const {peerSealed, opener} = await confidential.seal(enclave, body);
    sealed = {enclave, body, opener};
    fact("confidential", "Enclave attested by this page", `${enclave.kind}${enclave.simulated ? " (SIMULATED: no hardware guarantee)" : ""}`);
    socket.send(JSON.stringify({type: "sealed", peer_sealed: peerSealed}));
  } catch (error) {
    fact("confidential", "Could not seal", error.message);
    socket.send(JSON.stringify({type: "sealed", error: error.message}));
  }
}

function handle(message) {
  if (message.type === "seal") { seal(message); return; }
  if (message.type === "error") { overall.textContent = message.message; return; }
  const {step, state} = message;
  if (step === "workflow") {
    overall.textContent = state === "done" ? "Done." : state === "failed" ? `Failed: ${message.message}` : "Running…";
    if (message.balance_credits !== undefined) document.getElementById("balance").textContent = message.balance_credits;
    if (state !== "running") run.disabled = false;
    return;
  }
  if (state === "token") {
    card(step).querySelector(".tokens").textContent += message.text;
    return;
  }
  if (state === "sealed_piece") {
    opening = opening.then(async () => {
      card(step).querySelector(".tokens").textContent += await sealed.opener.open(message.sealed);
    });
    return;
  }
  setState(step, state);
  if (state === "routed") {
    fact(step, "Routed to", `${message.worker} (rank ${message.rank} of ${message.candidates})`);
    fact(step, "Score", `${message.score} = ` + Object.entries(message.parts).map(([k, v]) => `${k} ${v}`).join(", "));
  } else if (step === "open" && state === "done") {
    fact(step, "Charged", `${credits(message.charged_micro_usdc)} for ${message.completion_tokens} tokens`);
  } else if (state === "committed") {
    fact(step, "Commitment", message.hash);
    fact(step, "Worker's Ed25519 signature", message.signature);
    fact(step, "Signature checked on the node", message.signature_valid ? "valid" : "INVALID");
  } else if (step === "settled") {
    fact(step, "Charged", credits(message.charged_micro_usdc));
    fact(step, "Worker (70%)", `${credits(message.worker_micro_usdc)}: ${message.percent.worker}%`);
    fact(step, "Stakers' pool (24%)", `${credits(message.stakers_pool_micro_usdc)}: ${message.percent.stakers_pool}%`);
    fact(step, "Treasury (6%)", `${credits(message.treasury_micro_usdc)}: ${message.percent.treasury}%`);
  } else if (step === "confidential" && state === "sealed") {
    fact(step, "Sealed request (ciphertext, first bytes)", message.ciphertext);
    fact(step, "Messages the node stored", message.stored_messages.length ? message.stored_messages : "none");
  } else if (step === "confidential" && state === "done") {
    const inFlight = sealed;
    opening = opening.then(async () => {
      const text = card(step).querySelector(".tokens").textContent;
      const ok = await confidential.signatureOk(inFlight.enclave, message.enclave_signature, inFlight.body, text);
      fact(step, "Enclave signature checked in this page", ok ? "valid" : "INVALID");
    });
  } else if (step === "cheater" && state === "challenged") {
    fact(step, "Challenged by you", `job ${message.job_id}, bond ${credits(message.bond_held_micro_usdc)}`);
  } else if (step === "cheater" && (state === "slashed" || state === "not proven")) {
    fact(step, "Re-executions", message.validations.map((v) => `round ${v.round}: ${v.outcome}`).join("; "));
    if (message.slash) {
      fact(step, "Slashed from the bond", peer(message.slash.amount));
      fact(step, "Paid to you, the challenger", peer(message.slash.to_challenger));
      fact(step, "Burned", peer(message.slash.burned));
    }
    fact(step, "Bond before / after", `${peer(message.bond_before)} / ${peer(message.bond)}`);
    fact(step, "$PEER burned in all, before / after", `${peer(message.burned_before)} / ${peer(message.burned)}`);
  } else if (state === "skipped" || state === "failed") {
    fact(step, state === "skipped" ? "Skipped" : "Failed", message.message);
  }
}

run.addEventListener("click", () => {
  run.disabled = true;
  for (const item of steps.children) {
    item.querySelector(".state").textContent = "waiting";
    item.querySelector(".facts").innerHTML = "";
    const tokens = item.querySelector(".tokens");
    if (tokens) tokens.textContent = "";
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${steps.dataset.socket}`);
  socket.addEventListener("open", () => socket.send(JSON.stringify({type: "run"})));
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  socket.addEventListener("close", () => { run.disabled = false; });
  overall.textContent = "Starting…";
});
