/* Running a job: submit the form, follow the job over server-sent events (polling if the stream breaks),
   batches of num_outputs, cancel; and the recent jobs list kept in localStorage. */

import { $, api, authHeaders, el, RECENT_KEY, setProgress, setStatus, state, title, toast } from "./core.js";
import { clearError, collect, showError } from "./form.js";
import { outputCard, renderJob } from "./viewers.js";

// ---- submit, follow, cancel ------------------------------------------------------------------------------

export async function submit() {
  if ($("#run").disabled) return;
  clearError();
  const task = state.task;
  let body;
  try { ({ body } = collect()); state.lastBody = body; } catch (e) { return showError(e); }
  setBusy(true);
  setStatus("submitting", "Submitting…");
  setProgress(0);
  state.inputs = { image: (state.images.image || [])[0], images: state.images.images || [] };
  try {
    const answer = await api(`/v1/${task}`, { method: "POST", body });
    if (answer.jobs) await followBatch(answer); // num_outputs > 1: a batch of jobs, one per seed
    else {
      state.job = answer;
      remember(answer);
      show(answer);
      if (!ended(answer)) await follow(answer.id);
    }
  } catch (e) {
    if (e.name !== "AbortError") { showError(e); setStatus("failed", "Rejected"); }
  } finally {
    setBusy(false);
  }
}

// A job in the result panel; the recent list then asks again about the jobs it holds that had not ended.
function show(job, viewerOverride) {
  renderJob(job, viewerOverride);
  refreshRecent();
}

const ended = (job) => ["succeeded", "failed", "canceled"].includes(job.status);

// The jobs of a num_outputs batch are followed one after the other (they run as one sampler batch, so
// their progress moves together); at the end their images are shown side by side.
async function followBatch(batch) {
  state.batch = batch;
  const done = [];
  try {
    for (const [index, item] of batch.jobs.entries()) {
      state.job = item;
      remember(item);
      if (!ended(item)) { show(item); await follow(item.id); }
      done.push(state.job);
      setStatus("running", `Image ${index + 1} of ${batch.jobs.length} done`);
    }
  } finally {
    state.batch = null;
  }
  renderBatch(batch, done);
}

function renderBatch(batch, jobs) {
  const succeeded = jobs.filter((j) => j.status === "succeeded");
  const outputs = succeeded.flatMap((j) => j.outputs.map((o) => ({ ...o, caption: `seed ${j.input && j.input.seed !== undefined ? j.input.seed : "?"} · ${o.width}×${o.height}` })));
  const status = succeeded.length ? "succeeded" : (jobs.find((j) => j.status === "canceled") ? "canceled" : "failed");
  const failed = jobs.find((j) => j.error);
  show({ ...jobs[0], id: batch.id, status, outputs, error: succeeded.length ? null : failed && failed.error, data: null,
         timings: jobs[0].timings, warnings: [] }, (job, out) => out.append(el("div", { class: "outputs" },
    job.outputs.map((o) => outputCard(o, o.caption)))));
  $("#progress-text").textContent = `${succeeded.length} of ${jobs.length} images · batch ${batch.id}`;
}

async function follow(id) {
  const ctrl = new AbortController();
  state.abort = ctrl;
  try {
    const res = await fetch(`/v1/jobs/${id}/events`, { headers: authHeaders(), signal: ctrl.signal });
    if (!res.ok || !res.body) throw new Error(`events answered ${res.status}`);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        let type = "message", data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (type === "queued") setStatus("queued", payload.queue_position ? `Queued · position ${payload.queue_position + 1}` : "Queued");
        else if (type === "started") setStatus("running", "Running");
        else if (type === "progress") { setStatus("running", `Step ${payload.step} of ${payload.total}`); setProgress(payload.fraction); }
        else if (type === "finished") { state.job = payload; remember(payload); show(payload); ctrl.abort(); return; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  // the stream broke: poll until the end
  for (;;) {
    const job = await api(`/v1/jobs/${id}`);
    if (["succeeded", "failed", "canceled"].includes(job.status)) { state.job = job; remember(job); show(job); return; }
    if (job.progress) setProgress(job.progress.fraction);
    await new Promise((r) => setTimeout(r, 700));
  }
}

export async function cancel() {
  if (!state.job) return;
  try {
    if (state.batch) { await api(`/v1/batches/${state.batch.id}/cancel`, { method: "POST" }); setStatus("canceled", "Canceling…"); return; }
    const job = await api(`/v1/jobs/${state.job.id}/cancel`, { method: "POST" });
    setStatus("canceled", "Canceling…");
    if (job.status === "canceled") { state.job = job; remember(job); }
  } catch (e) { showError(e); }
}

function setBusy(busy) {
  $("#run").disabled = busy;
  $("#run").firstChild.textContent = busy ? "Running… " : "Run ";
  $("#cancel").hidden = !busy;
}

// ---- recent jobs -----------------------------------------------------------------------------------------

function recent() { try { return JSON.parse(localStorage.getItem(RECENT_KEY)) || []; } catch (_) { return []; } }

function remember(job) {
  const list = recent().filter((j) => j.id !== job.id);
  const thumb = (job.outputs || []).find((o) => o.kind === "image" || o.kind === "preview");
  list.unshift({ id: job.id, task: job.task, status: job.status, created_at: job.created_at || new Date().toISOString(), thumb: thumb ? thumb.signed_url : null });
  localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, 25)));
  renderRecent();
}

function renderRecent() {
  const ul = $("#recent");
  const list = recent();
  ul.replaceChildren(...list.map((j) => el("li", { "data-job": j.id, title: j.id, onclick: () => openJob(j.id) },
    j.thumb ? el("img", { src: j.thumb, alt: "" }) : el("img", { alt: "" }),
    el("span", { class: "task", text: title(j.task) }), el("span", { class: `pill ${j.status}`, text: j.status }),
    el("span", { class: "when", text: new Date(j.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }))));
  if (!list.length) ul.append(el("li", { class: "muted", text: "Jobs you run appear here." }));
}

export async function refreshRecent() {
  renderRecent();
  const list = recent();
  const open = list.filter((j) => !["succeeded", "failed", "canceled"].includes(j.status)).slice(0, 10);
  for (const j of open) {
    try { const job = await api(`/v1/jobs/${j.id}`); Object.assign(j, { status: job.status }); } catch (e) { if (e.status === 404) j.status = "expired"; }
  }
  if (open.length) { localStorage.setItem(RECENT_KEY, JSON.stringify(list)); renderRecent(); }
}

async function openJob(id) {
  try {
    const job = await api(`/v1/jobs/${id}`);
    state.job = job; state.inputs = null;
    show(job);
    if (!["succeeded", "failed", "canceled"].includes(job.status)) { setBusy(true); try { await follow(id); } finally { setBusy(false); } }
  } catch (e) { toast(`${e.type || "error"}: ${e.message}`); }
}
