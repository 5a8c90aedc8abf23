/* OneDiffusion playground: a form per task built from the service's OpenAPI document, live progress
   over server-sent events, and viewers for every kind of output. Plain JS modules, no build step, no CDN.
   This module loads the document and wires the page together. */

import { $, apiKey, authHeaders, el, KEY_KEY, RECENT_KEY, resolve, showKeyNeeded, state } from "./core.js";
import { applyDemoDefaults, collect, renderTaskList, selectTask } from "./form.js";
import { onPaste } from "./images.js";
import { cancel, refreshRecent, submit } from "./jobs.js";
import { asCurl, asPython, copy } from "./snippets.js";

// The request as the page would send it, and as the copy buttons write it: named on the page's window (as
// they were when the playground was one script) for the browser's console and the browser tests.
Object.assign(window, { asCurl, asPython, collect });

// ---- start --------------------------------------------------------------------------------------------

async function start() {
  $("#apikey").value = apiKey();
  $("#apikey").addEventListener("change", (e) => { localStorage.setItem(KEY_KEY, e.target.value.trim()); $("#apikey-box").classList.remove("needed"); refreshRecent(); });
  state.openapi = await (await fetch("/openapi.json")).json();
  for (const [path, item] of Object.entries(state.openapi.paths)) {
    const post = item.post;
    if (post && (post.tags || []).includes("tasks")) {
      const ref = post.requestBody.content["application/json"].schema;
      state.tasks[path.slice(4)] = { path, schema: resolve(ref), summary: post.summary };
    }
  }
  const spec = state.openapi.components.schemas.ClassSpec;
  const colourDoc = spec && spec.properties.colour.description || "";
  state.colours = (colourDoc.split("one of:")[1] || "").split(";")[0].split(",").map((s) => s.trim()).filter(Boolean);
  renderTaskList();
  const wanted = decodeURIComponent(location.hash.slice(1));
  selectTask(state.tasks[wanted] ? wanted : "text-to-image");
  checkService();
  refreshRecent();
  $("#task-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("#task-form").addEventListener("input", (e) => { if (e.target.id) e.target.dataset.touched = "1"; }); // kept over demo defaults
  document.addEventListener("keydown", (e) => { if ((e.ctrlKey || e.metaKey) && e.key === "Enter") submit(); });
  $("#cancel").addEventListener("click", cancel);
  $("#copy-curl").addEventListener("click", () => copy(asCurl(), "curl command copied"));
  $("#copy-python").addEventListener("click", () => copy(asPython(), "Python snippet copied"));
  $("#clear-recent").addEventListener("click", () => { localStorage.removeItem(RECENT_KEY); refreshRecent(); });
  document.addEventListener("paste", onPaste);
}

async function checkService() {
  const pill = $("#service-status");
  try {
    const res = await fetch("/readyz");
    const body = await res.json();
    // worker_count is always there; the names (`workers`) only on a local demo without keys
    const count = body.worker_count ?? (body.workers || []).length;
    pill.textContent = res.ok ? `${count} worker${count === 1 ? "" : "s"} ready` : "no worker ready";
    pill.className = `pill ${res.ok ? "ok" : "down"}`;
    const modes = Object.keys(body.worker_modes || {});
    const demo = res.ok && modes.length > 0 && modes.every((m) => m.split(" ").includes("checkpoint=demo"));
    if (demo !== state.demo) { state.demo = demo; if (state.task) applyDemoDefaults(); }
  } catch (_) { pill.textContent = "offline"; pill.className = "pill down"; }
  try {
    const res = await fetch("/v1/jobs/playground-probe", { headers: authHeaders() });
    state.authOn = res.status === 401 || !!apiKey();
    if (res.status === 401) showKeyNeeded();
  } catch (_) { /* offline */ }
  $("#apikey-box").hidden = !state.authOn;
}

start().catch((e) => { document.body.prepend(el("div", { class: "error-box", text: `The playground could not start: ${e.message}` })); });
