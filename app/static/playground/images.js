/* Image inputs: upload, drag and drop and paste into drop zones, and the mask painter for inpainting. */

import { $, el, state, toast } from "./core.js";

export const IMAGE_FIELDS = ["image", "mask", "images"];

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

export function dropZone(name, multiple, prop, onChange) {
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

export function onPaste(e) {
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

export function paintedMask() {
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
