"""Artifact storage: both backends pass the same contract tests.

The S3 backend runs against moto's standalone server in a separate process (a real HTTP
endpoint, started once for this module), never against an in-process mock.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageKeyError,
    StoredObject,
    storage_from_url,
    validate_key,
)
from tests.s3_server import create_bucket, moto_s3_server, s3_client

BUCKET = "bise-test"
SIZE = 9 * 1024 * 1024 + 123  # over boto3's 8 MiB multipart threshold, not a chunk multiple


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        create_bucket(endpoint, BUCKET)
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(BUCKET, f"runs/{uuid.uuid4().hex}", endpoint_url=endpoint)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path_factory.mktemp("src") / "model.pt"
    path.write_bytes(data)
    return path, data


def _put_bytes(storage: Storage, key: str, data: bytes, tmp_path: Path) -> StoredObject:
    src = tmp_path / f"src-{uuid.uuid4().hex}"
    src.write_bytes(data)
    return storage.put_file(key, src)


# -- the contract, for both backends ---------------------------------------------------
def test_put_get_round_trip(storage: Storage, big_file: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = big_file
    stored = storage.put_file("models/mdl_1/model.pt", path)
    assert stored == StoredObject("models/mdl_1/model.pt", SIZE, hashlib.sha256(data).hexdigest())
    assert storage.exists("models/mdl_1/model.pt")
    assert storage.size("models/mdl_1/model.pt") == SIZE

    dest = tmp_path / "down" / "deeper" / "model.pt"
    storage.get_file("models/mdl_1/model.pt", dest)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pt"]  # no temp file left


def test_put_replaces_existing(storage: Storage, tmp_path: Path) -> None:
    _put_bytes(storage, "a/b.bin", b"old contents", tmp_path)
    stored = _put_bytes(storage, "a/b.bin", b"new", tmp_path)
    assert stored.size == 3
    assert b"".join(storage.iter_range("a/b.bin")) == b"new"


@pytest.mark.parametrize(("start", "end"), [
    (0, 0),                       # first byte
    (1_000_000, 3_000_000),       # middle slice spanning chunks
    (SIZE - 1000, None),          # suffix
    (0, None),                    # whole
    (SIZE - 10, SIZE + 500),      # end past the object: clipped
    (SIZE - 1, SIZE - 1),         # last byte
])
def test_iter_range(storage: Storage, big_file: tuple[Path, bytes], start: int, end: int | None) -> None:
    path, data = big_file
    storage.put_file("ranges/model.pt", path)
    chunks = list(storage.iter_range("ranges/model.pt", start, end, chunk_size=256 * 1024))
    stop = SIZE if end is None else min(end + 1, SIZE)
    assert b"".join(chunks) == data[start:stop]
    assert all(0 < len(c) <= 256 * 1024 for c in chunks)


def test_iter_range_edges(storage: Storage, tmp_path: Path) -> None:
    _put_bytes(storage, "small.bin", b"0123456789", tmp_path)
    assert list(storage.iter_range("small.bin", 10)) == []  # starts past the end
    assert b"".join(storage.iter_range("small.bin", 3, 5)) == b"345"
    _put_bytes(storage, "empty.bin", b"", tmp_path)
    assert storage.size("empty.bin") == 0
    assert b"".join(storage.iter_range("empty.bin")) == b""
    with pytest.raises(ValueError):
        storage.iter_range("small.bin", 5, 4)
    with pytest.raises(ValueError):
        storage.iter_range("small.bin", -1)


def test_iter_range_stops_early(storage: Storage, tmp_path: Path) -> None:
    """A client dropping the download closes the stream; the object stays usable."""
    _put_bytes(storage, "s.bin", b"x" * 1000, tmp_path)
    stream = storage.iter_range("s.bin", chunk_size=100)
    assert next(stream) == b"x" * 100
    stream.close()  # type: ignore[attr-defined]
    assert storage.size("s.bin") == 1000


def test_missing_key(storage: Storage, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "missing.pt"
    with pytest.raises(StorageKeyError):
        storage.size("nope/missing.pt")
    with pytest.raises(StorageKeyError):
        storage.get_file("nope/missing.pt", dest)
    with pytest.raises(StorageKeyError):  # raised at the call, not at the first chunk
        storage.iter_range("nope/missing.pt")
    with pytest.raises(KeyError):
        storage.size("nope/missing.pt")
    assert not storage.exists("nope/missing.pt")
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_get_file_keeps_old_dest_when_missing(storage: Storage, tmp_path: Path) -> None:
    dest = tmp_path / "keep.pt"
    dest.write_bytes(b"previous")
    with pytest.raises(StorageKeyError):
        storage.get_file("missing.pt", dest)
    assert dest.read_bytes() == b"previous"


def test_delete(storage: Storage, tmp_path: Path) -> None:
    _put_bytes(storage, "jobs/j1/a.pt", b"a", tmp_path)
    storage.delete("jobs/j1/a.pt")
    assert not storage.exists("jobs/j1/a.pt")
    storage.delete("jobs/j1/a.pt")  # missing is fine
    storage.delete("never/was.pt")


def test_delete_prefix(storage: Storage, tmp_path: Path) -> None:
    for key in ("jobs/j1/a.pt", "jobs/j1/b.pt", "jobs/j1/sub/c.pt", "jobs/j10/d.pt", "jobs/j1x"):
        _put_bytes(storage, key, key.encode(), tmp_path)
    assert storage.delete_prefix("jobs/j1") == 3
    assert not any(storage.exists(k) for k in ("jobs/j1/a.pt", "jobs/j1/b.pt", "jobs/j1/sub/c.pt"))
    assert storage.exists("jobs/j10/d.pt") and storage.exists("jobs/j1x")  # namesakes survive
    assert storage.delete_prefix("jobs/j1/") == 0
    assert storage.delete_prefix("nothing/here") == 0
    with pytest.raises(ValueError):
        storage.delete_prefix("")


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a/../b", "..", ".", "a/", "a\\b", "",
                                 "a b", "mdl/é.pt", "a/b?c", "x" * 1025])
def test_bad_keys_rejected(storage: Storage, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    with pytest.raises(ValueError):
        storage.put_file(key, src)
    with pytest.raises(ValueError):
        storage.get_file(key, tmp_path / "dest")
    for call in (storage.size, storage.exists, storage.iter_range, storage.delete):
        with pytest.raises(ValueError):
            call(key)
    assert not (tmp_path / "dest").exists()


# -- key rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["models/mdl_123/model.pt", "a", "a.b-c_d/E9", ".hidden/x", "a/..b"])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


# -- local backend specifics ------------------------------------------------------------
def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_local_root_created_lazily(tmp_path: Path) -> None:
    root = tmp_path / "lazy" / "store"
    storage = LocalStorage(root)
    assert not root.exists()
    assert not storage.exists("a.pt")
    assert not root.exists()
    _put_bytes(storage, "x/a.pt", b"1", tmp_path)
    assert (root / "x" / "a.pt").read_bytes() == b"1"


def test_local_never_writes_outside_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.pt").write_bytes(b"keep me")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)  # planted escape hatch
    (root / "filelink.pt").symlink_to(outside / "victim.pt")
    storage = LocalStorage(root)
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    before = _tree(tmp_path)

    for key in ("../outside/new.pt", "link/new.pt", "link/victim.pt", "filelink.pt"):
        with pytest.raises(ValueError):
            storage.put_file(key, src)
        with pytest.raises(ValueError):
            storage.delete(key)
    with pytest.raises(ValueError):
        storage.delete_prefix("link")
    with pytest.raises(ValueError):
        storage.size("link/victim.pt")

    _put_bytes(storage, "jobs/j1/a.pt", b"1", tmp_path)
    storage.delete_prefix("jobs")
    assert (outside / "victim.pt").read_bytes() == b"keep me"
    assert _tree(outside) == {"victim.pt"}
    new_paths = _tree(tmp_path) - before
    assert new_paths and all(p.startswith(("store/", "src-")) for p in new_paths)


def test_local_delete_prefix_removes_links_not_targets(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.pt").write_bytes(b"keep me")
    storage = LocalStorage(tmp_path / "store")
    _put_bytes(storage, "jobs/j1/a.pt", b"1", tmp_path)
    (tmp_path / "store" / "jobs" / "j1" / "dirlink").symlink_to(outside, target_is_directory=True)
    assert storage.delete_prefix("jobs/j1") == 1
    assert (outside / "victim.pt").read_bytes() == b"keep me"
    assert not (tmp_path / "store" / "jobs" / "j1").exists()


def test_local_interrupted_write_leaves_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "store")
    _put_bytes(storage, "m/model.pt", b"old model", tmp_path)
    src = tmp_path / "new.bin"
    src.write_bytes(b"new model " * 1000)

    def crash(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(fsrc.read(100))
        raise OSError("disk full")

    monkeypatch.setattr("service.storage.shutil.copyfileobj", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.put_file("m/model.pt", src)
    assert (tmp_path / "store" / "m" / "model.pt").read_bytes() == b"old model"
    assert sorted(p.name for p in (tmp_path / "store" / "m").iterdir()) == ["model.pt"]


# -- S3 backend specifics ---------------------------------------------------------------
def test_s3_keys_are_prefixed(s3_endpoint: str, tmp_path: Path) -> None:
    prefix = f"pfx/{uuid.uuid4().hex}"
    storage = S3Storage(BUCKET, prefix, endpoint_url=s3_endpoint)
    _put_bytes(storage, "models/m.pt", b"abc", tmp_path)
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}/models/m.pt"]


def test_s3_delete_prefix_pages(s3_endpoint: str, tmp_path: Path) -> None:
    """More keys than one list/delete page (1000) holds."""
    storage = S3Storage(BUCKET, f"many/{uuid.uuid4().hex}", endpoint_url=s3_endpoint)
    client = s3_client(s3_endpoint)
    for i in range(1005):
        client.put_object(Bucket=BUCKET, Key=f"{storage.prefix}/jobs/j1/{i:04d}", Body=b"")
    assert storage.delete_prefix("jobs/j1") == 1005
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=storage.prefix)


def test_s3_never_creates_buckets(s3_endpoint: str, tmp_path: Path) -> None:
    storage = S3Storage("no-such-bucket", "p", endpoint_url=s3_endpoint)
    with pytest.raises(Exception):  # boto3's S3UploadFailedError (NoSuchBucket)
        _put_bytes(storage, "a.pt", b"x", tmp_path)
    names = [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


# -- storage_from_url -------------------------------------------------------------------
def test_storage_from_url_file(tmp_path: Path) -> None:
    storage = storage_from_url(f"file://{tmp_path}/store")
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "store").resolve()
    assert storage_from_url(f"file://localhost{tmp_path}").root == tmp_path.resolve()  # type: ignore[attr-defined]
    plain = storage_from_url(str(tmp_path / "plain"))
    assert isinstance(plain, LocalStorage) and plain.root == (tmp_path / "plain").resolve()


def test_storage_from_url_s3() -> None:
    storage = storage_from_url("s3://my-bucket/some/prefix/", s3_endpoint_url="http://127.0.0.1:9")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.endpoint_url) == ("my-bucket", "some/prefix", "http://127.0.0.1:9")
    bare = storage_from_url("s3://my-bucket")
    assert isinstance(bare, S3Storage) and bare.prefix == "" and bare.endpoint_url is None


@pytest.mark.parametrize("url", ["http://example.com/x", "ftp://host/x", "gs://bucket/x", "", "s3://", "s3:///prefix",
                                 "s3://Bad_Bucket/x", "s3://bucket/../x", "file://host/path", "file://relative",
                                 "mailto:someone"])
def test_storage_from_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        storage_from_url(url)
