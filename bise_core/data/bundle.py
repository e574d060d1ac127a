"""Tensor bundles: one file holding ``{split}_x``, ``{split}_y`` and ``{split}_b`` arrays.

Three containers are read (``.pt``, ``.npz``, ``.safetensors``), all without executing code
from the file: ``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)`` and
safetensors, which cannot hold code at all. This module only gets the arrays out;
what makes them a valid dataset is checked once, in :func:`bise_core.data.splits.build_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from bise_core.archives import check_expansion
from bise_core.data.splits import SPLIT_NAMES, as_tensor
from bise_core.errors import DatasetError

PARTS = ("x", "y", "b")


def _load_pt(path: Path) -> Mapping[str, object]:
    """``weights_only=True`` refuses arbitrary pickled objects, so a bundle cannot run code."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise DatasetError(f"{path.name} must hold a dict of tensors, not a {type(obj).__name__}")
    return {str(key): value for key, value in obj.items()}


def _load_npz(path: Path) -> Mapping[str, object]:
    """Read every array eagerly so a corrupt member fails here, inside the error wrapper."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files if _is_bundle_key(key)}


def _load_safetensors(path: Path) -> Mapping[str, object]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


LOADERS: dict[str, Callable[[Path], Mapping[str, object]]] = {
    ".pt": _load_pt,
    ".pth": _load_pt,
    ".npz": _load_npz,
    ".safetensors": _load_safetensors,
}


def is_bundle(path: Path) -> bool:
    """Whether the file extension names a tensor bundle format."""
    return path.suffix.lower() in LOADERS


def _is_bundle_key(key: str) -> bool:
    return any(key == f"{split}_{part}" for split in SPLIT_NAMES for part in PARTS)


def _load_arrays(path: Path) -> Mapping[str, object]:
    """Open the container; any parser failure becomes one DatasetError line naming the file."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DatasetError(f"{path.name}: unsupported bundle type; use one of {', '.join(sorted(LOADERS))}")
    check_expansion(path, DatasetError)
    try:
        return loader(path)
    except DatasetError:
        raise
    except Exception as exc:  # parsers raise many unrelated types for a damaged file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"cannot read {path.name} as a {path.suffix} bundle: {detail}") from exc


def _group_splits(arrays: Mapping[str, object]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Collect ``{split}_{x,y,b}`` triples; a split that is half present is an error, extras are ignored."""
    raw: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for split in SPLIT_NAMES:
        keys = [f"{split}_{part}" for part in PARTS]
        if split != "train" and not any(key in arrays for key in keys):
            continue
        for key in keys:
            if key not in arrays:
                raise DatasetError(f"missing key '{key}'", param=key)
        x, y, b = (as_tensor(arrays[key], key) for key in keys)
        raw[split] = (x, y, b)
    return raw


def read_bundle(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Read a ``.pt`` / ``.npz`` / ``.safetensors`` bundle into ``{split: (x, y, b)}``.

    ``train`` must be present; ``val`` and ``test`` are optional. Pass the result to
    :func:`~bise_core.data.splits.build_dataset` for validation.
    """
    return _group_splits(_load_arrays(Path(path)))
