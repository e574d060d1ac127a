"""``BiseClient``: the v1 API as Python methods (``client.jobs.create(...)``).

Configuration comes from the arguments or the environment (``BISE_API_URL``,
``BISE_API_KEY``). Errors are :class:`BiseError` carrying the server's problem+json
(status, code, the field at fault). Lists are iterated page by page transparently.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx

from bise_client.sse import follow

TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    """Where ``bise login`` keeps the URL and key (``$BISE_CONFIG`` overrides)."""
    default = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bise" / "config.json"
    return Path(os.environ.get("BISE_CONFIG") or default)


def saved_config() -> dict[str, str]:
    import json

    try:
        data = json.loads(config_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_config(api_url: str, api_key: str) -> Path:
    """Write the login file readable by its owner only (it holds a secret)."""
    import json

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"api_url": api_url, "api_key": api_key}, handle)
    os.chmod(path, 0o600)
    return path


class BiseError(Exception):
    """An error answer of the API (or no answer at all: status 0)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "error")
        self.param = problem.get("param")
        super().__init__(problem.get("detail") or problem.get("title") or f"HTTP {status}")

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.status} {self.code}{where}: {self.args[0]}"


class _Resource:
    path = ""

    def __init__(self, client: "BiseClient") -> None:
        self.client = client

    def get(self, object_id: str) -> dict[str, Any]:
        return self.client.request("GET", f"{self.path}/{object_id}")

    def list(self, *, status: str | None = None, metadata: dict[str, str] | None = None, limit: int | None = None,
             page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every object (newest first), following the cursor; ``limit`` caps the total."""
        params: dict[str, Any] = {"limit": min(page_size, limit or page_size), **{k: v for k, v in filters.items() if v}}
        if status:
            params["status"] = status
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        seen = 0
        while True:
            page = self.client.request("GET", self.path, params=params)
            for item in page["data"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page["has_more"]:
                return
            params["after"] = page["last_id"]

    def wait(self, object_id: str, *, until: set[str], timeout: float = 600, poll: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(object_id)
            if obj["status"] in until or time.monotonic() > deadline:
                return obj
            time.sleep(poll)


class Models(_Resource):
    path = "/v1/models"

    def upload(self, path: str | Path, *, name: str | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        import json

        path = Path(path)
        data = {"name": name or path.name}
        if metadata:
            data["metadata"] = json.dumps(metadata)
        with path.open("rb") as handle:  # httpx streams the file, it is not read into memory
            return self.client.request("POST", self.path, files={"file": (path.name, handle)}, data=data,
                                       timeout=None)

    def delete(self, model_id: str) -> dict[str, Any]:
        return self.client.request("DELETE", f"{self.path}/{model_id}")


class Datasets(_Resource):
    path = "/v1/datasets"

    def create(self, name: str, uri: str, *, bias_columns: list[str] | None = None,
               metadata: dict[str, str] | None = None, format: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "uri": uri, "metadata": metadata or {}}
        if bias_columns:
            body["bias_columns"] = bias_columns
        if format:
            body["format"] = format
        return self.client.request("POST", self.path, json=body)


class Jobs(_Resource):
    path = "/v1/jobs"

    def create(self, model_id: str, dataset_id: str, *, hyperparameters: dict[str, Any] | None = None,
               metadata: dict[str, str] | None = None, webhook_url: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a job. An idempotency key is always sent (a fresh one unless given), so a
        retried request after a network error never creates a second job."""
        body: dict[str, Any] = {"model_id": model_id, "dataset_id": dataset_id,
                                "hyperparameters": hyperparameters or {}, "metadata": metadata or {}}
        if webhook_url:
            body["webhook_url"] = webhook_url
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self.client.request("POST", self.path, json=body, headers=headers, retries=3)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.client.request("POST", f"{self.path}/{job_id}/cancel")

    def events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        while True:
            page = self.client.request("GET", f"{self.path}/{job_id}/events", params={"after": after, "limit": 1000})
            yield from page["data"]
            if not page["has_more"]:
                return
            after = page["last_id"]

    def stream(self, job_id: str, last_event_id: int | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Live events until the job ends; reconnects with Last-Event-ID after a drop."""
        def open_stream(last: int | None):  # type: ignore[no-untyped-def]
            headers = self.client.headers({"Last-Event-ID": str(last)} if last is not None else {})
            return self.client.http.stream("GET", f"{self.path}/{job_id}/events/stream", headers=headers,
                                           timeout=httpx.Timeout(30, read=60))
        return follow(open_stream, last_event_id,
                      is_done=lambda e: e.get("type") in {f"job.{s}" for s in TERMINAL}, **kwargs)

    def report(self, job_id: str) -> dict[str, Any]:
        return self.client.request("GET", f"{self.path}/{job_id}/report")

    def report_html(self, job_id: str) -> str:
        return self.client.request("GET", f"{self.path}/{job_id}/report.html", raw=True).text

    def mask(self, job_id: str) -> dict[str, Any]:
        return self.client.request("GET", f"{self.path}/{job_id}/mask")

    def download(self, job_id: str, dest: str | Path, *, variant: str = "masked", retries: int = 5) -> Path:
        """Stream a checkpoint to ``dest``; a dropped transfer resumes with a Range request."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        part.unlink(missing_ok=True)
        etag = None
        for attempt in range(retries + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = self.client.headers({"Range": f"bytes={have}-", "If-Range": etag} if have and etag else {})
            try:
                with self.client.http.stream("GET", f"{self.path}/{job_id}/checkpoint", params={"variant": variant},
                                             headers=headers, timeout=httpx.Timeout(30, read=120)) as res:
                    if res.status_code >= 400:
                        res.read()
                        raise self.client.error(res)
                    etag = res.headers.get("etag")
                    mode = "ab" if res.status_code == 206 else "wb"
                    with part.open(mode) as out:
                        for chunk in res.iter_bytes():
                            out.write(chunk)
                part.replace(dest)
                return dest
            except httpx.TransportError:
                if attempt == retries:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")


class BiseClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        saved = saved_config()  # arguments, then the environment, then `bise login`
        self.base_url = (base_url or os.environ.get("BISE_API_URL") or saved.get("api_url") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("BISE_API_KEY") or saved.get("api_key")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self.models, self.datasets, self.jobs = Models(self), Datasets(self), Jobs(self)

    def __enter__(self) -> "BiseClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        if not self.api_key:
            raise BiseError(0, {"code": "no_api_key", "detail": "no API key: run `bise login`, set BISE_API_KEY "
                                                                "or pass api_key"})
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": "bise-client/1", **(extra or {})}

    @staticmethod
    def error(response: httpx.Response) -> BiseError:
        try:
            problem = response.json()
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            problem = {"code": "http_error", "detail": response.text[:300] or response.reason_phrase}
        return BiseError(response.status_code, problem)

    def request(self, method: str, path: str, *, raw: bool = False, retries: int = 0,
                headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """One API call; retries on 429 (honouring Retry-After) and, when ``retries`` is set,
        on network errors (only for idempotent calls)."""
        for attempt in range(retries + 4):
            try:
                response = self.http.request(method, path, headers=self.headers(headers), **kwargs)
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise BiseError(0, {"code": "unreachable", "detail": f"{self.base_url}: {exc}"}) from None
                time.sleep(0.5 * 2 ** attempt)
                continue
            if response.status_code == 429 and attempt < 3:
                time.sleep(min(float(response.headers.get("retry-after", "1")), 60.0))
                continue
            if response.status_code >= 400:
                raise self.error(response)
            return response if raw else response.json()
        raise self.error(response)
