// The chat page: one WebSocket to /ws/chat/ (apps/chat/consumers.py), tokens appended as they
// arrive, a stop button, and the 402 turned into "buy credits" with the USDC instructions. A
// confidential message is sealed here (confidential.js) and its answer opened here.
import * as confidential from "./confidential.js";

{
  const root = document.getElementById("chat");
  const form = document.getElementById("composer");
  const input = document.getElementById("content");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  const status = document.getElementById("status");
  const list = document.getElementById("messages");
  const payment = document.getElementById("payment");
  let conversation = root.dataset.conversation || null;
  let answer = null;  // the <li> being streamed into
  let socket = null;
  let sealed = null;  // the confidential message in flight: its enclave, body and opener
  let opening = Promise.resolve();  // sealed pieces are opened strictly in order
  const sealedHistory = [];  // a confidential conversation's messages live only in this page
  const deviceHistory = [];  // and so do an on-device conversation's
  let device = null;  // the on-device engine, loaded on first use
  let deviceStop = null;  // aborts the on-device generation

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socket}`);
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      busy(false);
      status.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, 2000);
    });
    socket.addEventListener("open", () => { status.textContent = ""; });
  }

  function bubble(role, text) {
    const item = document.createElement("li");
    item.className = `message ${role}`;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.appendChild(body);
    list.appendChild(item);
    item.scrollIntoView({block: "end"});
    return item;
  }

  function busy(on) {
    send.disabled = on;
    stop.hidden = !on;
  }

  function handle(message) {
    if (message.type === "started") {
      conversation = message.conversation;
      history.replaceState(null, "", `/chat/${conversation}/`);
      status.textContent = `Routed (${message.tier}); generating…`;
    } else if (message.type === "delta") {
      answer.querySelector(".text").textContent += message.text;
    } else if (message.type === "sealed_delta") {
      const target = answer;
      opening = opening.then(async () => {
        target.querySelector(".text").textContent += await sealed.opener.open(message.sealed);
      }).catch((error) => { status.textContent = `A sealed piece did not open: ${error.message}`; });
    } else if (message.type === "done" || message.type === "stopped") {
      const meta = document.createElement("p");
      meta.className = "meta";
      meta.innerHTML = `${message.cost_credits} credits · <a href="${message.proof_url}">proof</a>`;
      answer.appendChild(meta);
      if (sealed) finishSealed(message, answer, meta);
      document.getElementById("balance").textContent = message.balance_credits;
      status.textContent = message.type === "stopped" ? "Stopped." : "";
      busy(false);
    } else if (message.type === "payment_required") {
      sealed = null;
      status.textContent = "Not enough credits.";
      offerCredits(message);
      answer.remove();
      busy(false);
    } else if (message.type === "error") {
      sealed = null;
      if (answer && !answer.querySelector(".text").textContent) answer.remove();
      status.textContent = `Error (${message.code}): ${message.message}`;
      busy(false);
    }
  }

  // The enclave's signature over the sealed request and the opened answer, checked here.
  function finishSealed(message, item, meta) {
    const inFlight = sealed;
    sealed = null;
    opening = opening.then(async () => {
      const text = item.querySelector(".text").textContent;
      const ok = await confidential.signatureOk(inFlight.enclave, message.enclave_signature, inFlight.body, text);
      const badge = document.createElement("span");
      badge.className = ok ? "verified" : "unverified";
      const kind = inFlight.enclave.simulated ? "simulated enclave: no hardware guarantee"
        : `${inFlight.enclave.kind}, evidence checked by the node`;
      badge.textContent = ok ? ` · sealed · enclave signature verified in this page (${kind})`
        : " · enclave signature INVALID";
      meta.appendChild(badge);
      if (ok && message.type === "done") sealedHistory.push({role: "assistant", content: text});
    });
  }

  async function sendSealed(content, model) {
    status.textContent = "Attesting the enclave…";
    const enclave = await confidential.attest(model);
    const messages = [...sealedHistory, {role: "user", content}];
    const body = new TextEncoder().encode(JSON.stringify({model, messages}));
    const {peerSealed, opener} = await confidential.seal(enclave, body);
    sealed = {enclave, body, opener};
    sealedHistory.push({role: "user", content});
    status.textContent = "Sealed; waiting for the enclave…";
    socket.send(JSON.stringify({type: "send", tier: "confidential", model, peer_sealed: peerSealed,
                                conversation: conversation ? Number(conversation) : null}));
  }

  // The model in this tab (browser_worker.js's Engine: the builtin GGUF, checked against its
  // digest, in WebAssembly): no socket, no request with the message.
  async function onDevice(content, model) {
    const names = (root.dataset.deviceNames || "").split(",");
    if (!names.includes(model)) throw new Error(`${model} cannot run in the browser; choose ${names.join(" or ")}`);
    const {Engine, formatChat, STOP_SEQUENCES} = await import("./local_model.js");
    if (!device) {
      const missing = Engine.unsupported();
      if (missing) throw new Error(`this browser lacks ${missing}`);
      const cores = navigator.hardwareConcurrency || 1;
      const engine = new Engine({wasm: root.dataset.deviceWasm, modelUrl: root.dataset.deviceUrl,
                                 digest: root.dataset.deviceDigest, contextLength: Number(root.dataset.deviceContext),
                                 threads: self.crossOriginIsolated ? Math.min(cores, Math.max(2, Math.floor(cores / 2))) : 1});
      await engine.load(({loaded, total}) => {
        status.textContent = `Downloading the model: ${(loaded / 2 ** 20).toFixed(0)} of ${((total || 0) / 2 ** 20).toFixed(0)} MiB`;
      },
                        (phase) => { status.textContent = phase; });
      device = engine;
    }
    status.textContent = `Generating on this device (${device.describe()})…`;
    deviceHistory.push({role: "user", content});
    deviceStop = new AbortController();
    const text = answer.querySelector(".text");
    let finish;
    try {
      finish = await device.generate({prompt: formatChat(deviceHistory), stops: STOP_SEQUENCES, temperature: 0.7,
                                      topP: 1, maxTokens: 256, seed: Math.floor(Math.random() * 2 ** 31)},
                                     (piece) => { text.textContent += piece; }, deviceStop.signal);
    } catch (error) {
      if (!deviceStop.signal.aborted) throw error;
      finish = {reason: "cancelled"};
    }
    deviceHistory.push({role: "assistant", content: text.textContent});
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = `on this device · nothing left the browser · ${finish.reason === "cancelled" ? "stopped" : "free"}`;
    answer.appendChild(meta);
    status.textContent = finish.reason === "cancelled" ? "Stopped." : "";
  }

  function offerCredits(message) {
    payment.hidden = false;
    payment.innerHTML = "";
    const text = document.createElement("p");
    text.textContent = `This message is quoted at ${message.price_credits} credits; you have ${message.balance_credits}.`;
    const buy = document.createElement("button");
    buy.type = "button";
    buy.textContent = "Buy 10 USDC of credits";
    buy.addEventListener("click", () => buyCredits(10));
    payment.append(text, buy);
  }

  async function buyCredits(usdc) {
    const csrf = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    const response = await fetch(root.dataset.buy || "/credits/buy", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf ? csrf.split("=")[1] : ""},
      body: JSON.stringify({account: "me", usdc: usdc}),
    });
    const body = await response.json();
    const out = document.createElement("div");
    if (!response.ok) {
      out.textContent = body.error ? body.error.message : `The node refused the purchase (${response.status}).`;
    } else {
      out.innerHTML = "<p>Pay with any Solana wallet (Solana Pay):</p>";
      const facts = document.createElement("dl");
      for (const [label, value] of [["Amount", `${body.usdc} USDC`], ["To", body.recipient],
                                    ["Token (mint)", body.mint], ["Reference", body.reference]]) {
        const term = document.createElement("dt"); term.textContent = label;
        const detail = document.createElement("dd"); detail.textContent = value;
        facts.append(term, detail);
      }
      const link = document.createElement("a");
      link.href = body.url; link.textContent = "Open in a wallet";
      out.append(facts, link);
    }
    payment.appendChild(out);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (!content || send.disabled || !socket || socket.readyState !== WebSocket.OPEN) return;
    payment.hidden = true;
    bubble("user", content);
    answer = bubble("assistant", "");
    input.value = "";
    busy(true);
    const model = document.getElementById("model").value;
    const tier = document.getElementById("tier").value;
    if (tier === "device") {
      onDevice(content, model).catch((error) => {
        status.textContent = `On this device: ${error.message}`;
        if (!answer.querySelector(".text").textContent) answer.remove();
      }).finally(() => { deviceStop = null; busy(false); });
      return;
    }
    if (tier === "confidential") {
      sendSealed(content, model).catch((error) => {
        sealed = null;
        answer.remove();
        status.textContent = `Not sent: ${error.message}`;
        busy(false);
      });
      return;
    }
    status.textContent = "Waiting for a worker…";
    socket.send(JSON.stringify({type: "send", conversation: conversation ? Number(conversation) : null,
                                model, tier, content}));
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => {
    if (deviceStop) deviceStop.abort();
    else socket.send(JSON.stringify({type: "stop"}));
  });
  connect();
}
