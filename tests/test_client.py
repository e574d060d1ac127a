"""The ``bise`` client and SDK against a live API and worker (real PostgreSQL and Redis):
uploads, datasets, jobs with --wait through a connection that drops mid-stream, the CI
gate's exit codes and table, downloads, and --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from bise_client import BiseClient, BiseError, gate
from tests.conftest import TINY_URI
from tests.test_service_e2e import HYPER

pytestmark = pytest.mark.slow


def bise(url: str, auth: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"BISE_API_URL": url, "BISE_API_KEY": auth["Authorization"].split()[1], "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bise_client", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ready(live_api, auth, archive_factory):
    """A validated model and dataset, uploaded and registered with the CLI."""
    up = bise(live_api, auth, "models", "upload", str(archive_factory("cnn")), "--wait", "--json")
    assert up.returncode == 0, up.stderr
    ds = bise(live_api, auth, "datasets", "create", "--name", "tiny", "--uri", TINY_URI, "--wait", "--json")
    assert ds.returncode == 0, ds.stderr
    model, dataset = json.loads(up.stdout), json.loads(ds.stdout)
    assert model["status"] == "ready" and dataset["status"] == "ready"
    return model["id"], dataset["id"]


def hyper_flags() -> list[str]:
    return ["--hyperparameters", json.dumps(HYPER)]


def test_wait_survives_a_dropped_stream_and_the_gate_passes(live_api, auth, ready, tmp_path):
    from tests.flaky_proxy import FlakyProxy

    proxy = FlakyProxy(urlparse(live_api).port, cut_after_bytes=800)
    try:
        run = bise(proxy.url, auth, "jobs", "create", "--model", ready[0], "--dataset", ready[1], *hyper_flags(),
                   "--wait", "--require", "sparsity.fraction_kept<=1.0", "--require", "unbiased_accuracy>=0")
    finally:
        proxy.close()
    assert proxy.cuts_done == 1
    assert run.returncode == 0, run.stdout + run.stderr
    assert "connection lost" in run.stderr
    assert "unbiased_accuracy" in run.stdout and "pass" in run.stdout and "FAIL" not in run.stdout
    assert "/report.html" in run.stdout


def test_gate_failure_exits_1_with_a_table_and_json(live_api, auth, ready):
    run = bise(live_api, auth, "jobs", "create", "--model", ready[0], "--dataset", ready[1], *hyper_flags(),
               "--wait", "--require", "pruned.test.unbiased_accuracy>=1.01", "--json")
    assert run.returncode == 1, run.stderr
    body = json.loads(run.stdout)
    assert body["passed"] is False and body["requirements"][0]["passed"] is False
    assert body["requirements"][0]["value"] == body["report"]["pruned"]["test"]["unbiased_accuracy"]
    job_id = body["job"]["id"]

    table = bise(live_api, auth, "jobs", "create", "--model", ready[0], "--dataset", ready[1], *hyper_flags(),
                 "--wait", "--require", "sparsity.fraction_kept<=0")
    assert table.returncode == 1 and "FAIL" in table.stdout and "sparsity.fraction_kept <= 0" in table.stdout

    # the other job commands, human and --json
    listed = json.loads(bise(live_api, auth, "jobs", "list", "--json").stdout)
    assert job_id in [j["id"] for j in listed]
    events = json.loads(bise(live_api, auth, "jobs", "events", job_id, "--json").stdout)
    assert events[-1]["type"] == "job.succeeded"
    report = bise(live_api, auth, "jobs", "report", job_id)
    assert "vanilla" in report.stdout and "verdict" in report.stdout
    assert bise(live_api, auth, "jobs", "cancel", job_id).returncode == 2  # finished: 409


def test_download_and_sdk(live_api, auth, ready, tmp_path, tiny_data):
    with BiseClient(live_api, auth["Authorization"].split()[1]) as client:
        job = client.jobs.create(ready[0], ready[1], hyperparameters=HYPER, metadata={"via": "sdk"})
        events = list(client.jobs.stream(job["id"]))
        assert events[-1]["type"] == "job.succeeded"
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        run = bise(live_api, auth, "jobs", "download", job["id"], "--out", str(tmp_path / "p.pt"), "--json")
        assert run.returncode == 0, run.stderr
        path = tmp_path / "p.pt"
        from tests.test_cli import accuracy_of_checkpoint

        test = tiny_data.splits["test"]
        accuracy, _, _ = accuracy_of_checkpoint(path, test.x, test.y, "torchscript")
        assert accuracy == client.jobs.report(job["id"])["pruned"]["test"]["accuracy"]
        assert [j["id"] for j in client.jobs.list(metadata={"via": "sdk"})] == [job["id"]]
        with pytest.raises(BiseError) as err:
            client.jobs.create(ready[0], ready[1], hyperparameters={"gamma": -1})
        assert err.value.status == 422 and err.value.param == "hyperparameters.gamma"


def test_cli_errors_are_one_line_and_exit_2(live_api, auth):
    run = bise(live_api, {"Authorization": "Bearer bise_sk_wrong"}, "models", "list")
    assert run.returncode == 2 and "invalid_api_key" in run.stderr and "Traceback" not in run.stderr
    bad = bise(live_api, auth, "jobs", "create", "--model", "mdl_x", "--dataset", "dst_y", "--wait",
               "--require", "accuracy>>1")
    assert bad.returncode == 2 and "bad requirement" in bad.stderr
    gone = bise("http://127.0.0.1:9", auth, "models", "list")
    assert gone.returncode == 2 and "unreachable" in gone.stderr


def test_gate_expressions():
    report = {"pruned": {"val": {"unbiased_accuracy": 0.8}}, "sparsity": {"fraction_kept": 0.5}}
    outcomes = gate.evaluate(report, [gate.parse("unbiased_accuracy>=0.8"), gate.parse("sparsity.fraction_kept<0.5"),
                                      gate.parse("pruned.test.accuracy>0")])
    assert [o.passed for o in outcomes] == [True, False, False]
    assert outcomes[0].requirement.path == "pruned.val.unbiased_accuracy" and outcomes[2].value is None
    with pytest.raises(ValueError):
        gate.parse("accuracy >= high")


def test_login_checks_the_key_and_saves_it_privately(live_api, auth, tmp_path):
    key = auth["Authorization"].split()[1]
    env = {"BISE_CONFIG": str(tmp_path / "cfg.json"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "bise_client", "--api-url", live_api, "--api-key", key, "login",
                          "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["project"] == "alpha"
    assert (tmp_path / "cfg.json").stat().st_mode & 0o077 == 0
    listed = subprocess.run([sys.executable, "-m", "bise_client", "models", "list", "--json"], capture_output=True,
                            text=True, timeout=60, env=env)  # no URL, no key: both from the login file
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list)
    wrong = subprocess.run([sys.executable, "-m", "bise_client", "--api-url", live_api, "--api-key", "bise_sk_no",
                            "login"], capture_output=True, text=True, timeout=60,
                           env={**env, "BISE_CONFIG": str(tmp_path / "other.json")})
    assert wrong.returncode == 2 and not (tmp_path / "other.json").exists()
