"""Request and response bodies of the v1 API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from bise_core.config import BiseConfig

T = TypeVar("T")

Metadata = dict[str, str]
METADATA_DOC = "up to 16 string pairs (keys <= 64 chars, values <= 512 chars); filter lists with metadata[key]=value"


ID_PATTERN = r"^[a-z]{3}_[0-9A-Z]{26}$"


def no_nul(value: str) -> str:
    """PostgreSQL text and JSONB cannot hold NUL characters; say so instead of failing later."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(no_nul)]


def check_metadata(value: dict[str, str] | None) -> dict[str, str]:
    value = value or {}
    for key, item in value.items():
        no_nul(key)
        no_nul(item)
    if len(value) > 16:
        raise ValueError("at most 16 metadata keys")
    for key, item in value.items():
        if not key or len(key) > 64 or "[" in key or "]" in key:
            raise ValueError(f"metadata key {key[:70]!r} must be 1-64 characters without brackets")
        if len(item) > 512:
            raise ValueError(f"metadata value of {key!r} is longer than 512 characters")
    return value


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    param: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list, description="field, in, pointer, message, code")


class ErrorInfo(BaseModel):
    code: str
    message: str
    param: str | None = None


class ListOf(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    last_id: str | None = Field(None, description="pass as ?after= to get the next page")


class _ValidatedObject(BaseModel):
    """Fields of objects validated asynchronously (``validating -> ready | invalid``)."""

    id: str
    name: str
    status: Literal["validating", "ready", "invalid"]
    format: str | None = None
    error: ErrorInfo | None = None
    metadata: Metadata = Field(default_factory=dict)
    created_at: datetime


class ModelObject(_ValidatedObject):
    object: Literal["model"] = "model"
    filename: str
    sha256: str
    size_bytes: int
    summary: dict[str, Any] | None = Field(None, description="params, input_spec, prunable units per layer")


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(..., min_length=1, max_length=200)
    uri: str = Field(..., min_length=1, max_length=2048,
                     description="file:///path (inside BISE_DATA_ROOTS), s3://bucket/prefix or builtin:NAME?k=v")
    format: Literal["bundle", "manifest"] | None = Field(None, description="auto-detected when unset")
    bias_columns: list[Annotated[Text, Field(min_length=1, max_length=200)]] | None = Field(None, min_length=1, max_length=16,
                                           description="manifest columns holding bias labels")
    metadata: Metadata = Field(default_factory=dict, description=METADATA_DOC)

    _meta = field_validator("metadata")(check_metadata)


class DatasetObject(_ValidatedObject):
    object: Literal["dataset"] = "dataset"
    uri: str
    bias_columns: list[str] | None = None
    summary: dict[str, Any] | None = Field(None, description="classes, bias attributes, per-split group counts")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(..., max_length=64)
    dataset_id: str = Field(..., max_length=64)
    hyperparameters: BiseConfig = Field(default_factory=BiseConfig,
                                        description="BISE hyperparameters; unset fields come from the preset")
    metadata: Metadata = Field(default_factory=dict, description=METADATA_DOC)
    webhook_url: AnyHttpUrl | None = Field(None, description="POSTed a signed event on every terminal state")

    _meta = field_validator("metadata")(check_metadata)


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    model_id: str
    dataset_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(..., ge=0.0, le=1.0)
    metrics: dict[str, Any] | None = Field(None, description="latest training metrics, then the result summary")
    error: ErrorInfo | None = None
    hyperparameters: dict[str, Any]
    metadata: Metadata = Field(default_factory=dict)
    webhook_url: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    checkpoint_epoch: int | None = Field(None, description="last epoch saved for resume (a new worker resumes here)")
    artifacts: dict[str, Any] | None = Field(None, description="downloadable files with size and sha256")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EventObject(BaseModel):
    id: int = Field(..., description="per-job sequence number; SSE id / Last-Event-ID")
    object: Literal["job.event"] = "job.event"
    job_id: str
    created_at: datetime
    level: Literal["debug", "info", "warning", "error"]
    type: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventObject]
    has_more: bool
    last_id: int | None = None


class ProjectObject(BaseModel):
    id: str
    object: Literal["project"] = "project"
    name: str
    webhook_secret: str = Field(..., description="Standard Webhooks signing secret (whsec_...)")
    created_at: datetime
