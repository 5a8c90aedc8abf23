/* Results: a job's status, outputs, data and timings, with a viewer per kind of output (depth, masks,
   boxes, multiview, camera poses). */

import { $, el, setProgress, setStatus, state } from "./core.js";

// ---- results ---------------------------------------------------------------------------------------------

export function outputCard(output, caption, media) {
  const img = media || el("img", { src: output.signed_url, alt: output.name, loading: "lazy", "data-output": output.name });
  return el("figure", { class: "card" }, el("div", { class: "media" }, img),
    el("figcaption", {}, el("span", { text: caption || `${output.name} · ${output.width}×${output.height}` }),
      el("a", { class: "download", href: output.signed_url, download: output.name, title: `Download ${output.name}` }, "Download")));
}

function loadImage(src) {
  return new Promise((ok, fail) => { const img = new Image(); img.onload = () => ok(img); img.onerror = fail; img.src = src; });
}

export function renderJob(job, viewerOverride) {
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
