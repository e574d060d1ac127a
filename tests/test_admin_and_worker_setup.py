"""The operator's side: admin CLI, migrations from an empty database, worker settings and
the sandbox that opens untrusted uploads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.service_env import child_env, scratch_database


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.admin", *args], env=child_env(env), capture_output=True,
                          text=True, timeout=120)


def test_migrate_an_empty_database_then_create_and_revoke_keys(service_env):
    import psycopg

    with scratch_database() as url:
        env = {**service_env, "BISE_DATABASE_URL": url}
        assert admin(env, "migrate").returncode == 0
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            tables = {r[0] for r in conn.execute("select tablename from pg_tables where schemaname='public'")}
        assert {"projects", "api_keys", "models", "datasets", "jobs", "job_events", "webhook_deliveries",
                "alembic_version"} <= tables
        assert admin(env, "migrate").returncode == 0  # idempotent

        made = admin(env, "create-key", "--project", "vision")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("bise_sk_") and len(key.splitlines()) == 1 and key not in made.stderr
        as_json = json.loads(admin(env, "create-key", "--project", "vision", "--json").stdout)
        assert as_json["project"] == "vision" and as_json["key_id"].startswith("key_")
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            stored = [r[0] for r in conn.execute("select key_hash from api_keys")]
        assert key not in stored and len(stored) == 2

        assert admin(env, "revoke-key", key).returncode == 0
        assert admin(env, "revoke-key", as_json["key_id"]).returncode == 0
        assert admin(env, "revoke-key", "bise_sk_unknown").returncode == 1
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert conn.execute("select count(*) from api_keys where revoked_at is null").fetchone()[0] == 0


def test_sqlite_database_migrates_too(tmp_path):
    env = {"BISE_DATABASE_URL": f"sqlite:///{tmp_path}/bise.db"}
    assert admin(env, "migrate").returncode == 0
    assert admin(env, "create-key", "--project", "p").stdout.startswith("bise_sk_")


def test_celery_settings_follow_the_spec(service_env):
    from service.queue import RUN_JOB, make_celery
    from service.settings import get_settings
    from worker.__main__ import celery_command

    settings = get_settings()
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 24 * 3600
    assert conf.task_routes[RUN_JOB]["queue"] == settings.queue_gpu
    gpu = celery_command("gpu")
    assert gpu[gpu.index("--pool") + 1] == "solo" and gpu[gpu.index("--queues") + 1] == settings.queue_gpu
    cpu = celery_command("cpu")
    assert cpu[cpu.index("--pool") + 1] == "threads"


def test_importing_the_worker_does_not_initialise_cuda():
    code = ("import torch, worker.app, worker.tasks, worker.runner; "
            "assert not torch.cuda.is_initialized(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("niceness", ["0", "7"])
def test_workers_lower_their_own_priority(niceness):
    """Celery's worker_init signal renices the worker by BISE_WORKER_NICE (0: left alone)."""
    code = ("import os; from celery.signals import worker_init; import worker.app; "
            "before = os.nice(0); worker_init.send(sender=None); print(os.nice(0) - before)")
    env = {**os.environ, "BISE_WORKER_NICE": niceness}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.stdout.strip() == niceness, proc.stderr


def _sandboxed(*args: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.sandbox_exec", *args, "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)


def test_sandbox_caps_memory():
    proc = _sandboxed("--memory", str(512 * 1024**2), "--cpu", "30",
                      code="b = bytearray(2 * 1024**3); print('allocated')")
    assert proc.returncode != 0 and "allocated" not in proc.stdout and "MemoryError" in proc.stderr


def test_sandbox_caps_cpu_time():
    proc = _sandboxed("--memory", str(1024**3), "--cpu", "1", code="while True: pass")
    assert proc.returncode != 0


def test_sandbox_has_no_network_when_the_kernel_allows_it():
    code = ("import socket; s = socket.socket(); s.settimeout(2)\n"
            "try:\n    s.connect(('127.0.0.1', 6379)); print('connected')\n"
            "except OSError as e:\n    print('refused', e)")
    proc = _sandboxed("--memory", str(1024**3), "--cpu", "10", "--no-network", code=code)
    if "no network namespace available" in proc.stderr:
        pytest.skip("this kernel does not let the test user create a network namespace")
    assert proc.stdout.startswith("refused"), proc.stdout + proc.stderr


def test_validation_process_gets_no_secrets(service_env, monkeypatch, tmp_path):
    """The sandbox environment is built from scratch: nothing of the worker's leaks in."""
    from service.settings import get_settings
    from worker import sandbox

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret")
    seen = {}
    real_popen = subprocess.Popen

    def spy(cmd, **kwargs):  # record what the child would get, then run it for real
        seen.update(kwargs["env"])
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "Popen", spy)
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    result = sandbox.inspect_model(bad, get_settings())
    assert not result.ok and result.data["error"]["code"]
    assert not any(k.startswith(("BISE_", "AWS_")) for k in seen) and "super-secret" not in json.dumps(seen)
    assert os.environ["BISE_DATABASE_URL"] not in json.dumps(seen)


def test_models_and_migrations_agree(service_env):
    """Alembic's autogenerate finds nothing to add: the migrations create exactly service.models."""
    from alembic import command

    from service.migrate import alembic_config

    command.check(alembic_config())
