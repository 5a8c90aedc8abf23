"""Every setting of the service, read from the environment in one place.

Each field's environment variable is its name in upper case (`redis_url` <- `REDIS_URL`); the README's
settings table is generated from this class (`onediffusion settings --table`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    onediffusion_model: Optional[str] = Field(
        None, description="Checkpoint folder in the released layout; unset = the tiny demo checkpoint (outputs are noise)"
    )
    demo_checkpoint_dir: str = Field("var/demo-checkpoint", description="Where the demo checkpoint is made when needed")
    results_dir: str = Field("var/results", description="Folder that stores job outputs")
    results_ttl_s: int = Field(7 * 24 * 3600, description="How long outputs and job records are kept")
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
    onediffusion_attention: Literal["auto", "math", "triton", "triton-fast", "flex"] = Field(
        "auto", description="Attention backend; auto = the fastest that passes the start-up check (math on the CPU)"
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

    # ---- webhooks
    webhook_retries: int = Field(8, ge=0, le=30, description="Delivery attempts after the first one")
    webhook_backoff_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST, all of it (connect to last byte)")
    webhook_concurrency: int = Field(8, ge=1, le=256, description="Webhook deliveries one deliverer has in flight at once")
    webhook_per_host: int = Field(4, ge=1, le=256, description="Most deliveries in flight to one destination host, across all deliverers (a slow receiver delays only its own)")

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
    max_streams_per_key: int = Field(20, ge=0, description="Open event streams (SSE) per API key (0 = no limit)")
    max_streams_per_tenant: int = Field(100, ge=0, description="Open event streams (SSE) per tenant (0 = no limit)")

    # ---- security
    auth_disabled: bool = Field(False, description="Serve /v1 without API keys (local demo only); every caller is tenant 'public'")
    url_signing_secret: Optional[str] = Field(None, description="Signs expiring file URLs; default: a random one kept in Redis")
    signed_url_ttl_s: int = Field(24 * 3600, ge=60, description="Lifetime of the signed output URLs in job views and webhooks")
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
    image_url_timeout_s: float = Field(10.0, gt=0, description="Deadline for fetching one input image from a URL, all of it")
    cors_allow_origins: str = Field(
        "", description="Browser origins allowed to call the API (CORS), e.g. 'https://app.example.com,http://localhost:3000'; empty = none"
    )

    # ---- API server
    host: str = Field("127.0.0.1", description="Address the API listens on")
    port: int = Field(8000, description="Port the API listens on")
    keep_alive_s: int = Field(
        75, ge=1, le=3600,
        description="Idle HTTP keep-alive kept open by the API; longer than a client's or load balancer's (60 s), so the server never closes a connection a client is about to reuse",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _known_precision(cls, value):
        if isinstance(value, str) and value.strip().lower() in ("bf16", "fp8"):
            return value.strip().lower()
        raise ValueError(f"PRECISION must be 'bf16' or 'fp8', got {value!r}")

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
