"""The API with ``BISE_STORAGE_URL=s3://...`` against moto's S3 server (a separate process):
uploads land in the bucket under the prefix, byte for byte; deleting a model removes them."""

from __future__ import annotations

import hashlib
import io

import pytest

from tests.s3_server import create_bucket, moto_s3_server, s3_client


@pytest.fixture
def s3_settings(service_env, monkeypatch):
    from service.settings import get_settings

    with moto_s3_server() as endpoint:
        create_bucket(endpoint, "artifacts")
        monkeypatch.setenv("BISE_STORAGE_URL", "s3://artifacts/bise-test")
        monkeypatch.setenv("BISE_S3_ENDPOINT_URL", endpoint)
        get_settings.cache_clear()
        yield endpoint
        monkeypatch.undo()
        get_settings.cache_clear()


def test_upload_and_delete_through_s3(client, auth, s3_settings):
    content = b"PK\x03\x04" + bytes(range(256)) * 4096
    res = client.post("/v1/models", headers=auth, files={"file": ("net.pt", io.BytesIO(content))})
    assert res.status_code == 201, res.text
    model = res.json()
    s3 = s3_client(s3_settings)
    key = f"bise-test/models/{model['id']}/net.pt"
    stored = s3.get_object(Bucket="artifacts", Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == model["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.delete(f"/v1/models/{model['id']}", headers=auth).status_code == 200
    assert s3.list_objects_v2(Bucket="artifacts", Prefix=f"bise-test/models/{model['id']}/").get("KeyCount", 0) == 0
