"""The embedded default (SPEC §6): API and worker on SQLite and a local folder, no Redis.

The demo behind README's first command runs here on a tiny dataset through real processes;
the settings test pins what "no configuration" means.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.embedded import EmbeddedService, embedded_environment
from service.settings import Settings
from tests.conftest import TINY_URI
from tests.test_service_e2e import HYPER

ROOT = Path(__file__).resolve().parents[1]


def test_no_redis_configured_means_the_embedded_broker(monkeypatch):
    for name in [k for k in os.environ if k.startswith("BISE_")]:
        monkeypatch.delenv(name)
    default = Settings()
    assert default.redis_url is None and default.database_url.startswith("sqlite:///")
    assert default.broker_url.startswith("sqla+sqlite:///")
    monkeypatch.setenv("BISE_REDIS_URL", "  ")
    assert Settings().redis_url is None
    monkeypatch.setenv("BISE_REDIS_URL", "redis://cache:6379/1")
    assert Settings().broker_url == "redis://cache:6379/1"


def test_embedded_environment_ignores_the_callers_deployment(monkeypatch, tmp_path):
    """A shell that exports production settings must not make the demo write there."""
    monkeypatch.setenv("BISE_DATABASE_URL", "postgresql+psycopg://prod/db")
    monkeypatch.setenv("BISE_REDIS_URL", "redis://prod:6379/0")
    env = embedded_environment(tmp_path, 1234)
    assert "BISE_REDIS_URL" not in env
    assert env["BISE_DATABASE_URL"] == f"sqlite:///{tmp_path.resolve()}/bise.db"
    assert env["BISE_STORAGE_URL"].startswith(f"file://{tmp_path.resolve()}")


@pytest.mark.slow
def test_demo_prunes_over_http_on_sqlite_and_stops_everything(tmp_path, archive_factory):
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    # a ready vanilla model: the demo trains one only when out/vanilla.pt is missing
    (out / "vanilla.pt").write_bytes(archive_factory("cnn").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BISE_")}
    done = subprocess.run(
        [sys.executable, "-m", "service.demo", "--data", TINY_URI, "--hyperparameters", json.dumps(HYPER),
         "--out", str(out), "--home", str(home)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unbiased_accuracy" in done.stdout and "verdict:" in done.stdout
    printed = {line.split("  ")[0].strip(): line.split()[-1] for line in done.stdout.splitlines() if "/" in line}
    for label in ("masked checkpoint", "report page", "mask"):
        assert Path(printed[label]).is_file(), printed
    assert "<svg" in (out / "report.html").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["sparsity"]["units_total"] > 0
    # the job went through the SQLite broker and the events table, not Redis
    with sqlite3.connect(home / "broker.db") as broker:
        tables = {row[0] for row in broker.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"kombu_queue", "kombu_message"} <= tables
    with sqlite3.connect(home / "bise.db") as db:
        (status,) = db.execute("SELECT status FROM jobs").fetchone()
        types = {row[0] for row in db.execute("SELECT type FROM job_events")}
    assert status == "succeeded" and {"progress", "job.succeeded"} <= types
    assert "[demo] service stopped" in done.stderr


@pytest.mark.slow
def test_embedded_service_reports_ready_without_redis_and_stops_its_children(tmp_path):
    service = EmbeddedService(tmp_path / "home")
    with service:
        ready = httpx.get(f"{service.url}/readyz").json()
        assert ready["status"] == "ok" and ready["checks"]["redis"].startswith("not configured")
        project = httpx.get(f"{service.url}/v1/project", headers={"Authorization": f"Bearer {service.api_key}"})
        assert project.status_code == 200 and project.json()["name"] == "embedded"
        children = list(service._children)
        assert all(child.poll() is None for child in children)
    assert all(child.poll() is not None for child in children)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{service.url}/healthz")
