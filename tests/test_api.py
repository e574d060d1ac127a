"""The HTTP API in-process (TestClient) against the real PostgreSQL and Redis: auth,
isolation, errors, pagination, idempotency, cancel, uploads. No worker runs here, so jobs
stay queued and uploads stay 'validating'; the end-to-end test covers the rest."""

from __future__ import annotations

import io
import uuid

import pytest

from tests.conftest import TINY_URI

PROBLEM = "application/problem+json"


def upload(client, auth, content: bytes = b"PK\x03\x04 not really a model", name: str = "m.pt", **fields):
    return client.post("/v1/models", headers=auth, files={"file": (name, io.BytesIO(content), "application/octet-stream")},
                       data=fields)


@pytest.fixture(scope="module")
def model_id(client, auth) -> str:
    res = upload(client, auth, metadata='{"team": "vision"}')
    assert res.status_code == 201, res.text
    return res.json()["id"]


@pytest.fixture(scope="module")
def dataset_id(client, auth) -> str:
    res = client.post("/v1/datasets", headers=auth, json={"name": "tiny", "uri": TINY_URI})
    assert res.status_code == 201, res.text
    return res.json()["id"]


def new_job(client, auth, model_id, dataset_id, **extra):
    return client.post("/v1/jobs", headers=auth, json={"model_id": model_id, "dataset_id": dataset_id, **extra})


def assert_problem(res, status: int, field: str | None = None) -> dict:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith(PROBLEM)
    body = res.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("urn:bise:")
    assert body["instance"].startswith("/")
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# -- auth and isolation ---------------------------------------------------------------
def test_missing_and_wrong_keys_are_401(client):
    assert_problem(client.get("/v1/jobs"), 401, "Authorization")
    res = client.get("/v1/jobs", headers={"Authorization": "Bearer bise_sk_wrong"})
    assert_problem(res, 401, "Authorization")
    assert res.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_fails(client, service_env):
    from service.db import session_scope
    from service.keys import create_key, revoke_key

    with session_scope() as session:
        _, raw = create_key(session, "alpha")
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    with session_scope() as session:
        assert revoke_key(session, raw) is not None
    assert_problem(client.get("/v1/models", headers=headers), 401)


def test_keys_are_stored_hashed(service_env, auth):
    from sqlalchemy import select

    from service.db import session_scope
    from service.models import ApiKey

    raw = auth["Authorization"].split()[1]
    with session_scope() as session:
        hashes = session.scalars(select(ApiKey.key_hash)).all()
    assert raw not in hashes and all(len(h) == 64 for h in hashes)


def test_other_project_sees_404_everywhere(client, auth, other_auth, model_id, dataset_id):
    job = new_job(client, auth, model_id, dataset_id).json()["id"]
    for method, path in [("get", f"/v1/models/{model_id}"), ("delete", f"/v1/models/{model_id}"),
                         ("get", f"/v1/datasets/{dataset_id}"), ("delete", f"/v1/datasets/{dataset_id}"),
                         ("get", f"/v1/jobs/{job}"), ("post", f"/v1/jobs/{job}/cancel"),
                         ("get", f"/v1/jobs/{job}/events"), ("get", f"/v1/jobs/{job}/events/stream"),
                         ("get", f"/v1/jobs/{job}/report"), ("get", f"/v1/jobs/{job}/report.html"),
                         ("get", f"/v1/jobs/{job}/mask"), ("get", f"/v1/jobs/{job}/checkpoint")]:
        assert_problem(getattr(client, method)(path, headers=other_auth), 404)
    # and they do not show up in the other project's lists
    for path in ("/v1/models", "/v1/datasets", "/v1/jobs"):
        ids = [o["id"] for o in client.get(path, headers=other_auth).json()["data"]]
        assert model_id not in ids and dataset_id not in ids and job not in ids
    # nor can the other project start a job on them
    assert_problem(new_job(client, other_auth, model_id, dataset_id), 404, "model_id")


# -- models -----------------------------------------------------------------------------
def test_upload_records_sha256_size_and_validating_status(client, auth):
    import hashlib

    content = bytes(range(256)) * 1000
    res = upload(client, auth, content, name="../../etc/evil name.pt", name_field="x")
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["size_bytes"] == len(content)
    assert body["status"] == "validating" and body["id"].startswith("mdl_")
    assert "/" not in body["filename"] and ".." not in body["filename"]
    assert client.get(f"/v1/models/{body['id']}", headers=auth).json()["sha256"] == body["sha256"]


def test_oversized_upload_is_413_and_stores_nothing(client, auth, service_env, monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("BISE_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    try:
        before = client.get("/v1/models?limit=100", headers=auth).json()["data"]
        body = assert_problem(upload(client, auth, b"x" * 5000), 413, "file")
        assert body["code"] == "file_too_large"
        after = client.get("/v1/models?limit=100", headers=auth).json()["data"]
        assert len(after) == len(before)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    spool = get_settings().work_dir / "uploads"
    assert not spool.exists() or not any(spool.iterdir())


def test_upload_needs_multipart_with_a_file(client, auth):
    assert_problem(client.post("/v1/models", headers=auth, json={"file": "x"}), 415, "Content-Type")
    assert_problem(client.post("/v1/models", headers=auth, files={"other": ("a", b"x")}), 422, "file")
    assert_problem(upload(client, auth, metadata="[1, 2]"), 422, "metadata")


def test_delete_model(client, auth):
    mid = upload(client, auth).json()["id"]
    assert client.delete(f"/v1/models/{mid}", headers=auth).json() == {"id": mid, "object": "model", "deleted": True}
    assert_problem(client.get(f"/v1/models/{mid}", headers=auth), 404)


# -- datasets ---------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/etc", "http://example.com/x", "ftp://x", "builtin:",
                                 "s3://", "file://otherhost/data/x"])
def test_dataset_uris_outside_the_roots_are_refused(client, auth, uri):
    body = assert_problem(client.post("/v1/datasets", headers=auth, json={"name": "d", "uri": uri}), 422, "uri")
    assert body["code"] == "invalid_uri"


def test_dataset_path_traversal_is_refused(client, auth, service_env):
    root = service_env["BISE_DATA_ROOTS"]
    res = client.post("/v1/datasets", headers=auth, json={"name": "d", "uri": f"file://{root}/../../etc/passwd"})
    assert_problem(res, 422, "uri")
    ok = client.post("/v1/datasets", headers=auth, json={"name": "d", "uri": f"file://{root}/missing.pt"})
    assert ok.status_code == 201 and ok.json()["status"] == "validating"


def test_dataset_body_is_validated(client, auth):
    assert_problem(client.post("/v1/datasets", headers=auth, json={"uri": TINY_URI}), 422, "name")
    assert_problem(client.post("/v1/datasets", headers=auth, json={"name": "d", "uri": TINY_URI, "colour": 1}),
                   422, "colour")


# -- jobs -------------------------------------------------------------------------------
def test_job_lifecycle_fields_and_created_event(client, auth, model_id, dataset_id):
    res = new_job(client, auth, model_id, dataset_id, metadata={"run": "a"}, hyperparameters={"gamma": 0.2})
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["id"].startswith("job_")
    assert job["hyperparameters"]["gamma"] == 0.2 and job["hyperparameters"]["tau_0"] is not None
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [e["type"] for e in events["data"]] == ["job.created"] and events["data"][0]["id"] == 1


@pytest.mark.parametrize("hyper,field", [({"gamma": -1}, "hyperparameters.gamma"),
                                         ({"batch_size": 10**9}, "hyperparameters.batch_size"),
                                         ({"colour": "red"}, "hyperparameters.colour"),
                                         ({"preset": "slow"}, "hyperparameters.preset")])
def test_invalid_hyperparameters_are_422_naming_the_field(client, auth, model_id, dataset_id, hyper, field):
    body = assert_problem(new_job(client, auth, model_id, dataset_id, hyperparameters=hyper), 422, field)
    assert body["errors"][0]["pointer"] == "#/" + field.replace(".", "/")


def test_unknown_model_or_dataset_is_404_naming_the_field(client, auth, model_id, dataset_id):
    assert_problem(new_job(client, auth, "mdl_nope", dataset_id), 404, "model_id")
    assert_problem(new_job(client, auth, model_id, "dst_nope"), 404, "dataset_id")


def test_idempotency_key(client, auth, model_id, dataset_id):
    key = {"Idempotency-Key": uuid.uuid4().hex, **auth}
    body = {"model_id": model_id, "dataset_id": dataset_id, "metadata": {"k": "1"}}
    first = client.post("/v1/jobs", headers=key, json=body)
    again = client.post("/v1/jobs", headers=key, json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/jobs", headers=key, json={**body, "metadata": {"k": "2"}})
    assert_problem(other, 422, "Idempotency-Key")


def test_cancel_queued_then_cancel_again_is_409(client, auth, model_id, dataset_id):
    job = new_job(client, auth, model_id, dataset_id).json()["id"]
    res = client.post(f"/v1/jobs/{job}/cancel", headers=auth)
    assert res.status_code == 200 and res.json()["status"] == "cancelled" and res.json()["finished_at"]
    body = assert_problem(client.post(f"/v1/jobs/{job}/cancel", headers=auth), 409)
    assert body["code"] == "job_not_cancellable"
    types = [e["type"] for e in client.get(f"/v1/jobs/{job}/events", headers=auth).json()["data"]]
    assert types == ["job.created", "job.cancelled"]
    assert_problem(client.get(f"/v1/jobs/{job}/report", headers=auth), 409)


def test_job_on_invalid_model_fails_fast(client, auth, dataset_id, service_env):
    from service.db import session_scope
    from service.models import Model

    mid = upload(client, auth).json()["id"]
    with session_scope() as session:
        row = session.get(Model, mid)
        row.status, row.error = "invalid", {"code": "invalid_model", "message": "not a zip", "param": "file"}
    job = new_job(client, auth, mid, dataset_id).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_invalid" and job["error"]["param"] == "model_id"


def test_pagination_and_filters(client, auth, model_id, dataset_id):
    tag = uuid.uuid4().hex
    made = [new_job(client, auth, model_id, dataset_id, metadata={"batch": tag}).json()["id"] for _ in range(5)]
    seen, after = [], None
    while True:
        params = {"limit": 2, f"metadata[batch]": tag, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", headers=auth, params=params).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(made))  # newest first, no gaps, no repeats
    queued = client.get("/v1/jobs", headers=auth, params={"status": "cancelled", "metadata[batch]": tag}).json()
    assert queued["data"] == []
    assert_problem(client.get("/v1/jobs", headers=auth, params={"status": "exploded"}), 422, "status")
    assert_problem(client.get("/v1/jobs", headers=auth, params={"limit": 0}), 422, "limit")


def test_sse_of_a_finished_job_replays_history_and_ends(client, auth, model_id, dataset_id):
    job = new_job(client, auth, model_id, dataset_id).json()["id"]
    client.post(f"/v1/jobs/{job}/cancel", headers=auth)
    with client.stream("GET", f"/v1/jobs/{job}/events/stream", headers=auth) as res:
        text = "".join(res.iter_text())
    assert "id: 1\n" in text and "id: 2\n" in text and "job.cancelled" in text
    with client.stream("GET", f"/v1/jobs/{job}/events/stream", headers={**auth, "Last-Event-ID": "1"}) as res:
        text = "".join(res.iter_text())
    assert "id: 1\n" not in text and "id: 2\n" in text


# -- service endpoints ------------------------------------------------------------------
def test_health_ready_metrics_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    metrics = client.get("/metrics").text
    for name in ("bise_jobs{", "bise_queue_depth{", "bise_job_duration_seconds_bucket", "bise_http_request_duration"):
        assert name in metrics
    spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/datasets", "/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events/stream",
                 "/v1/jobs/{job_id}/checkpoint", "/v1/jobs/{job_id}/report", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert "Problem" in spec["components"]["schemas"]


def test_rate_limit_answers_429_with_retry_after(client, service_env, monkeypatch):
    from service.settings import get_settings

    from tests.conftest import _new_key

    headers = {"Authorization": f"Bearer {_new_key('ratelimited')}"}
    monkeypatch.setenv("BISE_RATE_LIMIT_PER_MINUTE", "3")
    get_settings.cache_clear()
    try:
        codes = [client.get("/v1/models", headers=headers).status_code for _ in range(5)]
        res = client.get("/v1/models", headers=headers)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert codes[:3] == [200, 200, 200] and 429 in codes
    assert_problem(res, 429)
    assert 1 <= int(res.headers["retry-after"]) <= 61


def test_hostile_strings_are_4xx_not_5xx(client, auth, model_id, dataset_id):
    assert_problem(client.post("/v1/datasets", headers=auth, json={"name": "a\x00b", "uri": TINY_URI}), 422, "name")
    assert_problem(new_job(client, auth, model_id, dataset_id, metadata={"k": "v\x00"}), 422, "metadata")
    assert_problem(new_job(client, auth, model_id, dataset_id, hyperparameters={"include_layers": "(["}),
                   422, "hyperparameters.include_layers")
    assert_problem(new_job(client, auth, model_id, dataset_id, hyperparameters={"device": "tpu"}),
                   422, "hyperparameters.device")
    assert_problem(client.get("/v1/jobs", headers=auth, params={"after": "x\x00"}), 422, "after")
    assert_problem(client.get("/v1/jobs", headers=auth, params={"metadata[a]": "\x00"}), 422)
    assert_problem(client.get("/v1/models/mdl_%00", headers=auth), 404)
    assert_problem(client.get("/v1/jobs/job_%00/report", headers=auth), 404)
    too_long = client.post("/v1/models", headers=auth, files={"file": ("m.pt", io.BytesIO(b"x"))}, data={"name": "x" * 300})
    assert_problem(too_long, 422, "name")


def test_405_lists_every_method_of_the_path(client, auth):
    res = client.request("OPTIONS", "/v1/jobs", headers=auth)
    assert_problem(res, 405)
    assert set(res.headers["allow"].split(", ")) >= {"GET", "POST"}
