"""The one settings object of the service, read from ``BISE_*`` environment variables.

The defaults are the embedded single-machine set-up (SQLite file, local storage folder);
docker-compose.yml, CI and production point ``BISE_DATABASE_URL`` at PostgreSQL
(``postgresql+psycopg://...``), ``BISE_REDIS_URL`` at Redis and ``BISE_STORAGE_URL`` at a
shared folder or an ``s3://bucket/prefix``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

DEFAULT_HOME = Path(".bise")


class Settings(BaseSettings):
    """Every knob of the API and the workers (field ``x`` is read from ``BISE_X``)."""

    model_config = SettingsConfigDict(env_prefix="BISE_", extra="ignore", validate_default=True)

    # where things live
    database_url: str = Field(f"sqlite:///{DEFAULT_HOME}/bise.db", description="SQLAlchemy URL")
    redis_url: str | None = Field(
        None,
        description="Celery broker and live event streams (redis://...); unset or empty: the embedded "
        "broker, a SQLite queue next to the database, and events polled from the database",
    )
    embedded_broker_url: str = Field(
        f"sqla+sqlite:///{DEFAULT_HOME}/broker.db",
        description="kombu SQLAlchemy broker used when BISE_REDIS_URL is unset (one machine only)",
    )
    storage_url: str = Field(f"file://{DEFAULT_HOME.resolve()}/storage", description="file:///path or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); AWS when unset")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders dataset file:// URIs may point into (os.pathsep-separated)"
    )
    work_dir: Path = Field(DEFAULT_HOME / "work", description="worker scratch space (downloads, checkpoints)")

    # API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1, description="model upload size cap (413 above)")
    auto_migrate: bool = Field(False, description="apply Alembic migrations when the API starts")
    rate_limit_per_minute: int = Field(6000, ge=0, description="requests per API key per minute (0: off)")
    api_workers: int = Field(1, ge=1, le=64)
    log_level: str = "info"

    # queues and workers
    queue_gpu: str = Field("gpu", description="Celery queue of BISE jobs")
    queue_cpu: str = Field("cpu", description="Celery queue of validations and webhooks")
    cpu_concurrency: int = Field(2, ge=1, le=64, description="threads of the cpu-queue worker")
    device: str = Field("auto", description="torch device of the jobs: auto, cpu, cuda, cuda:N")
    lease_seconds: float = Field(60.0, gt=0, description="a job's lease; renewed every heartbeat")
    heartbeat_seconds: float = Field(5.0, gt=0, description="lease renewal and cancel-check period")
    requeue_after_seconds: float = Field(300.0, gt=0, description="re-dispatch a queued job not started after this")
    reaper_seconds: float = Field(15.0, gt=0, description="how often a worker looks for expired leases")
    visibility_timeout_seconds: int = Field(7 * 24 * 3600, ge=60, description="Redis broker visibility timeout")
    max_attempts: int = Field(5, ge=1, description="job runs (resumes included) before it is failed")
    worker_nice: int = Field(10, ge=0, le=19, description=(
        "niceness the workers add to themselves: where the API shares the machine, its requests "
        "go before batch compute (0 keeps the scheduler's default)"))
    job_memory_bytes: int = Field(32 * 1024**3, ge=1024**2,
                                  description="a job's estimated peak memory above which it is refused (422)")

    # sandbox for untrusted uploads
    sandbox_memory_bytes: int = Field(8 * 1024**3, ge=256 * 1024**2, description="address-space cap of validation")
    sandbox_cpu_seconds: int = Field(300, ge=1)
    sandbox_timeout_seconds: float = Field(600.0, gt=0)
    sandbox_isolate_network: bool = Field(True, description="new network namespace when the OS allows it")

    # webhooks
    webhook_max_attempts: int = Field(8, ge=1, le=50)
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="first retry delay; doubles per attempt")
    webhook_timeout_seconds: float = Field(10.0, gt=0)

    # redis key namespace (so that several deployments or test runs can share one Redis)
    redis_prefix: str = "bise:"

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            import os

            return [Path(p) for p in value.split(os.pathsep) if p.strip()]
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def broker_url(self) -> str:
        """Redis when configured; otherwise the embedded SQLAlchemy queue (no service to run)."""
        return self.redis_url or self.embedded_broker_url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests clear the cache after changing the environment."""
    return Settings()
