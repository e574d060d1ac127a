"""Dataset URIs the service accepts, checked without touching the data.

Only three schemes exist (SPEC §4). A ``file://`` URI must resolve, symlinks and ``..``
included, inside one of ``BISE_DATA_ROOTS``: users name data, they never get to read an
arbitrary path of the worker's file system.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse


class UriError(ValueError):
    """The URI is not one the service may read."""


def local_path(uri: str) -> Path | None:
    """The file system path of a ``file://`` (or bare absolute path) URI, else None."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise UriError("file:// URIs must not name a host (use file:///absolute/path)")
        return Path(unquote(parsed.path))
    if uri.startswith("/"):
        return Path(uri)
    return None


def check_dataset_uri(uri: str, data_roots: list[Path]) -> str:
    """Return the URI's scheme (``file``, ``s3``, ``builtin``) or raise :class:`UriError`."""
    if "\x00" in uri:
        raise UriError("the URI contains a NUL byte")
    if uri.startswith("builtin:"):
        if not uri[len("builtin:"):].split("?", 1)[0]:
            raise UriError("builtin: needs a generator name, e.g. builtin:biased-digits?rho=0.99")
        return "builtin"
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UriError("s3:// URIs need a bucket: s3://bucket/prefix")
        return "s3"
    path = local_path(uri)
    if path is None:
        raise UriError("unsupported URI: use file:///path, s3://bucket/prefix or builtin:NAME")
    if not path.is_absolute():
        raise UriError("file:// URIs need an absolute path")
    if not data_roots:
        raise UriError("this service reads no local files: BISE_DATA_ROOTS is not set")
    real = Path(os.path.realpath(path))
    for root in data_roots:
        if real.is_relative_to(Path(os.path.realpath(root))):
            return "file"
    raise UriError(f"{path} is outside the data roots this service may read ({', '.join(map(str, data_roots))})")
