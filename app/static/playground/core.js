/* The playground's shared pieces: DOM helpers, the page's state, calls to the API (with the key, if any),
   schema lookups and the result panel's status pill, progress bar and toast. */

export const $ = (sel, root = document) => root.querySelector(sel);
export const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c.nodeType ? c : String(c));
  return node;
};

export const RECENT_KEY = "onediffusion.recent";
export const KEY_KEY = "onediffusion.apiKey";

export const state = {
  openapi: null, tasks: {}, task: null, images: {}, lists: {}, painter: null, job: null, abort: null,
  authOn: false, colours: [], demo: false,
};

// ---- API ----------------------------------------------------------------------------------------------

export function apiKey() { return localStorage.getItem(KEY_KEY) || ""; }
export function authHeaders() { const k = apiKey(); return k ? { Authorization: `Bearer ${k}` } : {}; }

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || { type: "http_error", message: `HTTP ${status}` };
    super(err.message);
    this.status = status; this.type = err.type; this.fields = err.fields || [];
  }
}

export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    if (res.status === 401) showKeyNeeded();
    throw new ApiError(res.status, data);
  }
  return data;
}

export function resolve(schema) {
  if (schema && schema.$ref) return state.openapi.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

export function unwrap(prop) {
  // {anyOf: [X, {type: null}]} -> [X, nullable]
  if (prop.anyOf) {
    const rest = prop.anyOf.filter((o) => o.type !== "null");
    return [{ ...prop, ...resolve(rest[0]), anyOf: undefined }, rest.length < prop.anyOf.length];
  }
  return [prop, false];
}

export function showKeyNeeded() {
  state.authOn = true;
  $("#apikey-box").hidden = false;
  $("#apikey-box").classList.add("needed");
  $("#apikey").placeholder = "paste your API key";
}

export function title(task) {
  return task.split("-").map((w, i) => (i === 0 ? w[0].toUpperCase() + w.slice(1) : w)).join(" ").replace("Id ", "ID ");
}

export function setStatus(kind, text) {
  const pill = $("#job-status");
  pill.className = `pill ${kind}`; pill.textContent = text;
}

export function setProgress(fraction) { $("#progress-bar").style.width = `${Math.round((fraction || 0) * 100)}%`; }

export function toast(text) {
  const t = $("#toast");
  t.textContent = text; t.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => { t.hidden = true; }, 2200);
}
