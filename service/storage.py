"""Artifact storage: uploaded models, pruned checkpoints and resume checkpoints.

The API and the workers may run on different machines, so artifacts live behind one small
interface with two backends, picked by ``BISE_STORAGE_URL``:

* ``file:///abs/path`` (or a plain path): a folder, for the single-machine set-up or a
  shared volume;
* ``s3://bucket/prefix``: any S3-compatible object store (AWS, MinIO, moto in the tests).

Callers only ever pass *relative keys* such as ``models/mdl_123/model.pt``. Every key goes
through :func:`validate_key` before a backend sees it, so a key can never climb out of the
storage root, and the same keys are valid in both backends (a deployment can move from a
folder to S3 without renaming anything).

The :class:`Storage` base class holds everything the backends share (key and range checks,
hashing, atomic local writes, chunked streaming); a backend only implements a handful of
primitive ``_`` methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

S3Client = Any  # botocore builds its client classes at run time

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageKeyError",
    "StoredObject",
    "file_digest",
    "storage_from_url",
    "validate_key",
]

DEFAULT_CHUNK = 1 << 20
MAX_KEY_LENGTH = 1024  # S3's limit on a key (bytes; keys are ASCII here)
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_TMP_PREFIX = ".tmp-"  # in-progress writes; never a valid result of a finished put


class StorageKeyError(KeyError):
    """The key names no stored object.

    A ``KeyError`` so that callers can treat storage like a mapping; ``str()`` is the plain
    message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing key"


@dataclass(frozen=True)
class StoredObject:
    """What :meth:`Storage.put_file` stored: recorded in the database so that downloads can
    announce size and checksum (ETag) without asking the backend again."""

    key: str
    size: int
    sha256: str


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError``.

    One rule set for both backends: a key must not be able to name anything outside the
    storage root of :class:`LocalStorage` (no absolute paths, no ``..``, no backslashes that
    some tools read as separators), and must mean the same object in S3 (no empty or ``.``
    segments, which a file system would collapse but S3 would keep).
    """
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key is longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative, not absolute: {key!r}")
    if "\\" in key:
        raise ValueError(f"storage key must use '/' as separator, not backslashes: {key!r}")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError(f"storage key may only contain letters, digits and '._-/': {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage key has an empty, '.' or '..' segment: {key!r}")
    return key


def file_digest(path: Path, chunk_size: int = DEFAULT_CHUNK) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a local file, read in chunks so that multi-GB models never
    sit in memory."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@contextlib.contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """Yield a file that becomes ``dest`` only once the block finishes without error.

    The data goes to a temporary file in ``dest``'s own folder (same file system, so
    ``os.replace`` is an atomic rename) and is fsynced first: a crash or an exception leaves
    either the old ``dest`` or none, never a half-written one. The temporary file is created
    with mode 0666 minus the umask, like any ordinary file, so that API and worker
    containers sharing a volume can read each other's artifacts.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{_TMP_PREFIX}{dest.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


def _stream(source: _Readable, limit: int | None, chunk_size: int) -> Iterator[bytes]:
    """Yield at most ``limit`` bytes (all when None) of an open reader, then close it.

    Closing in ``finally`` also runs when the consumer stops early (a client that drops the
    download), so no file handle or HTTP connection is leaked.
    """
    try:
        while limit is None or limit > 0:
            chunk = source.read(chunk_size if limit is None else min(chunk_size, limit))
            if not chunk:
                break
            if limit is not None:
                limit -= len(chunk)
            yield chunk
    finally:
        source.close()


def _check_range(start: int, end: int | None, chunk_size: int) -> None:
    if start < 0:
        raise ValueError(f"range start must be >= 0, got {start}")
    if end is not None and end < start:
        raise ValueError(f"range end {end} is before its start {start}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


def _prefix_key(prefix: str) -> str:
    """A prefix is a key folder; a trailing ``/`` is allowed and means the same."""
    return validate_key(prefix[:-1] if prefix.endswith("/") else prefix)


class Storage(ABC):
    """Artifact store keyed by relative keys (see :func:`validate_key`).

    The public methods validate their arguments and then call the backend's primitives, so
    no backend can forget a check. Methods that need an object raise
    :class:`StorageKeyError` when it is missing; deletions of missing objects are no-ops, so
    that clean-ups can be retried.
    """

    # -- public API --------------------------------------------------------------------
    def put_file(self, key: str, path: Path) -> StoredObject:
        """Store the local file ``path`` under ``key`` (replacing any previous object)."""
        key = validate_key(key)
        size, sha256 = file_digest(Path(path))
        self._put(key, Path(path))
        return StoredObject(key=key, size=size, sha256=sha256)

    def get_file(self, key: str, dest: Path) -> None:
        """Download ``key`` to ``dest`` atomically: readers of ``dest`` never see a partial
        download, and a missing key leaves ``dest`` untouched."""
        key = validate_key(key)
        with atomic_write(Path(dest)) as out:
            self._read_into(key, out)

    def size(self, key: str) -> int:
        """Size in bytes of the object at ``key``."""
        return self._size(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        try:
            self.size(key)
        except StorageKeyError:
            return False
        return True

    def iter_range(self, key: str, start: int = 0, end: int | None = None,
                   chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Stream bytes ``start`` to ``end`` *inclusive* (HTTP ``Range`` semantics; ``end``
        None: to the end of the object) in chunks of at most ``chunk_size`` bytes.

        The object is opened right away, so a missing key raises :class:`StorageKeyError`
        here and not halfway through an HTTP response. A range reaching past the end is
        clipped; one starting past the end yields nothing.
        """
        key = validate_key(key)
        _check_range(start, end, chunk_size)
        return self._open_range(key, start, end, chunk_size)

    def delete(self, key: str) -> None:
        """Remove the object at ``key``; a missing one is fine."""
        self._delete(validate_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object *under* the key folder ``prefix`` (``jobs/j1`` removes
        ``jobs/j1/...`` but neither ``jobs/j1`` itself nor ``jobs/j10/...``) and return how
        many were removed. Folder semantics, because a plain string prefix would make
        deleting one job's artifacts delete those of its namesakes too."""
        return self._delete_prefix(_prefix_key(prefix))

    # -- backend primitives (arguments already validated) ------------------------------
    @abstractmethod
    def _put(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def _read_into(self, key: str, out: BinaryIO) -> None: ...

    @abstractmethod
    def _size(self, key: str) -> int: ...

    @abstractmethod
    def _open_range(self, key: str, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> int: ...


class LocalStorage(Storage):
    """Objects are files under ``root``; the folder is created on the first write.

    Besides key validation, every path is resolved (symlinks included) and must stay inside
    the resolved root, so a symlink planted inside the root cannot redirect a write or a
    delete elsewhere.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key {key!r} resolves outside the storage root")
        return path

    def _file(self, key: str) -> Path:
        """The path of an existing object; folders, FIFOs and devices are not objects."""
        path = self._path(key)
        if not path.is_file():
            raise StorageKeyError(f"no stored object {key!r}")
        return path

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._file(key), "rb")
        except FileNotFoundError:  # deleted between the check and the open
            raise StorageKeyError(f"no stored object {key!r}") from None

    def _put(self, key: str, path: Path) -> None:
        with open(path, "rb") as src, atomic_write(self._path(key)) as out:
            shutil.copyfileobj(src, out, DEFAULT_CHUNK)

    def _read_into(self, key: str, out: BinaryIO) -> None:
        with self._open(key) as src:
            shutil.copyfileobj(src, out, DEFAULT_CHUNK)

    def _size(self, key: str) -> int:
        try:
            return self._file(key).stat().st_size
        except FileNotFoundError:
            raise StorageKeyError(f"no stored object {key!r}") from None

    def _open_range(self, key: str, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
        f = self._open(key)
        f.seek(start)
        return _stream(f, None if end is None else end - start + 1, chunk_size)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if not path.is_dir():
            path.unlink(missing_ok=True)

    def _delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        if not folder.is_dir():
            return 0
        removed = 0
        # Bottom-up, without following symlinks: a link inside the folder is removed, never
        # what it points to. Temporary files of interrupted writes go too but are not counted.
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            here = Path(dirpath)
            for name in filenames:
                removed += _unlink(here / name) and not name.startswith(_TMP_PREFIX)
            for name in dirnames:
                if (here / name).is_symlink():
                    _unlink(here / name)
            with contextlib.suppress(OSError):  # a concurrent write may have refilled it
                here.rmdir()
        return removed


def _unlink(path: Path) -> bool:
    """Remove a file or link; False when it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _is_invalid_range(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidRange"


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix/`` (keys are the same relative keys as locally).

    Credentials and region come from the usual ``AWS_*`` environment variables or files,
    never from the service's own settings. The bucket must exist: creating it implicitly
    would hide a typo in ``BISE_STORAGE_URL`` behind an empty new bucket.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: S3Client | None = None) -> None:
        if not bucket:
            raise ValueError("S3 storage needs a bucket name")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = validate_key(prefix) if prefix else ""
        self.endpoint_url = endpoint_url
        if client is not None:
            self.__dict__["client"] = client

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    @cached_property
    def client(self) -> S3Client:
        """Created on first use (not at import or construction) so that a process that
        forks workers does not share one connection pool between them. boto3 clients are
        thread-safe once created."""
        import boto3
        from botocore.config import Config

        # S3-compatible servers (MinIO, moto) are usually reached by host name without
        # per-bucket DNS entries: path-style addressing works with all of them.
        config = Config(s3={"addressing_style": "path"}) if self.endpoint_url else None
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _missing_as_key_error(self, key: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if _is_missing(exc):
                raise StorageKeyError(f"no stored object {key!r}") from None
            raise

    def _put(self, key: str, path: Path) -> None:
        # upload_file switches to a (parallel) multipart upload for large files.
        self.client.upload_file(str(path), self.bucket, self._full(key))

    def _read_into(self, key: str, out: BinaryIO) -> None:
        with self._missing_as_key_error(key):
            self.client.download_fileobj(self.bucket, self._full(key), out)

    def _size(self, key: str) -> int:
        with self._missing_as_key_error(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        return int(head["ContentLength"])

    def _open_range(self, key: str, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if start or end is not None:  # a Range on an empty object would be a 416
            request["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            with self._missing_as_key_error(key):
                body = self.client.get_object(**request)["Body"]
        except Exception as exc:
            if _is_invalid_range(exc):  # starts past the end: the object exists, no bytes
                return iter(())
            raise
        return _stream(body, None, chunk_size)

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def _delete_prefix(self, prefix: str) -> int:
        removed = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._full(prefix) + "/")
        for page in pages:  # at most 1000 keys a page, delete_objects' own limit
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                removed += self._delete_batch(objects)
        return removed

    def _delete_batch(self, objects: list[dict[str, str]]) -> int:
        reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        errors = reply.get("Errors") or []
        if errors:
            first = errors[0]
            raise OSError(f"S3 refused to delete {len(errors)} object(s), e.g. {first.get('Key')!r}: "
                          f"{first.get('Code')} {first.get('Message')}")
        return len(objects)


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def storage_from_url(url: str, *, s3_endpoint_url: str | None = None) -> Storage:
    """The backend named by ``BISE_STORAGE_URL``.

    ``file:///abs/path`` or a plain path gives :class:`LocalStorage`; ``s3://bucket/prefix``
    gives :class:`S3Storage` (``s3_endpoint_url`` points it at MinIO or moto instead of AWS).
    Anything else is a configuration error, reported at start-up rather than at the first
    upload.
    """
    if not url or not url.strip():
        raise ValueError("storage URL is empty: use file:///absolute/path or s3://bucket/prefix")
    if url.startswith("file://"):
        return LocalStorage(_file_url_path(url))
    if url.startswith("s3://"):
        return _s3_from_url(url, s3_endpoint_url)
    if "://" in url or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", url):
        raise ValueError(f"unsupported storage URL {url!r}: use file:///absolute/path or s3://bucket/prefix")
    return LocalStorage(Path(url))


def _file_url_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file:// storage URL must not name a host (use file:///absolute/path): {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"file:// storage URL must not have a query or fragment: {url!r}")
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise ValueError(f"file:// storage URL needs an absolute path: {url!r}")
    return path


def _s3_from_url(url: str, endpoint_url: str | None) -> S3Storage:
    parsed = urlparse(url)
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(f"s3:// storage URL must not have a query or fragment: {url!r}")
    if not _BUCKET_NAME.fullmatch(parsed.netloc or ""):
        raise ValueError(f"s3:// storage URL needs a valid bucket name (s3://bucket/prefix): {url!r}")
    prefix = parsed.path.strip("/")
    try:
        if prefix:
            validate_key(prefix)
    except ValueError as exc:
        raise ValueError(f"invalid prefix in storage URL {url!r}: {exc}") from None
    return S3Storage(parsed.netloc, prefix, endpoint_url=endpoint_url)
