"""Datasets: one entry point, :func:`open_dataset`, for every way a user can name data.

* ``builtin:NAME?query`` - generated offline (see :mod:`bise_core.data.builtin`);
* ``file:///abs/path`` or a plain local path - a tensor bundle (``.pt``, ``.npz``,
  ``.safetensors``), an image folder or tar archive with a manifest, or the manifest itself;
* ``s3://`` - refused for now: the service has to supply storage settings.

``data_roots`` confines local paths (after resolving symlinks) to the given folders, so a
service can accept dataset URIs from users without exposing the rest of its disk.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from bise_core.data.builtin import load_builtin
from bise_core.data.bundle import is_bundle, read_bundle
from bise_core.data.manifest import is_manifest_file, is_tar, read_manifest_dataset
from bise_core.data.splits import SPLIT_NAMES, Dataset, Split, build_dataset
from bise_core.errors import DatasetError

__all__ = ["Dataset", "DatasetError", "SPLIT_NAMES", "Split", "build_dataset", "open_dataset", "read_bundle"]

BUILTIN_PREFIX = "builtin:"


def _local_path(uri: str) -> Path:
    """Turn ``file://`` URIs and plain paths into a Path; refuse other schemes clearly."""
    if uri.startswith("s3://"):
        raise DatasetError("s3:// datasets need the service's storage settings")
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise DatasetError(f"file:// URIs need an absolute local path, got '{uri}'")
        return Path(unquote(parsed.path))
    scheme = urlparse(uri).scheme
    if "://" in uri and scheme:
        raise DatasetError(f"unsupported dataset URI scheme '{scheme}://'")
    return Path(uri).expanduser()


def _check_roots(path: Path, data_roots: list[Path] | None) -> Path:
    """Resolve symlinks and ``..`` first, then require the real path to sit under an allowed root."""
    real = path.resolve()
    if data_roots is None:
        return real
    if not any(real.is_relative_to(Path(root).resolve()) for root in data_roots):
        raise DatasetError(f"{path} is outside the allowed data roots")
    return real


def _open_local(path: Path, source: str, bias_columns: list[str] | None) -> Dataset:
    """Pick the reader from what the path is: bundle by extension, else folder / tar / manifest."""
    if path.is_file() and is_bundle(path):
        if bias_columns:
            raise DatasetError("bias_columns only applies to image folders with a manifest", param="bias_columns")
        return build_dataset(read_bundle(path), source=source)
    if path.is_dir() or (path.is_file() and (is_tar(path) or is_manifest_file(path))):
        return read_manifest_dataset(path, source=source, bias_columns=bias_columns)
    raise DatasetError(
        f"{path.name}: unsupported dataset file; expected .pt, .npz, .safetensors, a folder, "
        "a .tar/.tar.gz archive or a manifest.csv/.parquet"
    )


def open_dataset(
    uri: str,
    *,
    data_roots: list[Path] | None = None,
    bias_columns: list[str] | None = None,
) -> Dataset:
    """Open the dataset ``uri`` names, validated, with ``b`` always [n, k].

    Raises :class:`DatasetError` (one line, ``param="data"`` unless a specific key is at
    fault) for anything wrong with the URI, the files or their contents.
    """
    uri = str(uri).strip()
    if not uri:
        raise DatasetError("no dataset given")
    if uri.startswith(BUILTIN_PREFIX):
        if bias_columns:
            raise DatasetError("bias_columns only applies to image folders with a manifest", param="bias_columns")
        return load_builtin(uri[len(BUILTIN_PREFIX) :], source=uri)
    path = _local_path(uri)
    real = _check_roots(path, data_roots)
    if not real.exists():
        raise DatasetError(f"{path}: no such file or directory")
    return _open_local(real, uri, bias_columns)
