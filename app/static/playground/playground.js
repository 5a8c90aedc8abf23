/* OneDiffusion playground: a form per task built from the service's OpenAPI document, live progress
   over server-sent events, and viewers for every kind of output. Plain JS, no build step, no CDN. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
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

const GROUPS = [
  ["Generate", ["text-to-image", "text-to-multiview"]],
  ["From a condition", ["depth-to-image", "canny-to-image", "hed-to-image", "pose-to-image", "semantic-map-to-image", "boxes-to-image"]],
  ["Understand", ["depth-estimation", "edge-estimation", "pose-estimation", "segmentation", "detection", "camera-pose-estimation"]],
  ["Edit", ["inpainting", "image-editing", "deblurring"]],
  ["People & subjects", ["id-customization", "subject-driven"]],
  ["3D", ["image-to-multiview"]],
  ["Expert", ["generate"]],
];
const MAIN_FIELDS = ["image", "images", "mask", "prompt", "item", "source_caption", "reference_captions", "classes", "edge_type",
  "cameras", "frames", "width", "height", "num_inference_steps", "guidance_scale", "seed"];
const IMAGE_FIELDS = ["image", "mask", "images"];
const DEFAULT_CAMERAS = [[0, 0], [30, 0], [60, 0], [90, 0]];
// On the demo checkpoint (random weights, often a CPU) the model's defaults (1024 px, 50+ steps) take
// minutes and hold the only worker; these finish in seconds. A released checkpoint keeps the schema's.
const DEMO_DEFAULTS = { width: 256, height: 256, num_inference_steps: 8 };
const RECENT_KEY = "onediffusion.recent";
const KEY_KEY = "onediffusion.apiKey";

const state = {
  openapi: null, tasks: {}, task: null, images: {}, lists: {}, painter: null, job: null, abort: null,
  authOn: false, colours: [], demo: false,
};

// ---- API ----------------------------------------------------------------------------------------------

function apiKey() { return localStorage.getItem(KEY_KEY) || ""; }
function authHeaders() { const k = apiKey(); return k ? { Authorization: `Bearer ${k}` } : {}; }

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || { type: "http_error", message: `HTTP ${status}` };
    super(err.message);
    this.status = status; this.type = err.type; this.fields = err.fields || [];
  }
}

async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
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

function resolve(schema) {
  if (schema && schema.$ref) return state.openapi.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function unwrap(prop) {
  // {anyOf: [X, {type: null}]} -> [X, nullable]
  if (prop.anyOf) {
    const rest = prop.anyOf.filter((o) => o.type !== "null");
    return [{ ...prop, ...resolve(rest[0]), anyOf: undefined }, rest.length < prop.anyOf.length];
  }
  return [prop, false];
}

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

function showKeyNeeded() {
  state.authOn = true;
  $("#apikey-box").hidden = false;
  $("#apikey-box").classList.add("needed");
  $("#apikey").placeholder = "paste your API key";
}

function renderTaskList() {
  const list = $("#task-list");
  list.replaceChildren();
  const known = new Set(GROUPS.flatMap((g) => g[1]));
  const groups = GROUPS.map(([label, names]) => [label, names.filter((n) => state.tasks[n])]);
  const others = Object.keys(state.tasks).filter((n) => !known.has(n));
  if (others.length) groups.push(["Other", others]);
  for (const [label, names] of groups) {
    if (!names.length) continue;
    list.append(el("div", { class: "group-label", text: label }));
    for (const name of names) {
      list.append(el("button", { type: "button", class: "task-item", role: "option", "data-task": name, onclick: () => selectTask(name) }, title(name)));
    }
  }
}

function title(task) {
  return task.split("-").map((w, i) => (i === 0 ? w[0].toUpperCase() + w.slice(1) : w)).join(" ").replace("Id ", "ID ");
}

// ---- the form -----------------------------------------------------------------------------------------

function selectTask(name) {
  state.task = name;
  state.images = {}; state.lists = {}; state.painter = null;
  history.replaceState(null, "", `#${name}`);
  for (const b of document.querySelectorAll(".task-item")) b.setAttribute("aria-selected", String(b.dataset.task === name));
  const { schema } = state.tasks[name];
  $("#task-title").textContent = title(name);
  $("#task-doc").textContent = (schema.description || "").replace(/`/g, "");
  const main = $("#fields"), advanced = $("#advanced-fields");
  main.replaceChildren(); advanced.replaceChildren();
  clearError();
  const props = schema.properties;
  const required = new Set(schema.required || []);
  const names = Object.keys(props);
  const ordered = [...MAIN_FIELDS.filter((n) => props[n]), ...names.filter((n) => !MAIN_FIELDS.includes(n))];
  const numeric = [];
  for (const n of ordered) {
    const isMain = MAIN_FIELDS.includes(n) || required.has(n);
    const node = fieldFor(n, props[n], required.has(n));
    if (["width", "height", "num_inference_steps", "guidance_scale"].includes(n)) { numeric.push(node); continue; }
    if (n === "seed" && numeric.length) { flushRow(main, numeric); }
    (isMain ? main : advanced).append(node);
  }
  if (numeric.length) flushRow(main, numeric);
  applyDemoDefaults();
}

// The demo's quick size and steps in place of the schema's defaults, with a note that says so.
function applyDemoDefaults() {
  const note = $("#demo-note");
  note.hidden = !state.demo;
  if (!state.demo) return;
  for (const [name, value] of Object.entries(DEMO_DEFAULTS)) {
    const input = $(`#f-${name}`);
    if (input && !input.dataset.touched) input.value = String(value);
  }
  note.textContent = `Demo checkpoint (outputs are noise): ${DEMO_DEFAULTS.width}×${DEMO_DEFAULTS.height} px and `
    + `${DEMO_DEFAULTS.num_inference_steps} steps, so a job finishes in seconds on a CPU. With released weights on a GPU `
    + "use the model's defaults (1024 px for text-to-image, 50 steps and more).";
}

function flushRow(parent, nodes) {
  parent.append(el("div", { class: "row numbers" }, nodes.splice(0)));
}

function hintOf(prop, nullable, name) {
  const bits = [];
  if (prop.minimum !== undefined && prop.maximum !== undefined && prop.maximum < 1e12) bits.push(`${prop.minimum}–${prop.maximum}`);
  else if (prop.maximum !== undefined && prop.maximum < 1e12) bits.push(`≤ ${prop.maximum}`);
  if (prop.exclusiveMinimum !== undefined) bits.push(`> ${prop.exclusiveMinimum}`);
  if (prop.multipleOf) bits.push(`× ${prop.multipleOf}`);
  if (prop.minItems) bits.push(`min ${prop.minItems}`);
  if (prop.maxItems) bits.push(`max ${prop.maxItems}`);
  if (prop.maxLength && prop.maxLength < 1000) bits.push(`≤ ${prop.maxLength} chars`);
  if (nullable && ["width", "height"].includes(name)) bits.push("auto");
  return bits.join(" · ");
}

function label(name) { return name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()).replace("Num inference steps", "Steps"); }

function fieldFor(name, rawProp, isRequired) {
  const [prop, nullable] = unwrap(rawProp);
  const wrap = el("div", { class: "field", "data-field": name });
  const head = el("label", { for: `f-${name}` }, el("span", {}, label(name), isRequired ? el("span", { class: "req", text: "*" }) : null),
    el("span", { class: "hint", text: hintOf(prop, nullable, name) }));
  wrap.append(head);
  let input;
  if (IMAGE_FIELDS.includes(name)) {
    input = dropZone(name, name === "images", prop);
  } else if (name === "classes") {
    input = classesEditor(name, prop);
  } else if (name === "cameras") {
    input = camerasEditor(name, prop);
  } else if (name === "frames") {
    input = framesEditor(name, prop);
  } else if (name === "webhook") {
    input = el("div", { class: "row" },
      el("input", { id: "f-webhook", "data-webhook": "url", placeholder: "https://example.com/hook" }),
      el("input", { "data-webhook": "secret", placeholder: "secret (optional)" }));
  } else if (prop.enum) {
    input = el("select", { id: `f-${name}`, name }, prop.enum.map((v) => el("option", { value: v, selected: v === prop.default }, v)));
  } else if (prop.type === "boolean") {
    input = el("input", { id: `f-${name}`, name, type: "checkbox", checked: !!prop.default });
  } else if (prop.type === "integer" || prop.type === "number") {
    const step = prop.multipleOf || (prop.type === "integer" ? 1 : "any");
    input = el("input", { id: `f-${name}`, name, type: "number", step, min: prop.minimum, max: prop.maximum,
      value: prop.default ?? "", placeholder: nullable ? (name === "seed" ? "random" : "auto") : "", "data-type": prop.type });
  } else if (prop.type === "array") {
    input = el("textarea", { id: `f-${name}`, name, rows: 2, placeholder: "one per line", "data-type": "lines" });
  } else {
    const long = ["prompt", "negative_prompt", "source_caption"].includes(name);
    input = el(long ? "textarea" : "input", { id: `f-${name}`, name, rows: name === "prompt" ? 3 : 2,
      placeholder: (prop.examples && prop.examples[0]) || (name === "negative_prompt" ? "default list (empty = default)" : "") });
    if (prop.default) input.value = prop.default;
  }
  wrap.append(input);
  let help = (rawProp.description || prop.description || "").replace(/`/g, "");
  if (IMAGE_FIELDS.includes(name) && help.startsWith("An image as base64")) help = "PNG, JPEG or WebP.";
  if (help) { wrap.append(el("p", { class: "help", text: help })); wrap.title = help; }
  return wrap;
}

// ---- images: upload, drag and drop, paste ---------------------------------------------------------------

function readFile(file) {
  return new Promise((ok, fail) => {
    const reader = new FileReader();
    reader.onload = () => {
      const img = new Image();
      img.onload = () => ok({ name: file.name || "pasted.png", dataUrl: reader.result, width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => fail(new Error(`${file.name || "the file"} is not an image the browser can read`));
      img.src = reader.result;
    };
    reader.onerror = () => fail(reader.error);
    reader.readAsDataURL(file);
  });
}

function dropZone(name, multiple, prop, onChange) {
  const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", multiple, "data-image-field": name });
  const thumbs = el("div", { class: "thumbs" });
  const text = el("span", { text: multiple ? `Drop, paste or click to add images${prop.maxItems ? ` (up to ${prop.maxItems})` : ""}` : "Drop, paste or click to choose an image" });
  const zone = el("div", { class: "drop", tabindex: 0, "data-drop": name }, input, thumbs, text);
  const render = () => {
    const files = state.images[name] || [];
    thumbs.replaceChildren(...files.map((f, i) => el("figure", {}, el("img", { src: f.dataUrl, alt: f.name, title: `${f.name} · ${f.width}×${f.height}` }),
      el("button", { type: "button", title: "Remove", onclick: (e) => { e.stopPropagation(); files.splice(i, 1); render(); } }, "×"))));
    text.hidden = files.length > 0 && !multiple;
    if (onChange) onChange(files);
    else if (name === "image" && state.task === "inpainting") setupPainter(files[0]);
  };
  zone.addFiles = async (list) => {
    const read = await Promise.all([...list].filter((f) => f.type.startsWith("image/")).map(readFile));
    state.images[name] = multiple ? [...(state.images[name] || []), ...read].slice(0, prop.maxItems || undefined) : read.slice(0, 1);
    render();
  };
  zone.addEventListener("click", (e) => { if (e.target === zone || e.target === text || e.target === thumbs) input.click(); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => zone.addFiles(input.files));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); zone.addFiles(e.dataTransfer.files); });
  zone.addEventListener("mouseenter", () => { state.pasteTarget = zone; });
  zone.addEventListener("focus", () => { state.pasteTarget = zone; });
  if (name === "mask") {
    const box = el("div", {}, zone, el("div", { class: "painter", id: "painter" }, el("p", { class: "help", text: "…or paint the region to fill on the image once it is loaded." })));
    box.addFiles = zone.addFiles;
    return box;
  }
  return zone;
}

function onPaste(e) {
  const files = [...(e.clipboardData || {}).files || []].filter((f) => f.type.startsWith("image/"));
  if (!files.length) return;
  const zones = [...document.querySelectorAll("[data-drop]")];
  const target = zones.includes(state.pasteTarget) ? state.pasteTarget : zones.find((z) => !(state.images[z.dataset.drop] || []).length) || zones[0];
  if (target) { e.preventDefault(); target.addFiles(files); toast("Image pasted"); }
}

// ---- the mask painter (inpainting) ------------------------------------------------------------------------

function setupPainter(file) {
  const host = $("#painter");
  if (!host) return;
  host.replaceChildren();
  state.painter = null;
  if (!file) { host.append(el("p", { class: "help", text: "…or paint the region to fill on the image once it is loaded." })); return; }
  const base = el("canvas", { width: file.width, height: file.height });
  const paint = el("canvas", { class: "paint", width: file.width, height: file.height, "aria-label": "Mask painter" });
  const img = new Image();
  img.onload = () => base.getContext("2d").drawImage(img, 0, 0);
  img.src = file.dataUrl;
  const size = el("input", { type: "range", min: 4, max: Math.max(16, Math.round(Math.max(file.width, file.height) / 4)), value: Math.max(8, Math.round(file.width / 12)) });
  const ctx = paint.getContext("2d");
  let drawing = false, last = null, erase = false;
  const pos = (e) => { const r = paint.getBoundingClientRect(); return [(e.clientX - r.left) * paint.width / r.width, (e.clientY - r.top) * paint.height / r.height]; };
  const stroke = (p) => {
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#ff2d75"; ctx.lineWidth = +size.value; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...(last || p)); ctx.lineTo(...p); ctx.stroke();
    last = p; state.painter.dirty = true;
  };
  paint.addEventListener("pointerdown", (e) => { drawing = true; last = null; paint.setPointerCapture(e.pointerId); stroke(pos(e)); });
  paint.addEventListener("pointermove", (e) => { if (drawing) stroke(pos(e)); });
  paint.addEventListener("pointerup", () => { drawing = false; last = null; });
  const eraseBox = el("input", { type: "checkbox", onchange: (e) => { erase = e.target.checked; } });
  host.append(el("div", { class: "stage" }, base, paint),
    el("div", { class: "tools" }, el("span", { text: "Brush" }), size, el("label", {}, eraseBox, " erase"),
      el("button", { type: "button", class: "ghost small", onclick: () => { ctx.clearRect(0, 0, paint.width, paint.height); state.painter.dirty = false; } }, "Clear"),
      el("span", { text: "Paint where the image should be filled." })));
  state.painter = { canvas: paint, dirty: false };
}

function paintedMask() {
  const { canvas } = state.painter;
  const out = el("canvas", { width: canvas.width, height: canvas.height });
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, out.width, out.height);
  const src = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const dst = ctx.getImageData(0, 0, out.width, out.height);
  for (let i = 0; i < src.data.length; i += 4) if (src.data[i + 3] > 0) { dst.data[i] = dst.data[i + 1] = dst.data[i + 2] = 255; }
  ctx.putImageData(dst, 0, 0);
  return out.toDataURL("image/png");
}

// ---- classes, cameras, frames ---------------------------------------------------------------------------

// A list of rows, at most the schema's maxItems (the server's limit: MAX_VIEWS for cameras).
function listEditor(name, cls, makeRow, initial, addLabel, maxItems) {
  const box = el("div", { class: `list-editor ${cls}`, id: `f-${name}` });
  const rows = el("div");
  const button = el("button", { type: "button", class: "ghost small", onclick: () => add() }, `+ ${addLabel}`);
  const sync = () => { button.disabled = !!maxItems && rows.children.length >= maxItems; button.title = button.disabled ? `at most ${maxItems}` : ""; };
  const add = (values) => {
    if (maxItems && rows.children.length >= maxItems) return;
    const row = makeRow(values || {}, () => { row.remove(); sync(); }); row.classList.add("item"); rows.append(row); sync();
  };
  (initial || []).slice(0, maxItems || undefined).forEach(add);
  box.append(rows, button);
  state.lists[name] = rows;
  return box;
}

function removeButton(onRemove) { return el("button", { type: "button", class: "ghost small", title: "Remove", onclick: onRemove }, "×"); }

function classesEditor(name, prop = {}) {
  return listEditor(name, "classes", (v, remove) => {
    const colour = el("select", { "data-k": "colour" }, el("option", { value: "" }, "auto colour"),
      state.colours.map((c) => el("option", { value: c, style: `color:${c}` }, `● ${c}`)));
    return el("div", {}, el("input", { "data-k": "name", placeholder: "class name, e.g. dog", value: v.name || "" }), colour, removeButton(remove));
  }, [{ name: state.task === "detection" || state.task === "boxes-to-image" ? "object" : "" }], "class", prop.maxItems);
}

function camerasEditor(name, prop = {}) {
  const initial = DEFAULT_CAMERAS.map(([azimuth, elevation]) => ({ azimuth, elevation }));
  const pose = resolve(prop.items);
  const distance = ((pose.properties || {}).distance || {}).default ?? 1.5; // the API's default (the reference's)
  const editor = listEditor(name, "cameras", (v, remove) => el("div", {},
    el("input", { "data-k": "azimuth", type: "number", step: "any", min: -360, max: 360, value: v.azimuth ?? 0, title: "azimuth (degrees)", placeholder: "azimuth °" }),
    el("input", { "data-k": "elevation", type: "number", step: "any", min: -90, max: 90, value: v.elevation ?? 0, title: "elevation (degrees)", placeholder: "elevation °" }),
    el("input", { "data-k": "distance", type: "number", step: "any", min: 0.1, max: 100, value: v.distance ?? distance, title: "distance", placeholder: "distance" }),
    removeButton(remove)), initial, "camera", prop.maxItems);
  editor.prepend(el("div", { class: "columns" }, el("span", { text: "azimuth (°)" }), el("span", { text: "elevation (°)" }), el("span", { text: "distance" })));
  return editor;
}

function framesEditor(name, prop = {}) {
  let counter = 0;
  return listEditor(name, "frames", (v, remove) => {
    const key = `frame${counter++}`;
    const kind = el("select", { "data-k": "kind" }, el("option", { value: "image" }, "image"), el("option", { value: "camera" }, "camera"));
    const gen = el("select", { "data-k": "generate" }, el("option", { value: "true" }, "generate"), el("option", { value: "false" }, "given"));
    kind.value = v.kind || "image"; gen.value = String(v.generate ?? true);
    const slot = el("div");
    const row = el("div", { "data-image-key": key }, kind, gen, slot, removeButton(remove));
    const update = () => {
      slot.replaceChildren();
      if (gen.value === "false" && kind.value === "image") slot.append(dropZone(key, false, {}, () => {}));
      else if (gen.value === "false") slot.append(el("div", { class: "row" }, el("input", { "data-k": "azimuth", type: "number", placeholder: "az°", value: 0 }),
        el("input", { "data-k": "elevation", type: "number", placeholder: "el°", value: 0 })));
      else slot.append(el("span", { class: "muted", text: "made by the model" }));
    };
    kind.addEventListener("change", update); gen.addEventListener("change", update); update();
    return row;
  }, [{ kind: "image", generate: true }], "frame", prop.maxItems);
}

// ---- collecting the request -------------------------------------------------------------------------------

function collect({ forDisplay = false } = {}) {
  const { schema } = state.tasks[state.task];
  const body = {}, files = {};
  for (const [name, rawProp] of Object.entries(schema.properties)) {
    const [prop] = unwrap(rawProp);
    if (IMAGE_FIELDS.includes(name)) {
      const list = state.images[name] || [];
      if (name === "mask" && !list.length && state.painter && state.painter.dirty) {
        body.mask = forDisplay ? "<painted mask>" : paintedMask(); files.mask = ["mask.png"]; continue;
      }
      if (!list.length) continue;
      files[name] = list.map((f) => f.name);
      const values = list.map((f) => (forDisplay ? `<${f.name}>` : f.dataUrl));
      body[name] = name === "images" ? values : values[0];
      continue;
    }
    if (name === "classes" && state.lists.classes) {
      const items = [...state.lists.classes.children].map((r) => ({ name: $("[data-k=name]", r).value.trim(), colour: $("[data-k=colour]", r).value || undefined }))
        .filter((c) => c.name);
      if (items.length) body.classes = items;
      continue;
    }
    if (name === "cameras" && state.lists.cameras) {
      body.cameras = [...state.lists.cameras.children].map((r) => ({
        azimuth: +$("[data-k=azimuth]", r).value, elevation: +$("[data-k=elevation]", r).value, distance: +$("[data-k=distance]", r).value }));
      continue;
    }
    if (name === "frames" && state.lists.frames) {
      body.frames = [...state.lists.frames.children].map((r) => {
        const frame = { kind: $("[data-k=kind]", r).value, generate: $("[data-k=generate]", r).value === "true" };
        if (!frame.generate && frame.kind === "image") {
          const img = (state.images[r.dataset.imageKey] || [])[0];
          if (img) { frame.image = forDisplay ? `<${img.name}>` : img.dataUrl; (files.frames = files.frames || []).push(img.name); }
        } else if (!frame.generate) frame.camera = { azimuth: +$("[data-k=azimuth]", r).value, elevation: +$("[data-k=elevation]", r).value };
        return frame;
      });
      continue;
    }
    if (name === "webhook") {
      const url = $("[data-webhook=url]").value.trim(), secret = $("[data-webhook=secret]").value.trim();
      if (url) body.webhook = secret ? { url, secret } : { url };
      continue;
    }
    const input = $(`#f-${name}`);
    if (!input) continue;
    if (input.type === "checkbox") { if (input.checked !== !!prop.default) body[name] = input.checked; continue; }
    const value = input.value;
    if (value === "") continue;
    let parsed = value;
    if (input.dataset.type === "integer") parsed = Number(value);
    else if (input.dataset.type === "number") parsed = parseFloat(value);
    else if (input.dataset.type === "lines") parsed = value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (parsed === prop.default) continue; // the server's default applies
    body[name] = parsed;
  }
  return { body, files };
}

// ---- submit, follow, cancel ------------------------------------------------------------------------------

async function submit() {
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
      renderJob(answer);
      if (!ended(answer)) await follow(answer.id);
    }
  } catch (e) {
    if (e.name !== "AbortError") { showError(e); setStatus("failed", "Rejected"); }
  } finally {
    setBusy(false);
  }
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
      if (!ended(item)) { renderJob(item); await follow(item.id); }
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
  renderJob({ ...jobs[0], id: batch.id, status, outputs, error: succeeded.length ? null : failed && failed.error, data: null,
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
        else if (type === "finished") { state.job = payload; remember(payload); renderJob(payload); ctrl.abort(); return; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  // the stream broke: poll until the end
  for (;;) {
    const job = await api(`/v1/jobs/${id}`);
    if (["succeeded", "failed", "canceled"].includes(job.status)) { state.job = job; remember(job); renderJob(job); return; }
    if (job.progress) setProgress(job.progress.fraction);
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function cancel() {
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

function setStatus(kind, text) {
  const pill = $("#job-status");
  pill.className = `pill ${kind}`; pill.textContent = text;
}

function setProgress(fraction) { $("#progress-bar").style.width = `${Math.round((fraction || 0) * 100)}%`; }

// ---- errors ----------------------------------------------------------------------------------------------

function clearError() {
  const box = $("#form-error");
  box.hidden = true; box.replaceChildren();
  for (const f of document.querySelectorAll(".field.invalid")) { f.classList.remove("invalid"); const m = $(".field-error", f); if (m) m.remove(); }
}

function showError(e) {
  const box = $("#form-error");
  box.hidden = false;
  box.replaceChildren(el("strong", {}, e.type ? el("code", { text: e.type }) : null, " ", e.status ? `(${e.status}) ` : "", e.message));
  if (e.fields && e.fields.length) {
    box.append(el("ul", {}, e.fields.map((f) => el("li", {}, el("code", { text: f.field }), " ", f.message))));
    for (const f of e.fields) {
      const top = String(f.field).split(/[.[]/)[0];
      const field = $(`.field[data-field="${top}"]`);
      if (field) { field.classList.add("invalid"); field.append(el("div", { class: "field-error", text: f.message })); if (!field.closest("#fields")) $("#advanced").open = true; }
    }
  }
}

// ---- results ---------------------------------------------------------------------------------------------

function outputCard(output, caption, media) {
  const img = media || el("img", { src: output.signed_url, alt: output.name, loading: "lazy", "data-output": output.name });
  return el("figure", { class: "card" }, el("div", { class: "media" }, img),
    el("figcaption", {}, el("span", { text: caption || `${output.name} · ${output.width}×${output.height}` }),
      el("a", { class: "download", href: output.signed_url, download: output.name, title: `Download ${output.name}` }, "Download")));
}

function loadImage(src) {
  return new Promise((ok, fail) => { const img = new Image(); img.onload = () => ok(img); img.onerror = fail; img.src = src; });
}

function renderJob(job, viewerOverride) {
  const out = $("#result");
  out.replaceChildren();
  const final = ["succeeded", "failed", "canceled"].includes(job.status);
  setStatus(job.status, { succeeded: "Succeeded", failed: "Failed", canceled: "Canceled", queued: "Queued", running: "Running" }[job.status] || job.status);
  if (job.progress) setProgress(job.progress.fraction);
  $("#progress-text").textContent = job.progress ? `step ${job.progress.step} / ${job.progress.total} · job ${job.id}` : `job ${job.id}`;
  if (!final) { out.append(el("div", { class: "placeholder" }, el("div", { class: "placeholder-art" }), el("p", { text: "Working on it…" }))); return; }
  if (job.error) out.append(el("div", { class: "error-box" }, el("strong", {}, el("code", { text: job.error.type }), " ", job.error.message)));
  if (job.warnings && job.warnings.length) out.append(el("div", { class: "warnings" }, job.warnings.join(" · ")));
  if (job.status === "succeeded") {
    const viewer = viewerOverride || VIEWERS[job.task] || viewImages;
    const slot = el("div");
    out.append(slot); // viewers that load images first still land above the data and timings
    Promise.resolve(viewer(job, slot)).catch((e) => slot.append(el("div", { class: "error-box", text: `Could not draw the result: ${e.message || e}` })));
  }
  if (job.data && Object.keys(job.data).length) {
    out.append(el("details", {}, el("summary", { class: "section-title", text: "Data (JSON)" }), el("pre", { class: "data", text: JSON.stringify(job.data, null, 2) })));
  }
  const t = job.timings || {};
  out.append(el("div", { class: "meta" }, el("span", { text: `task ${job.task}` }), t.run_s ? el("span", { text: `run ${t.run_s.toFixed(2)} s` }) : null,
    t.batch_size ? el("span", { text: `batch of ${t.batch_size}` }) : null, job.attempts > 1 ? el("span", { text: `attempts ${job.attempts}` }) : null));
  refreshRecent();
}

function viewImages(job, out) {
  const single = job.outputs.length === 1;
  out.append(el("div", { class: `outputs${single ? " single" : ""}` }, job.outputs.map((o) => outputCard(o))));
}

function inputImage() {
  return state.inputs && state.inputs.image && state.job ? state.inputs.image.dataUrl : null;
}

function viewDepth(job, out) {
  const preview = job.outputs.find((o) => o.kind === "preview") || job.outputs[0];
  const raw = job.outputs.find((o) => o.kind === "depth16");
  const cards = [];
  const src = inputImage();
  if (src) cards.push(el("figure", { class: "card" }, el("div", { class: "media" }, el("img", { src, alt: "input" })), el("figcaption", {}, el("span", { text: "input" }))));
  cards.push(outputCard(preview, "depth · colour map (red = near, blue = far)"));
  out.append(el("div", { class: "outputs" }, cards));
  if (raw) out.append(el("p", { class: "help" }, "Raw depth: ", el("a", { href: raw.signed_url, download: raw.name }, `${raw.name} (16-bit PNG, 65535 = nearest)`)));
}

async function overlayBase(job, fallbackName, width, height) {
  const canvas = el("canvas", { width, height });
  const ctx = canvas.getContext("2d");
  const src = inputImage() || (job.outputs.find((o) => o.name === fallbackName) || {}).signed_url;
  if (src) ctx.drawImage(await loadImage(src), 0, 0, width, height);
  return [canvas, ctx];
}

async function viewSegmentation(job, out) {
  const map = job.outputs.find((o) => o.name === "segmentation.png") || job.outputs[0];
  const classes = job.data.classes || [];
  const [canvas, ctx] = await overlayBase(job, "segmentation.png", map.width, map.height);
  const base = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const masks = await Promise.all(classes.map(async (c) => {
    const output = job.outputs.find((o) => o.name === c.mask);
    const img = await loadImage(output.signed_url);
    const tmp = el("canvas", { width: map.width, height: map.height });
    const tctx = tmp.getContext("2d"); tctx.drawImage(img, 0, 0, map.width, map.height);
    return tctx.getImageData(0, 0, map.width, map.height).data;
  }));
  const shown = classes.map(() => true);
  const rgb = classes.map((c) => cssColour(c.colour));
  const draw = () => {
    const frame = new ImageData(new Uint8ClampedArray(base.data), base.width, base.height);
    classes.forEach((_, k) => {
      if (!shown[k]) return;
      const m = masks[k], [r, g, b] = rgb[k];
      for (let i = 0; i < m.length; i += 4) if (m[i] > 127) { frame.data[i] = (frame.data[i] + r) / 2; frame.data[i + 1] = (frame.data[i + 1] + g) / 2; frame.data[i + 2] = (frame.data[i + 2] + b) / 2; }
    });
    ctx.putImageData(frame, 0, 0);
  };
  draw();
  const legend = el("div", { class: "legend" }, classes.map((c, k) => el("label", {}, el("input", { type: "checkbox", checked: true, onchange: (e) => { shown[k] = e.target.checked; draw(); } }),
    el("span", { class: "swatch", style: `background:${c.colour}` }), `${c.name} · ${c.pixels} px`)));
  out.append(el("div", { class: "section-title", text: "Masks over the input" }), legend, el("div", { class: "outputs single" }, outputCard(map, "masks over the input", canvas)),
    el("div", { class: "section-title", text: "Files" }), el("div", { class: "outputs" }, job.outputs.map((o) => outputCard(o))));
}

function cssColour(name) {
  const c = el("canvas", { width: 1, height: 1 }).getContext("2d");
  c.fillStyle = name; c.fillRect(0, 0, 1, 1);
  return [...c.getImageData(0, 0, 1, 1).data.slice(0, 3)];
}

async function viewDetection(job, out) {
  const map = job.outputs.find((o) => o.name === "detection.png") || job.outputs[0];
  const [canvas, ctx] = await overlayBase(job, "detection.png", map.width, map.height);
  ctx.lineWidth = Math.max(2, map.width / 160);
  ctx.font = `600 ${Math.max(11, map.width / 28)}px system-ui, sans-serif`;
  let count = 0;
  for (const c of job.data.classes || []) {
    for (const [x0, y0, x1, y1] of c.boxes || []) {
      count++;
      ctx.strokeStyle = ctx.fillStyle = c.colour;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const w = ctx.measureText(c.name).width + 8;
      ctx.fillRect(x0, Math.max(0, y0 - 18), w, 18);
      ctx.fillStyle = "#fff"; ctx.fillText(c.name, x0 + 4, Math.max(13, y0 - 5));
    }
  }
  const legend = el("div", { class: "legend" }, (job.data.classes || []).map((c) => el("span", {}, el("span", { class: "swatch", style: `background:${c.colour}` }), `${c.name} · ${(c.boxes || []).length} box${(c.boxes || []).length === 1 ? "" : "es"}`)));
  out.append(el("div", { class: "section-title", text: `Detected boxes (${count})` }), legend, el("div", { class: "outputs single" }, outputCard(map, "boxes drawn over the input", canvas)),
    el("div", { class: "section-title", text: "Files" }), el("div", { class: "outputs" }, job.outputs.map((o) => outputCard(o))));
}

function viewMultiview(job, out) {
  const cards = [];
  const src = inputImage();
  if (job.task === "image-to-multiview" && src) cards.push(el("figure", { class: "card" }, el("div", { class: "media" }, el("img", { src, alt: "view 0 (input)" })), el("figcaption", {}, el("span", { text: "view_0 · input" }))));
  const cams = (state.lastBody && state.lastBody.cameras) || [];
  for (const o of job.outputs) {
    const i = +((o.name.match(/\d+/) || [0])[0]);
    const cam = cams[i];
    cards.push(outputCard(o, cam ? `${o.name.replace(".png", "")} · az ${cam.azimuth}° el ${cam.elevation}°` : o.name));
  }
  out.append(el("div", { class: "section-title", text: "Views" }), el("div", { class: "outputs" }, cards));
}

function viewCameras(job, out) {
  const cams = (job.data.cameras || []).map((c) => c.c2w);
  if (job.outputs.length) viewImages(job, out);
  if (!cams.length) return;
  const canvas = el("canvas", { class: "plot3d", width: 640, height: 300, "aria-label": "Camera poses in 3-D" });
  out.append(el("div", { class: "section-title", text: "Camera poses (drag to rotate)" }), canvas);
  plotCameras(canvas, cams, job.data.cameras);
  const inputs = (state.inputs && state.inputs.images) || [];
  if (inputs.length) out.append(el("div", { class: "outputs" }, inputs.map((f, i) => el("figure", { class: "card" }, el("div", { class: "media" }, el("img", { src: f.dataUrl, alt: `view ${i}` })), el("figcaption", {}, el("span", { text: `view ${i}` }))))));
}

function plotCameras(canvas, c2ws, meta) {
  let yaw = 0.7, pitch = 0.35;
  const palette = ["#6d5efc", "#ff6fb5", "#12a26b", "#f59e0b", "#36c2ff", "#e0435a", "#8b5cf6", "#14b8a6"];
  const centre = [0, 1, 2].map((k) => c2ws.reduce((s, m) => s + m[k][3], 0) / c2ws.length);
  const extent = Math.max(0.5, ...c2ws.map((m) => Math.hypot(m[0][3] - centre[0], m[1][3] - centre[1], m[2][3] - centre[2])));
  const draw = () => {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 640, h = canvas.clientHeight || 300;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const scale = Math.min(w, h) / (2.4 * extent);
    const project = ([x, y, z]) => {
      x -= centre[0]; y -= centre[1]; z -= centre[2];
      const x1 = x * Math.cos(yaw) + z * Math.sin(yaw), z1 = -x * Math.sin(yaw) + z * Math.cos(yaw);
      const y2 = y * Math.cos(pitch) - z1 * Math.sin(pitch);
      return [w / 2 + x1 * scale, h / 2 - y2 * scale];
    };
    const line = (a, b, colour, width = 1) => { const p = project(a), q = project(b); ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath(); ctx.moveTo(...p); ctx.lineTo(...q); ctx.stroke(); };
    // ground grid and axes
    const g = extent * 1.5, y0 = centre[1] - extent * 0.8;
    for (let i = -4; i <= 4; i++) {
      const t = (i / 4) * g;
      line([centre[0] + t, y0, centre[2] - g], [centre[0] + t, y0, centre[2] + g], "rgba(20,23,38,.08)");
      line([centre[0] - g, y0, centre[2] + t], [centre[0] + g, y0, centre[2] + t], "rgba(20,23,38,.08)");
    }
    const o = centre, a = extent * 0.5;
    line(o, [o[0] + a, o[1], o[2]], "#e0435a", 2); line(o, [o[0], o[1] + a, o[2]], "#12a26b", 2); line(o, [o[0], o[1], o[2] + a], "#36c2ff", 2);
    c2ws.forEach((m, i) => {
      const pos = [m[0][3], m[1][3], m[2][3]];
      const col = (k) => [m[0][k], m[1][k], m[2][k]];
      const [right, up, back] = [col(0), col(1), col(2)];
      const s = extent * 0.28;
      const at = (u, v) => [0, 1, 2].map((k) => pos[k] - back[k] * s * 1.4 + right[k] * u * s + up[k] * v * s);
      const corners = [at(-1, -0.75), at(1, -0.75), at(1, 0.75), at(-1, 0.75)];
      const colour = palette[i % palette.length];
      corners.forEach((c, k) => { line(pos, c, colour, 1.5); line(c, corners[(k + 1) % 4], colour, 1.5); });
      line(at(-0.4, 0.75), at(0, 1.15), colour, 1.5); line(at(0, 1.15), at(0.4, 0.75), colour, 1.5);
      const [px, py] = project(pos);
      ctx.fillStyle = colour; ctx.beginPath(); ctx.arc(px, py, 4, 0, Math.PI * 2); ctx.fill();
      ctx.font = "600 12px system-ui, sans-serif";
      ctx.fillText(`view ${i}${meta && meta[i] && meta[i].predicted === false ? " (given)" : ""}`, px + 7, py - 7);
    });
  };
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY, yaw, pitch]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => { if (!drag) return; yaw = drag[2] + (e.clientX - drag[0]) / 120; pitch = Math.max(-1.4, Math.min(1.4, drag[3] + (e.clientY - drag[1]) / 120)); draw(); });
  canvas.addEventListener("pointerup", () => { drag = null; });
  requestAnimationFrame(draw);
}

const VIEWERS = {
  "depth-estimation": viewDepth,
  segmentation: viewSegmentation,
  detection: viewDetection,
  "image-to-multiview": viewMultiview,
  "text-to-multiview": viewMultiview,
  "camera-pose-estimation": viewCameras,
  generate: (job, out) => (job.data.cameras ? viewCameras(job, out) : viewImages(job, out)),
};

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

async function refreshRecent() {
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
    renderJob(job);
    if (!["succeeded", "failed", "canceled"].includes(job.status)) { setBusy(true); try { await follow(id); } finally { setBusy(false); } }
  } catch (e) { toast(`${e.type || "error"}: ${e.message}`); }
}

// ---- copy as curl / Python --------------------------------------------------------------------------------

function shellQuote(s) { return `'${String(s).replace(/'/g, "'\\''")}'`; }

function asCurl() {
  const { body, files } = collect({ forDisplay: true });
  const origin = location.origin;
  const auth = state.authOn ? ` \\\n  -H "Authorization: Bearer $ONEDIFFUSION_API_KEY"` : "";
  const nested = body.frames && body.frames.some((f) => f.image);
  if (Object.keys(files).length && !nested) {
    const parts = [];
    for (const [k, v] of Object.entries(body)) {
      if (IMAGE_FIELDS.includes(k)) { for (const name of files[k]) parts.push(`-F ${k}=@${shellQuote(name)}`); continue; }
      parts.push(`-F ${shellQuote(`${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)}`);
    }
    return `curl -X POST ${origin}/v1/${state.task}${auth} \\\n  -H 'Prefer: wait=60' \\\n  ${parts.join(" \\\n  ")}`;
  }
  let json = JSON.stringify(body);
  if (nested) json = json.replace(/"<([^">]+)>"/g, (_, name) => `"'"$(base64 -w0 ${shellQuote(name)})"'"`);
  return `curl -X POST ${origin}/v1/${state.task}${auth} \\\n  -H 'Content-Type: application/json' -H 'Prefer: wait=60' \\\n  -d ${shellQuote(json)}`;
}

function pyValue(v) {
  if (v === null || v === undefined) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") { const m = v.match(/^<(.+)>$/); return JSON.stringify(m ? m[1] : v); }
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pyValue(x)}`).join(", ")}}`;
}

function asPython() {
  const { body } = collect({ forDisplay: true });
  const { schema } = state.tasks[state.task];
  const required = schema.required || [];
  const props = Object.keys(schema.properties);
  const positional = props.filter((n) => required.includes(n) && n in body).map((n) => pyValue(body[n]));
  const keywords = props.filter((n) => !required.includes(n) && n in body).map((n) => `${n}=${pyValue(body[n])}`);
  const args = [...positional, ...keywords].join(", ");
  const key = state.authOn ? `, api_key=os.environ["ONEDIFFUSION_API_KEY"]` : "";
  return [
    "# pip install ./clients/python  (onediffusion_client)",
    state.authOn ? "import os\n" : "",
    "from onediffusion_client import Client",
    "",
    `client = Client(${JSON.stringify(location.origin)}${key})`,
    `job = client.${state.task.replace(/-/g, "_")}(${args})`,
    'print(job.status, [o.name for o in job.outputs])',
    'job.download("outputs")',
  ].filter((l, i) => l !== "" || i > 2).join("\n");
}

async function copy(text, message) {
  try { await navigator.clipboard.writeText(text); toast(message); }
  catch (_) {
    const area = el("textarea", {}, text); document.body.append(area); area.select();
    try { document.execCommand("copy"); toast(message); } finally { area.remove(); }
  }
  state.copied = text;
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text; t.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => { t.hidden = true; }, 2200);
}

start().catch((e) => { document.body.prepend(el("div", { class: "error-box", text: `The playground could not start: ${e.message}` })); });
