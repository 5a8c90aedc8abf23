// TypeScript declarations of clients/js/onediffusion.mjs. The fields of each task are the API's (see /docs or
// /openapi.json); they are passed through as given.

export type TaskName =
  | "text-to-image"
  | "depth-to-image"
  | "canny-to-image"
  | "hed-to-image"
  | "pose-to-image"
  | "semantic-map-to-image"
  | "boxes-to-image"
  | "depth-estimation"
  | "edge-estimation"
  | "pose-estimation"
  | "segmentation"
  | "detection"
  | "deblurring"
  | "inpainting"
  | "image-editing"
  | "id-customization"
  | "subject-driven"
  | "image-to-multiview"
  | "text-to-multiview"
  | "camera-pose-estimation"
  | "generate";
export declare const TASKS: TaskName[];

export interface Progress { step: number; total: number; fraction: number }
export interface Output {
  name: string; url: string; signed_url: string; kind: string; media_type: string; width: number; height: number;
}
export interface Job {
  id: string; task: string; status: "queued" | "running" | "succeeded" | "failed" | "canceled";
  progress: Progress | null;
  /** Jobs served before this one in the fair order between tenants (0 = next); null unless queued. */
  queue_position: number | null;
  /** Estimated seconds until the job ends, from measured step times; null until one has been measured. */
  eta_s: number | null;
  /** 0 to 9: its place among its tenant's own queued jobs, higher first (never ahead of another tenant's turn). */
  priority: number;
  created_at: string | null; started_at: string | null;
  finished_at: string | null; outputs: Output[]; data: Record<string, unknown>; warnings: string[];
  error: { type: string; message: string } | null; attempts: number; batch_id: string | null;
  urls: Record<string, string>; input: Record<string, unknown>; timings: Record<string, number>;
}
export interface Batch {
  id: string; status: "running" | "completed"; created_at: string; counts: Record<string, number>; jobs: Job[];
  urls: Record<string, string>;
}
export interface Page<T> { data: T[]; next_cursor: string | null }
export interface Webhook { url: string; secret?: string; events?: ("started" | "progress" | "completed")[] }
export type TaskFields = Record<string, unknown> & {
  webhook?: Webhook; num_outputs?: number; output_format?: "png" | "webp" | "jpeg";
  /** 0 to 9: orders your own queued jobs, higher first; omitted: the API key's priority. */
  priority?: number;
};
export interface RunOptions { onProgress?: (progress: Progress) => void; timeoutS?: number; idempotencyKey?: string }

export declare class ApiError extends Error {
  status: number; type: string; detail: string; fields: { field: string; message: string }[];
}
export declare class JobFailed extends Error { job: Job }
export declare class WaitTimeout extends Error {}

export declare class Client {
  constructor(options?: { baseUrl?: string; apiKey?: string; maxRetries?: number; maxRetryAfterS?: number; fetch?: typeof fetch });
  baseUrl: string;
  submit(task: TaskName, fields?: TaskFields, options?: { idempotencyKey?: string; preferWait?: number }): Promise<Job | Batch>;
  run(task: TaskName, fields?: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  events(jobId: string, options?: { signal?: AbortSignal }): AsyncGenerator<{ type: string; data: any }>;
  wait(job: string | Job, options?: { onProgress?: (progress: Progress) => void; timeoutS?: number }): Promise<Job>;
  job(id: string): Promise<Job>;
  cancel(id: string): Promise<Job>;
  batch(id: string): Promise<Batch>;
  cancelBatch(id: string): Promise<Batch>;
  listJobs(query?: { status?: string; task?: string; limit?: number; cursor?: string }): Promise<Page<Job>>;
  listBatches(query?: { status?: string; limit?: number; cursor?: string }): Promise<Page<Batch>>;
  iterJobs(query?: { status?: string; task?: string; pageSize?: number }): AsyncGenerator<Job>;
  submitBatch(items: ({ task: TaskName } & TaskFields)[], options?: { webhook?: Webhook; idempotencyKey?: string }): Promise<Batch>;
  waitBatch(id: string, options?: { timeoutS?: number; intervalMs?: number }): Promise<Batch>;
  read(output: Output | string): Promise<Uint8Array>;
  textToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  depthToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  cannyToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  hedToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  poseToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  semanticMapToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  boxesToImage(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  depthEstimation(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  edgeEstimation(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  poseEstimation(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  segmentation(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  detection(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  deblurring(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  inpainting(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  imageEditing(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  idCustomization(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  subjectDriven(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  imageToMultiview(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  textToMultiview(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  cameraPoseEstimation(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
  generate(fields: TaskFields, options?: RunOptions): Promise<Job | Batch>;
}

export declare function verifyWebhook(
  headers: Headers | Record<string, string>, rawBody: string | Uint8Array, secret: string, options?: { toleranceS?: number },
): Promise<any>;
