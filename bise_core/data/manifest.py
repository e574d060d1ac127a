"""Image folders (or tar archives of one) described by a CSV or Parquet manifest.

The manifest has one row per image: ``path`` (relative to the folder), ``label``, ``split``
(train / val / test) and one or more bias columns. Everything a user could get wrong about
the folder (a missing column, a missing image, a path that leaves the folder, a link in an
archive) is reported as a :class:`DatasetError` naming the culprit.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bise_core.data.splits import SPLIT_NAMES, Dataset, build_dataset
from bise_core.errors import DatasetError

MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
MANIFEST_SUFFIXES = (".csv", ".parquet")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
REQUIRED_COLUMNS = ("path", "label", "split")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass
class _Column:
    """One label or bias column as integer codes, plus the original values when it held strings."""

    codes: np.ndarray
    categories: list[str] | None


def is_tar(path: Path) -> bool:
    """Whether the name says tar archive (plain or compressed)."""
    return path.name.lower().endswith(TAR_SUFFIXES)


def is_manifest_file(path: Path) -> bool:
    """Whether the name says the path is the manifest itself, with its images beside it."""
    return path.suffix.lower() in MANIFEST_SUFFIXES


# --------------------------------------------------------------------------- tar archives


def _check_member(member: tarfile.TarInfo) -> PurePosixPath:
    """Refuse anything that could write outside the destination or is not a plain file/folder."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise DatasetError(f"archive member '{member.name}' escapes the archive root")
    if member.issym() or member.islnk():
        raise DatasetError(f"archive member '{member.name}' is a link; links are not allowed in dataset archives")
    if not (member.isfile() or member.isdir()):
        raise DatasetError(f"archive member '{member.name}' is not a regular file or folder")
    return name


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, by hand, so no tarfile feature can be abused."""
    dest_real = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = _check_member(member)
                target = dest_real.joinpath(*name.parts)
                if not target.resolve().is_relative_to(dest_real):
                    raise DatasetError(f"archive member '{member.name}' escapes the archive root")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise DatasetError(f"archive member '{member.name}' cannot be read")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {archive.name}: {exc}") from exc


def _archive_root(extracted: Path) -> Path:
    """Archives often wrap the folder in one top-level directory; look inside it if so."""
    if any((extracted / name).is_file() for name in MANIFEST_NAMES):
        return extracted
    entries = [p for p in extracted.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


# --------------------------------------------------------------------------- the manifest table


def _find_manifest(root: Path) -> Path:
    found = [root / name for name in MANIFEST_NAMES if (root / name).is_file()]
    if not found:
        raise DatasetError(f"no manifest.csv or manifest.parquet in {root}")
    if len(found) > 1:
        raise DatasetError(f"both manifest.csv and manifest.parquet are in {root}; keep one")
    return found[0]


def _read_table(manifest: Path) -> pd.DataFrame:
    try:
        if manifest.suffix.lower() == ".parquet":
            table = pd.read_parquet(manifest)
        else:
            table = pd.read_csv(manifest, skipinitialspace=True, dtype={"path": str})  # "001" stays "001"
    except Exception as exc:  # pandas / pyarrow raise many types for a bad file
        raise DatasetError(f"cannot read manifest {manifest.name}: {str(exc).strip().splitlines()[0]}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DatasetError(f"manifest {manifest.name} has no rows")
    return table


def _bias_column_names(table: pd.DataFrame, bias_columns: list[str] | None) -> list[str]:
    """Explicit names win; else a column called ``bias``; else every column starting with ``bias``."""
    if bias_columns:
        names = list(bias_columns)
    elif "bias" in table.columns:
        names = ["bias"]
    else:
        names = [c for c in table.columns if c.startswith("bias")]
    if not names:
        raise DatasetError("manifest has no bias column; name one 'bias' or pass bias_columns", param="bias_columns")
    return names


def _check_columns(table: pd.DataFrame, needed: list[str]) -> None:
    for column in needed:
        if column not in table.columns:
            raise DatasetError(f"manifest is missing column '{column}' (has: {', '.join(table.columns)})")


def _encode_column(series: pd.Series, name: str) -> _Column:
    """Integers pass through; strings become indices into their sorted distinct values."""
    empty = series.isna().to_numpy()
    if empty.any():
        raise DatasetError(f"manifest column '{name}' is empty in row {int(np.argmax(empty)) + 1}")
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return _Column(series.to_numpy().astype(np.int64), None)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy()
        if not np.all(values == np.round(values)):
            raise DatasetError(f"manifest column '{name}' holds fractional numbers; use integers or names")
        return _Column(values.astype(np.int64), None)
    text = series.astype(str).str.strip().to_numpy()
    categories = sorted(set(text.tolist()))
    codes = np.searchsorted(np.array(categories, dtype=object), text).astype(np.int64)
    return _Column(codes, categories)


def _split_names(series: pd.Series) -> np.ndarray:
    names = series.astype(str).str.strip().str.lower().to_numpy()
    for row, value in enumerate(names, start=1):
        if value not in SPLIT_NAMES:
            raise DatasetError(
                f"manifest column 'split' has '{value}' in row {row}; expected one of {', '.join(SPLIT_NAMES)}"
            )
    return names


# --------------------------------------------------------------------------- images


def _image_path(root_real: Path, relative: str, row: int) -> Path:
    """Resolve a manifest path, refusing absolute paths, ``..`` and symlinks that leave the root."""
    text = relative.strip().replace("\\", "/")
    pure = PurePosixPath(text)
    if not text:
        raise DatasetError(f"manifest row {row} has an empty path")
    if pure.is_absolute() or ".." in pure.parts:
        raise DatasetError(f"image path '{relative}' (row {row}) escapes the dataset root")
    path = root_real.joinpath(*pure.parts).resolve()
    if not path.is_relative_to(root_real):
        raise DatasetError(f"image path '{relative}' (row {row}) escapes the dataset root")
    if not path.is_file():
        raise DatasetError(f"missing image file '{relative}' (row {row})")
    return path


def _probe(path: Path, relative: str) -> tuple[str, tuple[int, int]]:
    """Read only the header: mode and size decide the common format before decoding anything."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as exc:
        raise DatasetError(f"cannot open image '{relative}': {exc}") from exc


def _load_images(paths: list[Path], names: list[str]) -> torch.Tensor:
    """Decode to one [n, C, H, W] float tensor in [0, 1]: L if all are grayscale, else RGB,
    every image resized to the most common size so they stack."""
    probes = [_probe(p, n) for p, n in zip(paths, names)]
    mode = "L" if all(m in GRAYSCALE_MODES for m, _ in probes) else "RGB"
    width, height = Counter(size for _, size in probes).most_common(1)[0][0]
    channels = 1 if mode == "L" else 3
    pixels = np.empty((len(paths), height, width, channels), dtype=np.uint8)
    for i, (path, name) in enumerate(zip(paths, names)):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels[i] = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
        except Exception as exc:
            raise DatasetError(f"cannot decode image '{name}': {exc}") from exc
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


# --------------------------------------------------------------------------- entry points


def _read_folder(root: Path, manifest: Path, bias_columns: list[str] | None, source: str) -> Dataset:
    table = _read_table(manifest)
    bias_names = _bias_column_names(table, bias_columns)
    _check_columns(table, [*REQUIRED_COLUMNS, *bias_names])
    root_real = root.resolve()
    if table["path"].isna().any():
        raise DatasetError(f"manifest row {int(np.argmax(table['path'].isna().to_numpy())) + 1} has an empty path")
    relatives = table["path"].astype(str).tolist()
    paths = [_image_path(root_real, rel, row) for row, rel in enumerate(relatives, start=1)]
    splits = _split_names(table["split"])
    label = _encode_column(table["label"], "label")
    biases = [_encode_column(table[c], c) for c in bias_names]
    x = _load_images(paths, relatives)
    y = torch.from_numpy(label.codes)
    b = torch.from_numpy(np.stack([c.codes for c in biases], axis=1))
    raw = {}
    for name in SPLIT_NAMES:
        index = torch.from_numpy(np.flatnonzero(splits == name))
        if index.numel():
            raw[name] = (x[index], y[index], b[index])
    categories = {n: c.categories for n, c in zip(["label", *bias_names], [label, *biases]) if c.categories}
    return build_dataset(raw, source=source, bias_names=bias_names, categories=categories)


def read_manifest_dataset(path: Path, *, source: str, bias_columns: list[str] | None = None) -> Dataset:
    """Open an image folder, a tar of one, or a manifest file (its folder is the image root)."""
    path = Path(path)
    if is_tar(path):
        with tempfile.TemporaryDirectory(prefix="bise-data-") as tmp:
            safe_extract(path, Path(tmp))
            root = _archive_root(Path(tmp))
            return _read_folder(root, _find_manifest(root), bias_columns, source)
    if is_manifest_file(path):
        return _read_folder(path.parent, path, bias_columns, source)
    if path.is_dir():
        return _read_folder(path, _find_manifest(path), bias_columns, source)
    raise DatasetError(f"{path} is not an image folder, a tar archive or a manifest file")
