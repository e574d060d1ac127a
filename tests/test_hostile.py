"""Hostile and broken input through the live API and worker (issue 5).

Pickles that run code, zip bombs, truncated and foreign files: each becomes ``invalid``
with a reason, nothing runs, and the API process never opens the file (it only streams it
to storage; validation happens in the worker's sandboxed child). Hyperparameters that
would exhaust memory are refused at submission with the field named.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from bise_core.memory import dataset_bytes, estimate_job_bytes
from service.admission import memory_refusal
from tests.conftest import TINY_URI
from tests.test_service_e2e import upload_model, wait_status

pytestmark = pytest.mark.slow


class _RunsCode:
    """Unpickling this creates ``marker``: proof that a loader executed the file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def exploit_payload(marker: Path) -> bytes:
    payload = pickle.dumps(_RunsCode(marker), protocol=2)
    # the payload is live: plain pickle.loads in a throw-away process does run it
    probe = marker.with_suffix(".probe")
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=pickle.dumps(_RunsCode(probe), protocol=2), check=True)
    assert probe.exists()
    return payload


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(path: Path, inner: str, expanded: int = 512 * 1024**2) -> Path:
    """``expanded`` zero bytes deflated into about a thousandth of that."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(inner, "w", force_zip64=True) as member:
            chunk = b"\0" * (64 * 1024**2)
            for _ in range(expanded // len(chunk)):
                member.write(chunk)
    return path


@pytest.fixture(scope="module")
def api(live_api, auth):
    with httpx.Client(base_url=live_api, headers=auth, timeout=30) as http:
        yield http


def invalid_model(api: httpx.Client, path: Path) -> dict:
    model = wait_status(api, f"/v1/models/{upload_model(api, path)['id']}", {"ready", "invalid"}, timeout=120)
    assert model["status"] == "invalid", model
    assert model["error"]["code"] and model["error"]["message"]
    return model


def test_pickles_that_run_code_are_refused_without_running(api, tmp_path):
    marker = Path("/tmp") / f"bise-pwned-{uuid.uuid4().hex}"
    payload = exploit_payload(marker)
    plain = tmp_path / "state_dict.pt"  # what torch.save(model) would give
    plain.write_bytes(zip_of({"archive/data.pkl": payload, "archive/version": b"3\n"}))
    scripted = tmp_path / "scripted.pt"  # TorchScript's layout around the same payload
    scripted.write_bytes(zip_of({"archive/data.pkl": payload, "archive/constants.pkl": payload,
                                 "archive/code/__torch__/m.py": b"", "archive/version": b"3\n"}))
    exported = tmp_path / "exported.pt2"
    exported.write_bytes(zip_of({"archive/archive_format": b"pt2", "archive/models/model.json": b"{}",
                                 "archive/data/weights/weights.pt": payload}))
    for path in (plain, scripted, exported):
        model = invalid_model(api, path)
        assert not marker.exists(), f"{path.name} ran its payload ({model})"
    assert "torch.jit.save" in invalid_model(api, plain)["error"]["message"]


def test_zip_bombs_are_refused_before_inflating(api, service_env, tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.pt", "archive/data.pkl")
    assert bomb.stat().st_size < 2 * 1024**2
    assert "zip bomb" in invalid_model(api, bomb)["error"]["message"]
    data_bomb = zip_bomb(Path(service_env["BISE_DATA_ROOTS"]) / "bomb.npz", "train_x.npy")
    dataset = api.post("/v1/datasets", json={"name": "bomb", "uri": f"file://{data_bomb}"}).json()
    dataset = wait_status(api, f"/v1/datasets/{dataset['id']}", {"ready", "invalid"}, timeout=120)
    assert dataset["status"] == "invalid" and "zip bomb" in dataset["error"]["message"], dataset


@pytest.mark.parametrize("content", ["truncated", "random", "text", "empty_zip", "npz"])
def test_truncated_and_foreign_uploads_become_invalid(api, archive_factory, tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "truncated":
        whole = archive_factory("cnn").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(50_000))
    elif content == "text":
        path.write_text("def forward(x): return x\n")
    elif content == "empty_zip":
        path.write_bytes(zip_of({}))
    else:
        np.savez(path.with_suffix(".npz"), train_x=np.zeros(3))
        path.with_suffix(".npz").rename(path)
    invalid_model(api, path)


def test_memory_estimate_names_the_knob_at_fault():
    model = {"activation_bytes_per_sample": 4 * 1024**2, "params": 11_000_000}
    dataset = {"input": {"shape": [3, 64, 64]}, "bias_attributes": [{"name": "b"}],
               "splits": {"train": {"count": 100_000}, "test": {"count": 10_000}}}
    limit = 8 * 1024**3
    assert memory_refusal(model, dataset, {"batch_size": 128, "eval_batch_size": 512}, limit) is None
    refused = memory_refusal(model, dataset, {"batch_size": 65536, "eval_batch_size": 512}, limit)
    assert refused is not None and refused["param"] == "hyperparameters.batch_size" and "GiB" in refused["message"]
    refused = memory_refusal(model, dataset, {"batch_size": 128, "eval_batch_size": 65536}, limit)
    assert refused is not None and refused["param"] == "hyperparameters.eval_batch_size"
    # a batch larger than the training split costs what the whole split costs
    small = {"splits": {"train": {"count": 100}}, "input": {"shape": [3, 64, 64]}}
    assert estimate_job_bytes(activation_per_sample=10, params=0, batch_size=10**6, eval_batch_size=1,
                              train_samples=100, data_bytes=0) == 2 * 100 * 10
    assert memory_refusal(model, small, {"batch_size": 65536, "eval_batch_size": 65536}, limit) is None


def test_huge_batch_is_refused_at_submission_with_the_field(client, auth, api, archive_factory, monkeypatch):
    """A validated model knows its activation size; a job that cannot fit is a 422, never queued."""
    from service.settings import get_settings

    model = wait_status(api, f"/v1/models/{upload_model(api, archive_factory('cnn'))['id']}", {"ready", "invalid"})
    dataset = api.post("/v1/datasets", json={"name": "tiny", "uri": TINY_URI}).json()
    dataset = wait_status(api, f"/v1/datasets/{dataset['id']}", {"ready", "invalid"})
    assert model["status"] == dataset["status"] == "ready"
    per_sample = model["summary"]["activation_bytes_per_sample"]
    assert per_sample > 0
    train = dataset["summary"]["splits"]["train"]["count"]
    # a worker that fits a batch of 8 but not the whole training split at once
    fixed = model["summary"]["params"] * 4 + dataset_bytes(dataset["summary"])
    monkeypatch.setenv("BISE_JOB_MEMORY_BYTES", str(max(fixed + per_sample * (8 + train), 1024**2)))
    get_settings.cache_clear()
    try:
        body = {"model_id": model["id"], "dataset_id": dataset["id"]}
        refused = client.post("/v1/jobs", headers=auth, json={**body, "hyperparameters": {"batch_size": 65536}})
        accepted = client.post("/v1/jobs", headers=auth,
                               json={**body, "hyperparameters": {"batch_size": 8, "eval_batch_size": 8}})
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["code"] == "job_too_large" and problem["errors"][0]["pointer"] == "#/hyperparameters/batch_size"
    assert accepted.status_code == 201, accepted.text
    client.post(f"/v1/jobs/{accepted.json()['id']}/cancel", headers=auth)


def test_a_key_revoked_by_another_process_fails_at_once(live_api, service_env):
    """The API caches key lookups; revoking from the admin CLI (another process) must still
    take effect on the very next request (the shared generation token in Redis changes)."""
    from tests.service_env import admin

    raw = admin(service_env, "create-key", "--project", "revocation")
    headers = {"Authorization": f"Bearer {raw}"}
    for _ in range(3):  # now cached in the API process
        assert httpx.get(f"{live_api}/v1/project", headers=headers).status_code == 200
    admin(service_env, "revoke-key", raw)
    res = httpx.get(f"{live_api}/v1/project", headers=headers)
    assert res.status_code == 401 and res.json()["code"] == "invalid_api_key"
