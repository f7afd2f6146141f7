"""Settings: one object, read from the environment (prefix ``TRAINYARD_``).

With nothing set, Trainyard runs embedded: SQLite under ``TRAINYARD_HOME`` and
kombu's filesystem transport as the broker, so one laptop needs no services.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseSettings):
    """Caps enforced before anything is queued or stored (each refusal names the cap)."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_LIMIT_")

    max_parameters: int = 5_000_000
    max_layers: int = 32
    max_width: int = 4096
    max_epochs: int = 1000
    max_work: int = 200_000_000  # epochs x training rows
    max_batch_size: int = 65_536
    max_rows_synthetic: int = 1_000_000
    max_synthetic_values: int = 50_000_000  # generated rows x features (memory)
    # shapes.memory_estimate: activations of one training step (or sharpness pass); eval
    # chunks are sized to max(that step, 64 MiB), so keep this >= 64 MiB.
    max_activation_bytes: int = 2 * 1024**3
    # Everything a job holds in a worker at its peak (data, weights and optimizer state,
    # activations, a split's outputs, recorded predictions), device and host together.
    max_memory_bytes: int = 8 * 1024**3
    max_dataset_bytes: int = 64 * 1024 * 1024
    max_dataset_rows: int = 1_000_000
    max_dataset_columns: int = 10_000
    max_request_bytes: int = 80 * 1024 * 1024  # ceiling over every body, uploads included
    # JSON bodies (jobs, experiments): room for every list a client writes at its cap plus
    # per-row lists (bootstrap weights, target_offset) of ~300,000 rows; experiments build
    # longer per-row lists themselves, never over HTTP.
    max_json_bytes: int = 8 * 1024 * 1024
    # An upload's values once decoded (rows x features x 8, the float64 copy parsing builds),
    # checked from NPZ headers and CSV counts before anything is decoded: bounds a zip bomb.
    # 16M values; the stored float32 copy is then at most max_dataset_bytes (64 MiB).
    max_dataset_decoded_bytes: int = 128 * 1024 * 1024
    max_form_files: int = 1  # multipart file parts per upload
    max_form_fields: int = 16  # multipart non-file fields per upload
    max_form_field_bytes: int = 64 * 1024
    max_concurrent_jobs: int = 64  # per tenant, queued + running
    # per tenant, unless `trainyard tenants quota` set its own: bytes of datasets,
    # checkpoints and model exports together, and the number of datasets
    quota_storage_bytes: int = Field(default=10 * 1024**3, ge=0)
    quota_datasets: int = Field(default=500, ge=0)
    max_experiment_children: int = 200
    # One stage's child specs as JSON, summed (checked from sizes before any is built): a large
    # value swept against many others would otherwise be copied into every child it meets.
    max_experiment_spec_bytes: int = 64 * 1024 * 1024
    # POST /v1/jobs/{id}/predict: rows per request, and its own body cap (a digits row is ~1 KB
    # of JSON: 16 MiB holds max_predict_rows of 64 features with room to spare)
    max_predict_rows: int = 10_000
    max_predict_bytes: int = 16 * 1024 * 1024


class Settings(BaseSettings):
    """Process-wide configuration; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_")

    home: Path = Field(default=Path(".trainyard"), description="State directory (embedded mode).")
    database_url: str | None = None
    broker_url: str | None = None
    default_queue: str = "cpu"
    max_attempts: int = 3
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 2.0
    # an epoch's metric rows are written at its end, or with the next epochs' when the last
    # write was less than this ago (short epochs: one transaction per interval); 0: each epoch
    metrics_flush_seconds: float = Field(default=0.25, ge=0, le=60)
    reaper_interval_seconds: float = 5.0
    requeue_after_seconds: float = 60.0
    job_time_limit_seconds: float = 6 * 3600.0
    broker_visibility_timeout: float | None = None  # default: above the job time limit
    torch_threads: int = 0  # per pool child; 0: cores / --concurrency (`trainyard worker`)
    # a worker retries SQL this long, then hands the job back (an outage is not a failure)
    db_retry_seconds: float = 300.0
    # a stopping worker waits this long for its pool, then kills it (below stop_grace_period)
    worker_stop_seconds: float = 45.0
    worker_heartbeat_seconds: float = 5.0  # a worker's beat in the `workers` registry
    worker_lost_seconds: float = 30.0  # no beat for this long: the worker counts as gone
    # a queued job fails `no_worker` once its queue has had no live worker this long; 0: never
    no_worker_after_seconds: float = 900.0  # above a GPU node's cold start (autoscaling)
    # an API process trusts a key it accepted for this long: a revoked key is refused
    # within this bound (0: look every key up in SQL on every request)
    key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    api_workers: int = Field(default=0, ge=0, le=64)  # `trainyard api` processes; 0: cores/2, 2-4
    # GET /metrics (Prometheus) is served only when this is set, to `Authorization: Bearer
    # <token>`; unset, the route does not exist (404), like any path the API does not serve
    metrics_token: SecretStr | None = Field(default=None, min_length=16)
    # prometheus_client's multiprocess folder on this host; default: <home>/metrics
    metrics_dir: Path | None = None
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    # a worker's own Prometheus endpoint (its host's processes; no SQL state), for workers on
    # hosts the API's /metrics cannot read; a separate bind, off the API. 0: off
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # SSE: one poller per API process reads new events this often (sooner when Postgres
    # NOTIFYs); a comment line this often keeps proxies from closing an idle stream
    events_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    events_max_streams: int = Field(default=1000, ge=1, le=100_000)  # per API process; 503 over
    # inference sessions kept by each API process (LRU, by ONNX size: a model at the
    # 5 M-parameter cap is ~20 MB), and onnxruntime's threads per prediction
    predict_cache_bytes: int = Field(default=256 * 1024**2, ge=0)
    predict_threads: int = Field(default=1, ge=1, le=64)
    # an API process trusts a job's ready model (its graph's sha256) this long without
    # reading SQL again: a deleted job stops predicting within this bound (0: read each time)
    model_state_seconds: float = Field(default=5.0, ge=0, le=300)
    # finished jobs and experiments unchanged this many days are deleted by the reaper
    # (`keep: true` exempts one); unset: kept forever. At most retention_batch a pass.
    retention_days: float | None = Field(default=None, gt=0)
    retention_batch: int = Field(default=100, ge=1, le=10_000)
    # A reaper pass runs every few seconds; retention's queries need not, once per interval
    # per worker process is plenty for something measured in days.
    retention_interval_seconds: float = Field(default=300.0, gt=0)
    limits: Limits = Field(default_factory=Limits)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+pysqlite:///{(self.home / 'trainyard.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem:")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
