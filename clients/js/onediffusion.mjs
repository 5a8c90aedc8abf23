// JavaScript client of the OneDiffusion service (ESM, no dependencies; Node 18+ or a browser: fetch, streams).
//
//   import { Client } from "./onediffusion.mjs";
//   const client = new Client({ baseUrl: "http://127.0.0.1:8000", apiKey: process.env.ONEDIFFUSION_API_KEY });
//   const job = await client.textToImage({ prompt: "a lighthouse", width: 256, height: 256, num_inference_steps: 8 },
//                                        { onProgress: (p) => console.log(p.step, "/", p.total) });
//   const png = await client.read(job.outputs[0]);   // Uint8Array
//
// Submissions carry an Idempotency-Key (yours or a new one) and are retried on 429 / 503 after Retry-After
// and on network errors with that same key, so a retry never makes a second job or batch.

export const TASKS = [
  "text-to-image", "depth-to-image", "canny-to-image", "hed-to-image", "pose-to-image", "semantic-map-to-image",
  "boxes-to-image", "depth-estimation", "edge-estimation", "pose-estimation", "segmentation", "detection",
  "deblurring", "inpainting", "image-editing", "id-customization", "subject-driven", "image-to-multiview",
  "text-to-multiview", "camera-pose-estimation", "generate",
];
const TERMINAL = ["succeeded", "failed", "canceled"];
const RETRY_STATUSES = [429, 503];

export class ApiError extends Error {
  /** An error answer of the API: `status`, `type`, `message` and per-field `fields` ({field, message}). */
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(`${status} ${error.type || "error"}: ${error.message || "the API answered an error"}`);
    this.status = status;
    this.type = error.type || "error";
    this.detail = error.message || "";
    this.fields = error.fields || [];
  }
}

export class JobFailed extends Error {
  /** A job that ended failed or canceled; `job` is its last view. */
  constructor(job) {
    super(`job ${job.id} ${job.status}: ${(job.error && job.error.message) || ""}`);
    this.job = job;
  }
}

export class WaitTimeout extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const newKey = () => "odjs-" + (globalThis.crypto?.randomUUID?.() || `${Date.now()}-${Math.random()}`.replace(".", ""));
const camel = (task) => task.replace(/-([a-z])/g, (_, c) => c.toUpperCase());

function retryDelay(response, attempt) {
  const asked = response && Number(response.headers.get("retry-after"));
  if (asked >= 0 && Number.isFinite(asked) && response.headers.get("retry-after") !== null) return asked * 1000;
  return Math.min(30, 0.5 * 2 ** attempt) * (0.5 + Math.random() / 2) * 1000;
}

export class Client {
  constructor({ baseUrl, apiKey, maxRetries = 4, maxRetryAfterS = 120, fetch: fetchImpl } = {}) {
    const env = globalThis.process?.env || {};
    this.baseUrl = (baseUrl || env.ONEDIFFUSION_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
    this.apiKey = apiKey ?? env.ONEDIFFUSION_API_KEY;
    this.maxRetries = maxRetries;
    this.maxRetryAfterS = maxRetryAfterS;
    this.fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    for (const task of TASKS) this[camel(task)] = (fields, options) => this.run(task, fields, options);
  }

  headers(extra = {}) {
    return { Accept: "application/json", ...(this.apiKey ? { Authorization: `Bearer ${this.apiKey}` } : {}), ...extra };
  }

  url(path) { return path.startsWith("http") ? path : this.baseUrl + path; }

  /** One call, retried on 429 / 503 (after Retry-After) and, when `idempotent`, on network errors. */
  async request(method, path, { body, headers = {}, idempotent = true, query } = {}) {
    let url = this.url(path);
    if (query) {
      const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null));
      if ([...params].length) url += "?" + params;
    }
    const init = { method, headers: this.headers(body !== undefined ? { "Content-Type": "application/json", ...headers } : headers) };
    if (body !== undefined) init.body = JSON.stringify(body);
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await this.fetch(url, init);
      } catch (error) {
        if (!idempotent || attempt >= this.maxRetries) throw error;
        await sleep(retryDelay(null, attempt));
        continue;
      }
      if (RETRY_STATUSES.includes(response.status) && attempt < this.maxRetries) {
        const delay = retryDelay(response, attempt);
        if (delay <= this.maxRetryAfterS * 1000) { await response.arrayBuffer(); await sleep(delay); continue; }
      }
      if (!response.ok) {
        let data = null;
        try { data = await response.json(); } catch (_) { /* not JSON */ }
        throw new ApiError(response.status, data);
      }
      return response;
    }
  }

  /** Queue a task: the job (or, with num_outputs > 1, the batch) as the API answers it. */
  async submit(task, fields = {}, { idempotencyKey, preferWait } = {}) {
    const headers = { "Idempotency-Key": idempotencyKey || newKey() };
    if (preferWait) headers.Prefer = `wait=${preferWait}`;
    const body = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined && v !== null));
    return (await this.request("POST", `/v1/${task}`, { body, headers })).json();
  }

  /** Submit and wait for the end; `onProgress` gets each step from the event stream. Rejects with JobFailed
   *  when the job (or one job of a num_outputs batch) does not succeed, WaitTimeout after `timeoutS`. */
  async run(task, fields = {}, { onProgress, timeoutS, idempotencyKey } = {}) {
    // With onProgress the job is followed from the start (Prefer: wait would hold the answer to the end).
    const preferWait = onProgress ? undefined : Math.max(1, Math.min(60, timeoutS || 60));
    const answer = await this.submit(task, fields, { idempotencyKey, preferWait });
    if (answer.jobs && answer.counts) {
      const batch = await this.waitBatch(answer.id, { timeoutS });
      const bad = batch.jobs.find((j) => j.status !== "succeeded");
      if (bad) throw new JobFailed(bad);
      return batch;
    }
    const job = await this.wait(answer, { onProgress, timeoutS });
    if (job.status !== "succeeded") throw new JobFailed(job);
    return job;
  }

  /** The job's server-sent events ({type, data}) until `finished`. */
  async *events(jobId, { signal } = {}) {
    const response = await this.request("GET", `/v1/jobs/${jobId}/events`, { headers: { Accept: "text/event-stream" } });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", type = null, data = [];
    try {
      for (;;) {
        if (signal?.aborted) return;
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          if (line === "") {
            if (data.length) {
              const event = { type: type || "message", data: JSON.parse(data.join("\n")) };
              type = null; data = [];
              yield event;
              if (event.type === "finished") return;
            }
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (name === "event") type = val; else if (name === "data") data.push(val);
          }
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /** Wait for a job (an id or a job view) to end, following its events (polling if the stream breaks). */
  async wait(jobOrId, { onProgress, timeoutS } = {}) {
    let job = typeof jobOrId === "string" ? await this.job(jobOrId) : jobOrId;
    const deadline = timeoutS ? Date.now() + timeoutS * 1000 : null;
    const late = () => deadline !== null && Date.now() > deadline;
    if (!TERMINAL.includes(job.status)) {
      const controller = new AbortController();
      const timer = deadline ? setTimeout(() => controller.abort(), deadline - Date.now()) : null;
      try {
        for await (const event of this.events(job.id, { signal: controller.signal })) {
          if (event.type === "progress" && onProgress) onProgress(event.data);
          if (event.type === "finished") job = event.data;
        }
      } catch (error) {
        if (error instanceof ApiError) throw error;
      } finally {
        if (timer) clearTimeout(timer);
      }
      let interval = 200;
      while (!TERMINAL.includes(job.status)) {
        if (late()) throw new WaitTimeout(`job ${job.id} still ${job.status} after ${timeoutS} s`);
        await sleep(interval);
        interval = Math.min(2000, interval * 1.5);
        job = await this.job(job.id);
      }
    }
    return job;
  }

  async job(id) { return (await this.request("GET", `/v1/jobs/${id}`)).json(); }
  async cancel(id) { return (await this.request("POST", `/v1/jobs/${id}/cancel`)).json(); }
  async batch(id) { return (await this.request("GET", `/v1/batches/${id}`)).json(); }
  async cancelBatch(id) { return (await this.request("POST", `/v1/batches/${id}/cancel`)).json(); }

  /** One page of your jobs: {data, next_cursor}; pass next_cursor as `cursor` for the next page. */
  async listJobs({ status, task, limit, cursor } = {}) {
    return (await this.request("GET", "/v1/jobs", { query: { status, task, limit, cursor } })).json();
  }

  async listBatches({ status, limit, cursor } = {}) {
    return (await this.request("GET", "/v1/batches", { query: { status, limit, cursor } })).json();
  }

  /** Every job of yours (that matches), newest first, page after page. */
  async *iterJobs({ status, task, pageSize = 100 } = {}) {
    let cursor;
    do {
      const page = await this.listJobs({ status, task, limit: pageSize, cursor });
      yield* page.data;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** Many tasks at once: items are {task, ...fields}; sent with an Idempotency-Key (yours or a new one). */
  async submitBatch(items, { webhook, idempotencyKey } = {}) {
    const body = { items, ...(webhook ? { webhook } : {}) };
    const headers = { "Idempotency-Key": idempotencyKey || newKey() };
    return (await this.request("POST", "/v1/batches", { body, headers })).json();
  }

  async waitBatch(id, { timeoutS, intervalMs = 500 } = {}) {
    const deadline = timeoutS ? Date.now() + timeoutS * 1000 : null;
    for (;;) {
      const batch = await this.batch(id);
      if (batch.status === "completed") return batch;
      if (deadline !== null && Date.now() > deadline) throw new WaitTimeout(`batch ${id} still running after ${timeoutS} s`);
      await sleep(intervalMs);
    }
  }

  /** An output's bytes (an output object of a job, or its URL). */
  async read(output) {
    const url = typeof output === "string" ? output : output.url;
    return new Uint8Array(await (await this.request("GET", url)).arrayBuffer());
  }
}

/** Check a webhook call's Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature) with
 *  `secret` and its age; resolves to the parsed body, rejects otherwise. Uses WebCrypto (Node 18+, browsers). */
export async function verifyWebhook(headers, rawBody, secret, { toleranceS = 300 } = {}) {
  const get = (name) => (typeof headers.get === "function" ? headers.get(name) : headers[name] ?? headers[name.toLowerCase()]);
  const id = get("webhook-id"), timestamp = get("webhook-timestamp"), signatures = get("webhook-signature");
  if (!id || !timestamp || !signatures) throw new Error("missing webhook-id, webhook-timestamp or webhook-signature");
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > toleranceS) throw new Error("the webhook's timestamp is too old or in the future");
  const text = typeof rawBody === "string" ? rawBody : new TextDecoder().decode(rawBody);
  const keyBytes = secret.startsWith("whsec_") ? Uint8Array.from(atob(secret.slice(6)), (c) => c.charCodeAt(0)) : new TextEncoder().encode(secret);
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${id}.${timestamp}.${text}`)));
  const expected = btoa(String.fromCharCode(...mac));
  const same = (a, b) => { // constant time for equal lengths: no early exit on the first differing character
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    return diff === 0;
  };
  const ok = signatures.split(" ").some((s) => s.startsWith("v1,") && same(s.slice(3), expected));
  if (!ok) throw new Error("the webhook's signature does not match");
  return JSON.parse(text);
}
