// The browser worker (/workers/browser/, apps/workers/views_browser.py): this tab joins the network
// as an open-tier worker over the agent protocol (docs/protocol.md, worker/protocol.py). It runs the
// builtin agent's model (the same GGUF, announced under the same id and digest as
// worker/backends/builtin.py) in WebAssembly with wllama, on the CPU, and formats chat jobs exactly
// as worker/prompt.py does, stop sequences included: the node counts a job's prompt tokens with
// that format, whoever runs it.
import { WllamaAbortError } from "@wllama/wllama";

import {
  CONTROL_TEXT, Engine, JobError, formatChat, isObject, jobPrompt, number, sampling,
} from "./local_model.js";

// What the tests (and the chat page, through local_model.js) use of the model code.
export { Engine, PREAMBLE, STOP_SEQUENCES, StopStream, formatChat, jobPrompt, messageText, sampling } from "./local_model.js";

// ---- the agent link --------------------------------------------------------------------------

const AGENT_VERSION = "browser-wllama/1";
// The node gives up on us: an unknown token, a revoked worker, another tab took over the token.
const FATAL_CLOSES = { 4001: "the node does not know this worker's token",
                       4003: "this worker was revoked", 4004: "another connection took this worker over" };

export class Link {
  constructor({ url, token, engine, model, name, ui }) {
    Object.assign(this, { url, token, engine, model, name, ui });
    this.socket = null;
    this.job = null;  // {id, abort: AbortController, seq (the next delta's), started, firstToken}
    this.heartbeat = null;
    this.stopping = false;
    this.attempt = 0;
  }

  start() {
    this.stopping = false;
    this.connect();
  }

  stop() {
    this.stopping = true;
    this.socket?.close(1000, "stopped by the operator");
  }

  connect() {
    this.ui.state("Connecting to the node…");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => socket.send(JSON.stringify(this.hello())));
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (isObject(frame)) this.dispatch(frame);
    });
    socket.addEventListener("close", (event) => this.closed(socket, event));
  }

  hello() {
    const threads = this.engine.wllama.getNumThreads();
    return {
      type: "hello", protocol: 1, token: this.token, agent_version: AGENT_VERSION, name: this.name,
      backends: ["wllama"],
      models: [{ id: this.model.id, digest: this.model.digest, backend: "wllama",
                 context_length: this.model.contextLength, kind: "chat", validates: false }],
      hardware: { cpu: "browser (WebAssembly)", threads, cpu_count: navigator.hardwareConcurrency || null,
                  ram_gb: navigator.deviceMemory ?? null, arch: "wasm64", os: navigator.platform || null },
      attestation: null, signing_key: null,
    };
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    clearInterval(this.heartbeat);
    this.abandonJob();
    this.ui.worker(null);
    if (this.stopping) {
      this.ui.state("Stopped. The model stays loaded: Start worker reconnects.");
      this.ui.stopped();
      return;
    }
    if (FATAL_CLOSES[event.code]) {
      this.ui.state(`Disconnected for good: ${FATAL_CLOSES[event.code]}. Start worker registers a new one.`, true);
      this.ui.stopped(true);
      return;
    }
    // As the bundled agent: exponential backoff with jitter, from 1 s up to 30 s.
    const delay = Math.min(30, 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.ui.state(`Disconnected (${event.code || "no code"}); reconnecting in ${delay.toFixed(1)} s…`);
    setTimeout(() => { if (!this.stopping) this.connect(); }, delay * 1000);
  }

  send(frame) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  dispatch(frame) {
    const type = frame.type;
    if (type === "welcome") {
      this.attempt = 0;
      const seconds = typeof frame.heartbeat_interval === "number" && frame.heartbeat_interval > 0
        ? frame.heartbeat_interval : 10;
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(() => this.send({ type: "heartbeat" }), seconds * 1000);
      this.ui.worker(frame.worker_id);
      this.ui.log(`Connected as worker ${frame.worker_id}; heartbeat every ${seconds} s.`);
      this.ui.state("Connected: idle, waiting for jobs.");
    } else if (type === "job.assign") {
      this.assign(frame);
    } else if (type === "job.cancel") {
      if (this.job && this.job.id === frame.job_id) {
        this.ui.log(`Job ${frame.job_id}: cancelled by the node (${frame.reason || "no reason"}).`);
        this.job.abort.abort();
      }
    } else if (type === "validate.assign" && typeof frame.job_id === "string") {
      this.refuse(frame.job_id, this.job ? "busy" : "unsupported",
                  this.job ? `worker is running job ${this.job.id}` : "the browser worker cannot score outputs");
    } else if (type === "embed.assign" && typeof frame.job_id === "string") {
      this.refuse(frame.job_id, this.job ? "busy" : "model_unavailable",
                  this.job ? `worker is running job ${this.job.id}` : "this worker serves no embedding model");
    } else if (type === "attest.request" && typeof frame.request_id === "string") {
      this.send({ type: "attest.error", request_id: frame.request_id, code: "no_enclave",
                  message: "a browser worker runs no enclave" });
    } else if (type === "error") {
      this.ui.log(`The node says: ${frame.code}: ${frame.message}`, true);
    }
  }

  refuse(jobId, code, message) {
    this.ui.log(`Job ${jobId} refused: ${code}: ${message}`);
    this.send({ type: "job.error", job_id: jobId, code, message });
  }

  // The bundled agent's checks (worker/agent.py _check), in its order, before job.accepted.
  check(frame) {
    if (this.job) return ["busy", `worker is running job ${this.job.id}`];
    if (frame.sealed !== undefined && frame.sealed !== null) {
      return ["model_unavailable", "a browser worker runs no enclave"];
    }
    if (frame.model_digest !== this.model.digest) {
      return ["model_unavailable", `this worker serves ${this.model.id} (${this.model.digest})`];
    }
    const { messages, prompt, params } = frame;
    if (params !== undefined && params !== null && !isObject(params)) {
      return ["invalid_job", "params must be an object"];
    }
    let text;
    if (prompt !== undefined && prompt !== null) {
      if (typeof prompt !== "string") return ["invalid_job", "prompt must be a string"];
      text = prompt;
    } else {
      if (!Array.isArray(messages) || !messages.every(isObject)) {
        return ["invalid_job", "messages must be a list of objects"];
      }
      try {
        text = formatChat(messages);
      } catch (exc) {
        return ["invalid_job", `messages could not be formatted: ${exc.message}`];
      }
    }
    if (CONTROL_TEXT.test(text)) {
      return ["invalid_job", "the prompt holds control-token text, which this worker's tokenizer would read "
              + "as a control token"];
    }
    return null;
  }

  assign(frame) {
    if (typeof frame.job_id !== "string") return;
    const refusal = this.check(frame);
    if (refusal) {
      this.refuse(frame.job_id, ...refusal);
      return;
    }
    const job = { id: frame.job_id, abort: new AbortController(), seq: 0, started: performance.now(),
                  firstToken: null };
    this.job = job;
    this.send({ type: "job.accepted", job_id: job.id });
    this.ui.job(job.id);
    this.ui.state(`Serving job ${job.id}…`);
    this.run(job, frame).finally(() => {
      if (this.job === job) this.job = null;
      this.ui.job(null);
      if (this.socket?.readyState === WebSocket.OPEN) this.ui.state("Connected: idle, waiting for jobs.");
    });
  }

  async run(job, frame) {
    let finish;
    try {
      const wanted = sampling(frame.params || {});
      const [prompt, formatStops] = jobPrompt({ messages: frame.messages, prompt: frame.prompt });
      finish = await this.engine.generate({
        prompt, stops: [...wanted.stops, ...formatStops], temperature: wanted.temperature ?? 1,
        topP: wanted.topP ?? 1, maxTokens: wanted.maxTokens, seed: wanted.seed,
      }, (text) => {
        job.firstToken ??= performance.now();
        this.send({ type: "job.delta", job_id: job.id, seq: job.seq, text });
        job.seq += 1;
      }, job.abort.signal);
    } catch (exc) {
      if (exc instanceof WllamaAbortError || job.abort.signal.aborted) {
        finish = { reason: "cancelled", completionTokens: job.seq };
      } else {
        const code = exc instanceof JobError ? exc.code
          : /context/i.test(exc.message || "") ? "context_length_exceeded" : "backend_error";
        this.ui.log(`Job ${job.id} failed: ${code}: ${exc.message}`, true);
        this.send({ type: "job.error", job_id: job.id, code, message: String(exc.message || exc) });
        return;
      }
    }
    this.send({ type: "job.done", job_id: job.id, finish_reason: finish.reason, model_digest: this.model.digest,
                usage: { completion_tokens: finish.completionTokens } });
    this.ui.served(job, finish);
  }

  abandonJob() {
    // The link is gone: the node has failed the job already; stop generating.
    this.job?.abort.abort();
  }
}

// ---- the page --------------------------------------------------------------------------------

function page(root) {
  const $ = (id) => document.getElementById(id);
  const form = $("bw-controls");
  const start = $("bw-start");
  const stop = $("bw-stop");
  const threads = $("bw-threads");
  const progress = $("bw-progress");
  const progressText = $("bw-progress-text");
  const data = root.dataset;
  const model = { id: data.modelId, digest: data.modelDigest, contextLength: Number(data.contextLength) };
  let engine = null;
  let link = null;
  let served = 0;

  // Several threads need SharedArrayBuffer, which this page has when cross-origin isolated. By
  // default half the logical cores (wllama's choice), but two where there are two: on a 2-core
  // machine the second thread nearly doubled the speed (7 -> 14 tokens/s).
  const cores = navigator.hardwareConcurrency || 1;
  const most = self.crossOriginIsolated ? cores : 1;
  const usual = Math.min(most, Math.max(2, Math.floor(cores / 2)));
  for (let n = 1; n <= most; n += 1) threads.add(new Option(String(n), String(n), false, n === usual));

  const ui = {
    state(text, error = false) {
      $("bw-state").textContent = text;
      $("bw-state").classList.toggle("error", error);
    },
    log(text, error = false) {
      const item = document.createElement("li");
      item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
      if (error) item.className = "error";
      $("bw-log").prepend(item);
      while ($("bw-log").children.length > 30) $("bw-log").lastChild.remove();
    },
    worker(id) {
      $("bw-worker").textContent = id ? `${id} (connected)` : (link ? "disconnected" : "not registered");
    },
    job(id) {
      $("bw-job").textContent = id || "none";
    },
    served(job, finish) {
      served += 1;
      const seconds = (performance.now() - job.started) / 1000;
      const generating = job.firstToken ? (performance.now() - job.firstToken) / 1000 : 0;
      // The first token also waits for the prompt; the rate counts the ones after it.
      const rate = generating > 0 && finish.completionTokens > 1 ? (finish.completionTokens - 1) / generating : null;
      $("bw-served").textContent = String(served);
      $("bw-speed").textContent = `${finish.completionTokens} tokens in ${seconds.toFixed(1)} s`
        + (rate ? ` (${rate.toFixed(1)} tokens/s after the first)` : "");
      $("bw-speed").dataset.tokensPerSecond = rate ? rate.toFixed(2) : "";
      ui.log(`Job ${job.id}: ${finish.reason}, ${finish.completionTokens} tokens in ${seconds.toFixed(1)} s.`);
    },
    stopped(forGood = false) {
      if (forGood) link = null;  // its token is no use any more
      start.disabled = false;
      stop.disabled = true;
    },
  };

  async function register() {
    const body = new FormData();
    body.set("name", $("bw-name").value);
    const response = await fetch(data.register, { method: "POST", body, headers: { "X-CSRFToken": data.csrf },
                                                  credentials: "same-origin" });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const why = answer.errors ? Object.values(answer.errors).join(" ") : `HTTP ${response.status}`;
      throw new Error(`could not register the worker: ${why}`);
    }
    ui.log(`Registered worker "${answer.name}" (${answer.worker_id}) for the open tier.`);
    return answer;
  }

  async function begin() {
    start.disabled = true;
    try {
      if (!engine) {
        const missing = Engine.unsupported();
        if (missing) throw new Error(`this browser lacks ${missing}, which the WebAssembly build needs`);
        const candidate = new Engine({ wasm: data.wasm, modelUrl: data.modelUrl, digest: model.digest,
                                       contextLength: model.contextLength, threads: Number(threads.value) });
        threads.disabled = true;
        await candidate.load(({ loaded, total }) => {
          const size = total || Number(data.modelSize);
          progress.value = size ? Math.min(100, (100 * loaded) / size) : 0;
          progressText.textContent = `${(loaded / 2 ** 20).toFixed(0)} of ${(size / 2 ** 20).toFixed(0)} MiB`;
        }, (phase) => ui.state(phase));
        engine = candidate;
        progress.value = 100;
        $("bw-engine").textContent = engine.describe();
        ui.log(`Model loaded: ${engine.describe()}.`);
      }
      if (!link) {
        ui.state("Registering the worker…");
        const { token, name } = await register();
        const scheme = location.protocol === "https:" ? "wss" : "ws";
        link = new Link({ url: `${scheme}://${location.host}${data.socket}`, token, engine, model, name, ui });
      }
      stop.disabled = false;
      link.start();
    } catch (exc) {
      ui.state(`Could not start: ${exc.message}`, true);
      ui.log(`Could not start: ${exc.message}`, true);
      console.error(exc);
      start.disabled = false;
      threads.disabled = Boolean(engine);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    begin();
  });
  stop.addEventListener("click", () => {
    stop.disabled = true;
    link?.stop();
  });
}

const root = document.getElementById("browser-worker");
if (root) page(root);
