// Runs the JavaScript client against a live service (tests/client/test_js_client.py starts one):
//   node clients/js/test/smoke.mjs http://127.0.0.1:PORT
// Prints one JSON line of what it saw; exits non-zero with the error otherwise.
import assert from "node:assert/strict";
import { ApiError, Client, JobFailed, verifyWebhook } from "../onediffusion.mjs";

const client = new Client({ baseUrl: process.argv[2] });
const small = { width: 64, height: 64, num_inference_steps: 4 };
const seen = {};

// a task with progress, and its output
const steps = [];
const job = await client.textToImage({ prompt: "a lighthouse", seed: 7, ...small }, { onProgress: (p) => steps.push(p.step) });
assert.equal(job.status, "succeeded");
assert.ok(steps.length > 0 && steps.at(-1) === 4, `progress: ${steps}`);
const png = await client.read(job.outputs[0]);
assert.deepEqual([...png.slice(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
seen.progress = steps;

// errors as the API says them
await assert.rejects(client.textToImage({ prompt: "x", width: 100, height: 64, num_inference_steps: 1 }), (error) => {
  assert.ok(error instanceof ApiError);
  assert.equal(error.status, 422);
  assert.equal(error.fields[0].field, "width");
  return true;
});

// a canceled job rejects with JobFailed
const long = await client.submit("text-to-image", { prompt: "long", width: 128, height: 128, num_inference_steps: 200, priority: 2 });
assert.equal(long.priority, 2);
assert.ok("queue_position" in long && "eta_s" in long);
const canceled = await client.cancel(long.id);
assert.equal(canceled.status, "canceled");
assert.equal((await client.wait(long.id)).status, "canceled");
await assert.rejects(client.cancel(long.id), (error) => error instanceof ApiError && error.status === 409);

// num_outputs: a batch; a batch submit is idempotent under its key
const twins = await client.textToImage({ prompt: "twins", num_outputs: 2, ...small });
assert.equal(twins.jobs.length, 2);
const items = [{ task: "text-to-image", prompt: "batched", ...small }];
const key = `js-${Date.now()}-${Math.random()}`;
const batch = await client.submitBatch(items, { idempotencyKey: key });
assert.equal((await client.submitBatch(items, { idempotencyKey: key })).id, batch.id);  // a retry: the same batch
assert.notEqual((await client.submitBatch(items)).id, batch.id);  // a new key each call without one
assert.equal((await client.waitBatch(batch.id, { timeoutS: 120 })).status, "completed");

// paging
const page = await client.listJobs({ task: "text-to-image", limit: 2 });
assert.equal(page.data.length, 2);
assert.ok(page.next_cursor);
const all = [];
for await (const j of client.iterJobs({ task: "text-to-image", pageSize: 2 })) all.push(j.id);
assert.ok(all.includes(job.id) && new Set(all).size === all.length);
const batches = await client.listBatches({ limit: 1 });
assert.equal(batches.data.length, 1);

// Standard Webhooks verification
const secret = "s3cret-s3cret";
const body = JSON.stringify({ event: "job.succeeded" });
const timestamp = String(Math.floor(Date.now() / 1000));
const { createHmac } = await import("node:crypto");
const signature = createHmac("sha256", secret).update(`msg_1.${timestamp}.${body}`).digest("base64");
const headers = { "webhook-id": "msg_1", "webhook-timestamp": timestamp, "webhook-signature": `v1,${signature}` };
assert.equal((await verifyWebhook(headers, body, secret)).event, "job.succeeded");
await assert.rejects(verifyWebhook(headers, body + " ", secret));
assert.ok(JobFailed);

console.log(JSON.stringify({ ok: true, ...seen, jobs: all.length }));
