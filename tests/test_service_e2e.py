"""End to end through real processes: ``python -m api`` and ``python -m worker`` against the
machine's PostgreSQL and Redis. A user's path: upload a TorchScript model, register a
builtin dataset, create a job with a webhook, follow the SSE stream to the end, download the
checkpoint and check that it reproduces the report's pruned accuracy."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import TINY_URI
from tests.test_cli import QUICK, accuracy_of_checkpoint

pytestmark = pytest.mark.slow
# the CLI's quick schedule, as API hyperparameters
HYPER = {QUICK[i].lstrip("-").replace("-", "_"): float(QUICK[i + 1]) for i in range(0, len(QUICK), 2)}
HYPER.update(aux_epochs=2, aux_pretrain_epochs=2)


@pytest.fixture(scope="module")
def api(live_api, auth):
    with httpx.Client(base_url=live_api, headers=auth, timeout=30) as http:
        yield http


class _Hooks(BaseHTTPRequestHandler):
    """Answers 503 to the first delivery of each message, 200 to the retry."""

    received: list[tuple[dict[str, str], bytes]] = []
    refused: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if headers["webhook-id"] not in self.refused:
            self.refused.add(headers["webhook-id"])
            self.send_response(503)
        else:
            self.received.append((headers, body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook_sink():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hooks.received
    server.shutdown()


def wait_status(http: httpx.Client, path: str, wanted: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(path).json()
        if body["status"] in wanted:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{path} stuck in {body['status']}")


def upload_model(http: httpx.Client, path, name="m") -> dict:
    with open(path, "rb") as handle:
        res = http.post("/v1/models", files={"file": (path.name, handle)}, data={"name": name})
    assert res.status_code == 201, res.text
    return res.json()


def read_sse(http: httpx.Client, job_id: str, last_event_id: int | None = None, stop_after: int | None = None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers, timeout=300) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


def test_upload_dataset_job_stream_download(api, archive_factory, tiny_data, tmp_path, webhook_sink):
    hook_url, received = webhook_sink
    model = upload_model(api, archive_factory("cnn"))
    dataset = api.post("/v1/datasets", json={"name": "tiny digits", "uri": TINY_URI}).json()
    model = wait_status(api, f"/v1/models/{model['id']}", {"ready", "invalid"})
    assert model["status"] == "ready", model
    assert model["format"] == "torchscript" and model["summary"]["params"] > 0 and model["summary"]["units_total"] > 0
    dataset = wait_status(api, f"/v1/datasets/{dataset['id']}", {"ready", "invalid"})
    assert dataset["status"] == "ready", dataset
    train_groups = dataset["summary"]["splits"]["train"]["groups"]
    assert sum(g["count"] for g in train_groups) == len(tiny_data.splits["train"])

    res = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"], "hyperparameters": HYPER,
                                     "webhook_url": hook_url, "metadata": {"suite": "e2e"}})
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]

    # a reader that drops the connection after a few events and resumes with Last-Event-ID
    first = read_sse(api, job_id, stop_after=3)
    rest = read_sse(api, job_id, last_event_id=first[-1]["id"])
    events = first + rest
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # lossless, in order, no repeats
    types = [e["type"] for e in events]
    assert types[0] == "job.created" and "job.started" in types and "phase" in types and types[-1] == "job.succeeded"
    history = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [e["id"] for e in history] == [e["id"] for e in events]

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["metrics"]["verdict"]
    report = api.get(f"/v1/jobs/{job_id}/report").json()
    assert {"vanilla", "pruned", "sparsity", "params", "flops", "verdict"} <= set(report)

    res = api.get(f"/v1/jobs/{job_id}/checkpoint")
    assert res.status_code == 200 and res.headers["etag"] and res.headers["accept-ranges"] == "bytes"
    path = tmp_path / "pruned.pt"
    path.write_bytes(res.content)
    test = tiny_data.splits["test"]
    accuracy, _, _ = accuracy_of_checkpoint(path, test.x, test.y, "torchscript")
    assert accuracy == report["pruned"]["test"]["accuracy"]

    part = api.get(f"/v1/jobs/{job_id}/checkpoint", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == res.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(res.content)}"
    assert api.get(f"/v1/jobs/{job_id}/checkpoint", headers={"If-None-Match": res.headers["etag"]}).status_code == 304
    assert api.get(f"/v1/jobs/{job_id}/checkpoint", headers={"Range": "bytes=999999999-"}).status_code == 416

    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # finished jobs cannot be cancelled
    mask = api.get(f"/v1/jobs/{job_id}/mask").json()
    assert mask["units_kept"] == report["sparsity"]["units_kept"]
    html = api.get(f"/v1/jobs/{job_id}/report", headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html") and "Verdict" in html.text
    assert job_id in api.get(f"/v1/jobs/{job_id}/report.html").text

    # the signed webhook of the terminal state, delivered on the retry after a 503
    from service.webhooks import verify

    secret = api.get("/v1/project").json()["webhook_secret"]
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.2)
    headers, body = received[-1]
    verify(secret, headers, body)
    payload = json.loads(body)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id
    assert headers["webhook-id"] in _Hooks.refused


def test_corrupt_model_and_missing_dataset_become_invalid_and_jobs_fail_fast(api, service_env, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    model = wait_status(api, f"/v1/models/{upload_model(api, bad)['id']}", {"ready", "invalid"})
    assert model["status"] == "invalid" and model["error"]["code"] and model["error"]["message"]
    root = service_env["BISE_DATA_ROOTS"]
    dataset = api.post("/v1/datasets", json={"name": "gone", "uri": f"file://{root}/nope.pt"}).json()
    dataset = wait_status(api, f"/v1/datasets/{dataset['id']}", {"ready", "invalid"})
    assert dataset["status"] == "invalid" and dataset["error"]["param"] == "uri"
    job = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"]}).json()
    assert job["status"] == "failed" and job["error"]["code"] == "model_invalid"


def test_cancel_a_running_job_frees_the_worker(api, archive_factory):
    model = upload_model(api, archive_factory("cnn"))
    dataset = api.post("/v1/datasets", json={"name": "tiny", "uri": TINY_URI}).json()
    long = {"tau_decay": 0.999, "tau_min": 0.001, "max_epochs": 5000, "early_stop_periods": 0}
    job = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"], "hyperparameters": long}).json()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        if any(e["type"] == "progress" for e in events):
            break
        time.sleep(0.5)
    running = api.get(f"/v1/jobs/{job['id']}").json()
    assert running["status"] == "running", running
    res = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert res.status_code == 200 and res.json()["cancel_requested"], res.text
    done = wait_status(api, f"/v1/jobs/{job['id']}", {"cancelled", "failed", "succeeded"}, timeout=60)
    assert done["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_a_killed_worker_is_replaced_and_the_job_resumes_from_its_checkpoint(service_env, auth, archive_factory,
                                                                              tmp_path_factory):
    """kill -9 of the worker process running a job: its lease expires, a reaper hands the
    job to another worker, which resumes from the last per-epoch checkpoint. A private API
    and two private gpu workers (own queues) keep the session's worker out of harm's way."""
    import os
    import signal
    import uuid

    from tests.service_env import start_api, start_worker

    tag = uuid.uuid4().hex[:6]
    env = {**service_env, "BISE_QUEUE_GPU": f"gpu-{tag}", "BISE_QUEUE_CPU": f"cpu-{tag}"}
    logs = tmp_path_factory.mktemp("logs")
    workers = [start_worker(env, logs / "first.log"), start_worker(env, logs / "second.log", queues="gpu")]
    api_proc, url = start_api(env, logs / "api.log")
    api = httpx.Client(base_url=url, headers=auth, timeout=30)
    try:
        model = upload_model(api, archive_factory("cnn"))
        dataset = api.post("/v1/datasets", json={"name": "tiny", "uri": TINY_URI}).json()
        slow = {**HYPER, "tau_decay": 0.97, "early_stop_periods": 0, "selection": "last"}
        job = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                         "hyperparameters": slow}).json()
        deadline = time.monotonic() + 240
        while (api.get(f"/v1/jobs/{job['id']}").json()["checkpoint_epoch"] or 0) < 2:
            assert time.monotonic() < deadline, json.dumps([api.get(f"/v1/jobs/{job['id']}").json(), api.get(
                f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"][-3:]])
            time.sleep(0.2)
        started = [e for e in api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
                   if e["type"] == "job.started"]
        pid = int(started[0]["data"]["worker"].split(":")[1])
        os.kill(pid, signal.SIGKILL)

        done = wait_status(api, f"/v1/jobs/{job['id']}", {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        types = [e["type"] for e in events]
        assert "job.requeued" in types and types.count("job.started") == 2 and types[-1] == "job.succeeded"
        resumed = [e for e in events if e["type"] == "resumed"]
        assert resumed and resumed[0]["data"]["epoch"] >= 2
        second = [e for e in events if e["type"] == "job.started"][1]
        assert second["data"]["worker"] != started[0]["data"]["worker"]
        assert api.get(f"/v1/jobs/{job['id']}/report").json()["verdict"] in {"improved", "no_improvement"}
    finally:
        api.close()
        api_proc.stop()
        for worker in workers:
            worker.stop()
