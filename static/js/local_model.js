// The builtin model in the page (shared by the browser worker and the chat's "on this device"):
// worker/prompt.py's chat format ported, the builtin backend's sampling, the wllama engine that runs
// the same GGUF in WebAssembly, and the stop-sequence stream.
import { Wllama, WllamaAbortError } from "@wllama/wllama";

// ---- worker/prompt.py, ported ----------------------------------------------------------------

const ROLE_LABELS = new Map([["system", "System"], ["user", "User"], ["assistant", "Assistant"],
                             ["developer", "System"]]);
export const PREAMBLE = "The following is a conversation between a user and a helpful, concise assistant.\n\n";
// Where a base model starts inventing the next turn; generation stops there.
export const STOP_SEQUENCES = ["\nUser:", "\nSystem:"];
// Python's str.strip() whitespace (str.isspace), which is not JavaScript's trim(): it has
// U+001C..U+001F and U+0085, and lacks U+FEFF.
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "g");

export const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// message_text: a string, or the text parts of a list (a text that is not a string fails, as
// Python's "".join would).
export function messageText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.filter((part) => isObject(part) && part.type === "text").map((part) => {
      const text = Object.hasOwn(part, "text") ? part.text : "";
      if (typeof text !== "string") throw new TypeError("a text part's text is not a string");
      return text;
    }).join("");
  }
  return "";
}

export function formatChat(messages) {
  const lines = [PREAMBLE];
  for (const message of messages) {
    const role = message.role;
    // A list or an object is unhashable: ROLE_LABELS.get raises in Python, so it does here.
    if (role !== null && typeof role === "object") throw new TypeError("a message's role is not hashable");
    const label = ROLE_LABELS.get(role) ?? "User";
    lines.push(`${label}: ${messageText(message.content).replace(PY_STRIP, "")}\n`);
  }
  lines.push("Assistant:");
  return lines.join("");
}

// job_prompt: (text to run, stop sequences the format adds).
export function jobPrompt({ messages, prompt }) {
  if (prompt !== null && prompt !== undefined) return [prompt, []];
  return [formatChat(messages || []), [...STOP_SEQUENCES]];
}

// ---- worker/backends/params.py, ported -------------------------------------------------------

export class JobError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function number(params, name, low, high) {
  const value = params[name];
  if (value === null || value === undefined) return null;
  if (typeof value !== "number" || !Number.isFinite(value) || value < low || value > high) {
    throw new JobError("invalid_params", `${name} must be a number in [${low}, ${high}]`);
  }
  return value;
}

export function sampling(params) {
  const maxTokens = params.max_tokens ?? null;
  if (maxTokens !== null && !(Number.isInteger(maxTokens) && maxTokens >= 1)) {
    throw new JobError("invalid_params", "max_tokens must be a positive integer");
  }
  const seed = params.seed ?? null;
  if (seed !== null && !Number.isSafeInteger(seed)) throw new JobError("invalid_params", "seed must be an integer");
  let stops = params.stop ?? [];
  if (typeof stops === "string") stops = [stops];
  if (!Array.isArray(stops) || !stops.every((s) => typeof s === "string")) {
    throw new JobError("invalid_params", "stop must be a string or a list of strings");
  }
  return { temperature: number(params, "temperature", 0, 2), topP: number(params, "top_p", 0, 1), maxTokens,
           seed, stops: stops.filter((s) => s) };
}

// As builtin.py's _llama_seed: llama.cpp reads 0xFFFFFFFF as "pick a random seed".
const SEED_SPACE = 0xFFFFFFFF;

function llamaSeed(seed) {
  if (seed !== null) return ((seed % SEED_SPACE) + SEED_SPACE) % SEED_SPACE;
  const draw = new Uint32Array(1);
  do crypto.getRandomValues(draw); while (draw[0] === SEED_SPACE);
  return draw[0];
}

// llama.cpp's tokenizer inside wllama reads control-token text in a prompt ("<end_of_turn>") as the
// control token; the builtin backend tokenizes with special=False and reads it as plain text.
// Gemma 3's control tokens (pad, eos, bos, unk, mask, the turn markers, </s>, <unusedN>): a prompt
// holding one is refused before acceptance, so the node gives the job to a worker that runs it
// as written.
export const CONTROL_TEXT = /<(?:pad|eos|bos|unk|mask|start_of_turn|end_of_turn|unused\d+)>|<\/s>/;

// ---- the engine: wllama on the CPU -----------------------------------------------------------

export class Engine {
  constructor({ wasm, modelUrl, digest, contextLength, threads }) {
    Object.assign(this, { wasm, modelUrl, digest, contextLength, threads });
    this.wllama = null;
  }

  static unsupported() {
    // The build served here needs JSPI and 64-bit memory (Chrome/Edge 137+); its fallback for
    // other browsers comes from a CDN, which this node does not depend on.
    if (!WebAssembly.Suspending) return "WebAssembly JSPI";
    try {
      new WebAssembly.Memory({ address: "i64", initial: 1n });
    } catch {
      return "64-bit WebAssembly memory";
    }
    return null;
  }

  async load(onProgress, onPhase) {
    const logger = { ...console, debug: () => {}, log: () => {} };
    this.wllama = new Wllama({ default: this.wasm }, { logger, parallelDownloads: 1 });
    this.wllama.setCompat(null);
    onPhase("Downloading the model…");
    const model = await this.wllama.modelManager.getModelOrDownload(
      { url: new URL(this.modelUrl, location.href).href }, { progressCallback: onProgress });
    const blobs = await model.open();
    onPhase("Checking the model's digest…");
    const bytes = await blobs[0].arrayBuffer();
    const found = "sha256:" + [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    if (found !== this.digest) {
      await model.remove();
      throw new Error(`the downloaded model's digest is ${found}, not ${this.digest}; removed it, try again`);
    }
    onPhase("Loading the model into WebAssembly…");
    // As builtin.py loads it: its context, batch sizes, no flash attention, full SWA cache. One
    // slot, no context shift, no prompt cache: each job runs from an empty cache.
    await this.wllama.loadModel(blobs, {
      n_ctx: this.contextLength, n_batch: 512, n_ubatch: 512, n_threads: this.threads, n_gpu_layers: 0,
      flash_attn: false, swa_full: true, n_parallel: 1, ctx_shift: false, cache_idle_slots: false,
      log_level: 3,
    });
  }

  describe() {
    const threads = this.wllama.getNumThreads();
    return `WebAssembly on the CPU, ${threads} thread${threads > 1 ? "s" : ""} `
      + `(llama.cpp ${Wllama.getLibllamaVersion()} in wllama)`;
  }

  // Streams text to onText; resolves to {reason, completionTokens}. Throws WllamaAbortError when
  // `signal` aborts (after handing on the text held back, as the builtin backend does).
  async generate({ prompt, stops, temperature, topP, maxTokens, seed }, onText, signal) {
    // Stop sequences are found here, not by llama.cpp's server inside wllama: when it ends at
    // max_tokens it drops the text it held back as a possible stop's start, which the builtin
    // backend sends (worker/backends/textstream.py).
    const stream = new StopStream(stops);
    const ending = new AbortController();
    const forward = () => ending.abort();
    signal.addEventListener("abort", forward);
    let reason = null;
    let stopped = false;
    let decoded = 0;
    let pieces = 0;
    try {
      await this.wllama.createCompletion({
        prompt, stream: true, abortSignal: ending.signal,
        // The builtin backend's sampler chain: only top_p and the temperature do anything.
        samplers: ["top_k", "typ_p", "top_p", "min_p", "temperature"],
        temperature, top_p: topP, top_k: 0, min_p: 0, typical_p: 1, repeat_penalty: 1,
        presence_penalty: 0, frequency_penalty: 0, seed: llamaSeed(seed), stop: [],
        ...(maxTokens === null ? {} : { max_tokens: maxTokens }),
        cache_prompt: false, timings_per_token: true,
        onData: (chunk) => {
          if (stopped) return;
          const choice = chunk.choices?.[0];
          decoded = chunk.timings?.predicted_n ?? decoded;
          if (choice?.text) {
            pieces += 1;
            const step = stream.feed(choice.text);
            if (step.text) onText(step.text);
            if (step.stopped) {
              stopped = true;
              ending.abort();  // wllama asks for no further token once this returns
            }
          }
          if (choice?.finish_reason) reason = choice.finish_reason;
        },
      });
    } catch (exc) {
      if (!(exc instanceof WllamaAbortError) || !stopped) {
        if (exc instanceof WllamaAbortError) {
          const tail = stream.flush();
          if (tail) onText(tail);
        }
        throw exc;
      }
    } finally {
      signal.removeEventListener("abort", forward);
    }
    if (stopped) return { reason: "stop", completionTokens: decoded || pieces };
    const tail = stream.flush();
    if (tail) onText(tail);
    // Without stop strings the server says "stop" only at an end-of-generation token, which it
    // counts and the builtin backend does not.
    if (reason === "length") return { reason, completionTokens: decoded || pieces };
    return { reason: "stop", completionTokens: decoded ? decoded - 1 : pieces };
  }
}

// worker/backends/textstream.py's StopStream, on text: what is released can no longer turn out
// to be the start of a stop sequence; a stop cuts the text where it starts.
export class StopStream {
  constructor(stops) {
    this.stops = [...new Set(stops)].filter((s) => s);
    this.held = "";
  }

  feed(data) {
    const text = this.held + data;
    const cut = this.firstStop(text);
    if (cut !== null) {
      this.held = "";
      return { text: text.slice(0, cut), stopped: true };
    }
    const keep = this.partialStopLength(text);
    this.held = keep ? text.slice(text.length - keep) : "";
    return { text: text.slice(0, text.length - keep), stopped: false };
  }

  flush() {
    const text = this.held;
    this.held = "";
    const cut = this.firstStop(text);
    return cut === null ? text : text.slice(0, cut);
  }

  firstStop(text) {
    const found = this.stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
    return found.length ? Math.min(...found) : null;
  }

  partialStopLength(text) {
    let best = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, text.length); n > best; n -= 1) {
        if (text.endsWith(stop.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}

