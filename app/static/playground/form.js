/* The task list and the form of the chosen task, built from its request schema in the OpenAPI document;
   reading the form back into a request body; API errors shown on the form. */

import { $, el, resolve, state, title, unwrap } from "./core.js";
import { dropZone, IMAGE_FIELDS, paintedMask } from "./images.js";

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

const DEFAULT_CAMERAS = [[0, 0], [30, 0], [60, 0], [90, 0]];
// On the demo checkpoint (random weights, often a CPU) the model's defaults (1024 px, 50+ steps) take
// minutes and hold the only worker; these finish in seconds. A released checkpoint keeps the schema's.
const DEMO_DEFAULTS = { width: 256, height: 256, num_inference_steps: 8 };

export function renderTaskList() {
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

// ---- the form -----------------------------------------------------------------------------------------

export function selectTask(name) {
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
export function applyDemoDefaults() {
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

export function collect({ forDisplay = false } = {}) {
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

// ---- errors ----------------------------------------------------------------------------------------------

export function clearError() {
  const box = $("#form-error");
  box.hidden = true; box.replaceChildren();
  for (const f of document.querySelectorAll(".field.invalid")) { f.classList.remove("invalid"); const m = $(".field-error", f); if (m) m.remove(); }
}

export function showError(e) {
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
