/* "Copy as curl" and "Copy as Python": the form's request as a command or a client snippet. */

import { el, state, toast } from "./core.js";
import { collect } from "./form.js";
import { IMAGE_FIELDS } from "./images.js";

// ---- copy as curl / Python --------------------------------------------------------------------------------

function shellQuote(s) { return `'${String(s).replace(/'/g, "'\\''")}'`; }

export function asCurl() {
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

export function asPython() {
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

export async function copy(text, message) {
  try { await navigator.clipboard.writeText(text); toast(message); }
  catch (_) {
    const area = el("textarea", {}, text); document.body.append(area); area.select();
    try { document.execCommand("copy"); toast(message); } finally { area.remove(); }
  }
  state.copied = text;
}
