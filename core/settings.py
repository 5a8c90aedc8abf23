"""Every setting of the service, read from the environment in one place.

Each field's environment variable is its name in upper case (`redis_url` <- `REDIS_URL`); the settings
table of docs/operations.md is generated from this class (`onediffusion settings --table`; tests/project/test_docs.py
fails when the two differ).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.attention_registry import backend_names, check_setting  # no torch: the gateway validates with it


class SettingsError(ValueError):
    """A setting's environment variable holds a bad value; the message names the variable, e.g.
    `PORT='abc': Input should be a valid integer, unable to parse string as an integer`."""

    def __init__(self, error: ValidationError):
        problems = []
        for item in error.errors():
            name = str(item["loc"][0]).upper() if item["loc"] else "settings"
            shown = item["loc"] and not isinstance(item["input"], dict) and "secret" not in name.lower()
            given = f"={item['input']!r}" if shown else ""
            problems.append(f"{name}{given}: {item['msg']}")
        super().__init__("bad setting: " + "; ".join(problems))


class Settings(BaseSettings):
    """Read by pydantic-settings from the environment and a `.env` file in the working directory (the
    environment wins); empty values count as unset."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", env_ignore_empty=True, extra="ignore")

    # ---- connections and storage
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the queue, jobs and results")
    redis_sentinels: str = Field(
        "", description="Sentinels that name the Redis master, 'host:port,host:port'; set, REDIS_URL gives only the database, user and password (and the master is followed through failovers)"
    )
    redis_sentinel_master: str = Field("mymaster", description="Name of the master the sentinels watch (with REDIS_SENTINELS)")
    redis_wait_replicas: Optional[int] = Field(
        None, ge=0, le=16,
        description="Replicas that must hold a submission before it is answered 202 (Redis WAIT); unset = 1 with REDIS_SENTINELS, else 0",
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, le=60_000,
        description="Longest wait for those replicas; past it the job stays queued, is answered 202 and the shortfall is logged and counted",
    )
    onediffusion_model: Optional[str] = Field(
        None,
        description="Checkpoint in the released layout: a folder, `s3://bucket/prefix` or `hf://owner/name[@revision]` "
        "(fetched once into MODEL_CACHE_DIR); unset = the tiny demo checkpoint (outputs are noise)",
    )
    model_cache_dir: str = Field(
        "var/model-cache",
        description="Node-local folder that s3:// and hf:// checkpoints are fetched into and loaded from (workers of one node share it; a file lock makes one fetch)",
    )
    demo_checkpoint_dir: str = Field("var/demo-checkpoint", description="Where the demo checkpoint is made when needed")
    results_dir: str = Field("var/results", description="Folder that stores job inputs and outputs when STORAGE_URL is unset")
    results_ttl_s: int = Field(
        7 * 24 * 3600, description="How long output files and stored input images are kept (see JOB_TTL_S for job records; with STORAGE_URL, the bucket's lifecycle rule expires the files)"
    )
    job_ttl_s: int = Field(
        7 * 24 * 3600, ge=1,
        description="How long a job's Redis records are kept: the job, its result and errors, progress, Idempotency-Key, listing entries, batch records",
    )
    results_min_free_mb: int = Field(
        64, ge=0, description="Free space the results folder needs for /readyz to say ready (0 = not checked)"
    )
    storage_url: Optional[str] = Field(
        None,
        description="s3://bucket/prefix: inputs and outputs in S3-compatible object storage (endpoint and credentials from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION); file:///path: that folder; unset = the folder RESULTS_DIR",
    )
    storage_public_endpoint: Optional[str] = Field(
        None, description="Endpoint that presigned output URLs name, when clients reach the object storage at another address than the service does (e.g. http://localhost:9000)"
    )
    storage_timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of one object storage request")
    storage_retry_s: float = Field(
        60.0, ge=0, le=3600, description="How long a worker retries reading inputs or storing outputs while the storage is unavailable, before the job fails with storage_unavailable"
    )
    storage_check_s: float = Field(
        10.0, ge=0, le=3600, description="How long the API trusts the object storage's last yes (a small write succeeded) before checking again; a bucket removed or made read-only is noticed by submissions within this long"
    )
    public_url: Optional[str] = Field(
        None, description="Base URL that output URLs and webhooks point to; unset = http://HOST:PORT (set it behind a proxy)"
    )
    queue_prefix: str = Field("onediffusion", description="Prefix of the RQ queue names (inference and webhooks)")

    # ---- worker
    max_batch: int = Field(4, ge=1, le=64, description="Most jobs of one token shape that share a denoising step (a sampler batch)")
    batch_window_ms: int = Field(
        0, ge=0, le=10_000,
        description="No longer used: a lone job starts at once on an idle worker and later jobs of its shape join at the next step (kept so older configurations still load)",
    )
    tenant_weights: str = Field(
        "", description="Shares of the GPUs between tenants with queued jobs, e.g. 'acme=2,beta=0.5' (unnamed tenants: 1)"
    )
    device: Optional[str] = Field(None, description="Torch device of the worker; default cuda when present, else cpu")
    compile: bool = Field(True, description="torch.compile the denoiser on CUDA (checked against eager at start; see fast path)")
    compile_on_cpu: bool = Field(False, description="Also compile on the CPU (slow to start; for proofs of the GPU path)")
    onediffusion_attention: str = Field(
        "auto",
        description="Attention backend: auto = the fastest that passes the start-up check (math on the CPU), or one "
        f"of the registered backends ({', '.join(backend_names())}), still checked at start",
    )
    fast_path_tolerance: float = Field(
        3e-2, gt=0, le=1, description="Largest relative error of the compiled/fused model against eager math at start"
    )
    precision: Literal["bf16", "fp8"] = Field(
        "bf16",
        description="Denoiser linear layers: bf16 or fp8 (torchao, the 'fp8' extra; compute capability >= 8.9, else the worker stays bf16 and says why)",
    )
    warm_buckets: str = Field(
        "", description="Shapes to compile at start, e.g. '1024x1024x1x50,512x512x2x50' (height x width x frames x steps)"
    )
    job_retries: int = Field(2, ge=0, le=10, description="Retries of a job whose worker died")
    job_timeout_s: int = Field(1800, ge=1, description="A job running longer fails with a timeout message")
    heartbeat_ttl_s: int = Field(20, ge=3, description="A running job whose worker is silent this long is retried")
    maintenance_interval_s: int = Field(5, ge=1, description="How often workers look for abandoned jobs")
    watchdog_stall_s: float = Field(
        0, ge=0,
        description="A worker whose running batch makes no step for this long gives its jobs back to the queue and exits (to be restarted); 0 = derived from the measured step time (see docs/operations.md, worker health)",
    )
    worker_probe_port: int = Field(
        0, ge=0, le=65535, description="Port of the worker's /livez and /readyz probes (on HOST); 0 = none"
    )

    # ---- webhooks
    webhook_retries: int = Field(8, ge=0, le=30, description="Delivery attempts after the first one")
    webhook_backoff_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST, all of it (connect to last byte)")
    webhook_concurrency: int = Field(8, ge=1, le=256, description="Webhook deliveries one deliverer has in flight at once")
    webhook_per_host: int = Field(4, ge=1, le=256, description="Most deliveries in flight to one destination address (resolved, whatever names point to it), across all deliverers (a slow receiver delays only its own)")
    webhook_per_tenant: int = Field(4, ge=1, le=256, description="Most deliveries in flight for one tenant, across all deliverers (a tenant's slow receivers delay only its own)")
    webhook_progress_interval_s: float = Field(
        2.0, ge=0.05, le=3600, description="Least time between two progress webhooks of one job (webhook.events with 'progress')"
    )

    # ---- request limits
    max_body_bytes: int = Field(50 * 1024 * 1024, description="Largest request body (HTTP 413 above)")
    max_side: int = Field(2048, description="Largest output width or height in pixels")
    max_output_pixels: int = Field(2048 * 2048, description="Largest output width*height")
    max_input_pixels: int = Field(40_000_000, description="Largest decoded input image (decompression bombs)")
    max_frames: int = Field(16, description="Most frames in one task")
    max_views: int = Field(8, description="Most views in a multiview task")
    max_batch_items: int = Field(64, description="Most items in one POST /v1/batches")
    max_wait_s: int = Field(60, description="Longest `Prefer: wait=N` a client may ask for")
    max_request_pixels: int = Field(100_000_000, ge=1, description="Most decoded pixels of all input images of one request together")
    max_job_cost: int = Field(
        4_000_000, ge=1, description="Most work one job may ask for: tokens per frame (16x16 px) x frames x steps"
    )
    decode_budget_mb: int = Field(
        512, ge=64, description="Memory the API may spend decoding input images at once, all requests together (MB); "
        "a decode that does not fit waits its turn (DECODE_WAIT_S), then gets 503"
    )
    decode_wait_s: float = Field(15.0, ge=0, le=300, description="Longest a request waits for room in DECODE_BUDGET_MB")
    max_streams_per_key: int = Field(20, ge=0, description="Open event streams (SSE) per API key (0 = no limit)")
    max_streams_per_tenant: int = Field(100, ge=0, description="Open event streams (SSE) per tenant (0 = no limit)")

    # ---- security
    auth_disabled: bool = Field(False, description="Serve /v1 without API keys (local demo only); every caller is tenant 'public'")
    url_signing_secret: Optional[str] = Field(None, description="Signs expiring file URLs; default: a random one kept in Redis")
    signed_url_ttl_s: int = Field(24 * 3600, ge=60, description="Lifetime of the signed output URLs in job views and webhooks (presigned bucket URLs with STORAGE_URL: at most 7 days)")
    rate_limit_per_minute: int = Field(120, ge=0, description="Submissions per API key per minute (0 = no limit)")
    max_active_jobs_per_tenant: int = Field(64, ge=0, description="Queued plus running jobs per tenant (0 = no limit)")
    max_queue_depth: int = Field(2000, ge=0, description="Jobs waiting in the queue before submissions get 429 (0 = no bound)")
    max_prompt_chars: int = Field(2000, ge=1, le=4000, description="Longest prompt or negative prompt, in characters")
    max_steps: int = Field(200, ge=1, le=200, description="Most denoising steps a request may ask for")
    webhook_allowlist: str = Field(
        "", description="Hosts, IPs or CIDRs webhooks may call although private (e.g. '10.0.0.0/8,hooks.internal')"
    )
    webhook_max_response_bytes: int = Field(65536, description="Most bytes read from a webhook receiver's answer")
    image_url_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest input image fetched from a URL (http(s) URLs in image fields)"
    )
    image_url_timeout_s: float = Field(
        10.0, gt=0, description="Deadline for fetching the input images of one request from their URLs, all of it"
    )
    image_url_allowlist: str = Field(
        "", description="Hosts, IPs or CIDRs that input images may be fetched from although private (e.g. '10.0.0.0/8'); "
        "link-local and metadata addresses are never fetched, loopback only at an address named exactly. Apart from WEBHOOK_ALLOWLIST"
    )
    image_url_concurrency: int = Field(64, ge=1, le=4096, description="Image fetches in flight in one API process, all tenants together")
    image_url_per_tenant: int = Field(8, ge=1, le=4096, description="Image fetches in flight for one tenant in one API process")
    cors_allow_origins: str = Field(
        "", description="Browser origins allowed to call the API (CORS), e.g. 'https://app.example.com,http://localhost:3000'; empty = none"
    )

    # ---- API server
    host: str = Field("127.0.0.1", description="Address the API (and a worker's probe port) listens on")
    port: int = Field(8000, description="Port the API listens on")
    keep_alive_s: int = Field(
        75, ge=1, le=3600,
        description="Idle HTTP keep-alive kept open by the API; longer than a client's or load balancer's (60 s), so the server never closes a connection a client is about to reuse",
    )

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_list(cls, value: str) -> str:
        sentinel_addresses(value)  # raises on a malformed entry, naming it
        return value

    @property
    def wait_replicas(self) -> int:
        """Replicas a submission waits for: REDIS_WAIT_REPLICAS, else 1 when Sentinel runs a replicated set."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels.strip() else 0
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A connection whose request headers are not all in this long after it opened (or after their first byte) is closed"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A request whose body is not all in this long after its headers is cut off (put a buffering proxy in front for slow clients)"
    )
    max_connections: int = Field(
        1000, ge=16, description="Open connections the API keeps; past it a new connection is answered 503 and closed (bounded by the open-files limit)"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _known_precision(cls, value):
        if isinstance(value, str) and value.strip().lower() in ("bf16", "fp8"):
            return value.strip().lower()
        raise ValueError(f"PRECISION must be 'bf16' or 'fp8', got {value!r}")

    @field_validator("onediffusion_attention")
    @classmethod
    def _registered_attention(cls, value: str) -> str:
        return check_setting(value)  # ValueError listing the registered backends

    @field_validator("storage_url")
    @classmethod
    def _registered_storage(cls, value):
        if value is not None:
            from .storage import check_storage_url  # ValueError naming STORAGE_URL and the registered schemes

            check_storage_url(value)
        return value

    @field_validator("tenant_weights")
    @classmethod
    def _weights_parse(cls, value: str) -> str:
        from .queueing import parse_weights

        parse_weights(value)
        return value

    @classmethod
    def from_env(cls, environ: Optional[dict] = None) -> "Settings":
        """The environment (and `.env`); `environ` given: that mapping alone (tests, checks of deploy files)."""
        try:
            if environ is None:
                return cls()
            values = {name: environ[name.upper()] for name in cls.model_fields
                      if name.upper() in environ and environ[name.upper()] != ""}
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(exc) from None

    def current(self) -> list[tuple[str, str]]:
        """(VARIABLE, value) of every setting as this process sees it; secrets shown as set or not."""
        rows = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if "secret" in name and value:
                value = "[set]"
            rows.append((name.upper(), "" if value is None else str(value)))
        return rows

    def task_limits(self):
        from model.tasks import TaskLimits

        return TaskLimits(
            max_side=self.max_side,
            max_output_pixels=self.max_output_pixels,
            max_input_pixels=self.max_input_pixels,
            max_frames=self.max_frames,
            max_views=self.max_views,
            max_prompt_chars=self.max_prompt_chars,
            max_steps=self.max_steps,
            max_request_pixels=self.max_request_pixels,
            max_job_cost=self.max_job_cost,
        )

    def markdown_table(self) -> str:
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for name, info in type(self).model_fields.items():
            default = "" if info.default is None else f"`{info.default}`"
            rows.append(f"| `{name.upper()}` | {default} | {info.description} |")
        return "\n".join(rows)

    @model_validator(mode="after")
    def _derive_public_url(self) -> "Settings":
        """Unset PUBLIC_URL follows HOST and PORT, so `PORT=8731` gives URLs on :8731 (a wildcard host is
        reached as 127.0.0.1 from this machine)."""
        if not self.public_url:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
            host = f"[{host}]" if ":" in host else host
            self.public_url = f"http://{host}:{self.port}"
        return self


def sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """'host:port,host:port' (IPv6 as [addr]:port) -> [(host, port)]; empty -> []."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port (e.g. 'sentinel-0:26379,sentinel-1:26379')")
        addresses.append((host, int(port)))
    return addresses


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
