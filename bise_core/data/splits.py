"""The in-memory dataset every reader produces, and the checks every reader shares.

Readers (tensor bundles, image folders, ``builtin:`` generators) only differ in where the
tensors come from; what a valid dataset *is* lives here, once, so each reader gets the same
clear errors (missing key, mismatched lengths, labels out of range, one bias group, NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from bise_core.errors import DatasetError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory. ``b`` is always 2-D: [n, k] for k bias attributes."""

    x: torch.Tensor
    y: torch.Tensor
    b: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """All splits of a dataset plus what the engine needs to size its heads."""

    splits: dict[str, Split]
    num_classes: int
    bias_cardinalities: list[int]
    bias_names: list[str] = field(default_factory=list)
    source: str = ""
    #: For columns that held strings (image manifests): column name -> original values,
    #: in index order, so reports can say "blond" rather than "1".
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_bias_attributes(self) -> int:
        return len(self.bias_cardinalities)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])


RawSplits = Mapping[str, tuple[object, object, object]]


def as_tensor(value: object, key: str) -> torch.Tensor:
    """Accept what readers hand over (tensors or numpy arrays) and nothing else.

    Done here, not in each reader, so a bundle holding a string array fails with the same
    message whatever the file format.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DatasetError(f"has unsupported dtype {value.dtype}; expected numbers", param=key)
        native = value.astype(value.dtype.newbyteorder("="), copy=False)  # torch refuses big-endian
        tensor = torch.from_numpy(np.ascontiguousarray(native))
    else:
        raise DatasetError(f"is a {type(value).__name__}, not a tensor", param=key)
    if tensor.is_complex():
        raise DatasetError(f"has unsupported dtype {tensor.dtype}; expected real numbers", param=key)
    return tensor


def _is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _normalise_x(value: object, key: str) -> torch.Tensor:
    """uint8 x are 8-bit images, scaled to [0, 1] as ``ToTensor`` does (a conv net cannot eat
    uint8); wider integer x are token ids for an embedding (int64); the rest becomes float32."""
    x = as_tensor(value, key)
    if x.ndim < 2:
        raise DatasetError(
            f"has shape {list(x.shape)}; expected [n, ...] with at least one feature dimension", param=key
        )
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if _is_integer(x):
        x = x.to(torch.int64)
        if x.numel() and int(x.min()) < 0:
            raise DatasetError("holds negative integers; integer inputs are token ids and must be >= 0", param=key)
        return x
    x = x.to(torch.float32)
    if x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        # aminmax propagates NaN and inf without a mask as big as x; count only on failure.
        bad = int((~torch.isfinite(x)).sum())
        raise DatasetError(f"contains {bad} NaN or infinite values", param=key)
    return x


def _normalise_labels(value: object, key: str) -> torch.Tensor:
    """Labels must be non-negative whole numbers; integral floats (common in .npz) are accepted."""
    t = as_tensor(value, key)
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise DatasetError("holds non-integer values; labels must be whole numbers", param=key)
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise DatasetError(f"holds negative label {int(t.min())}; labels must be >= 0", param=key)
    return t


def _normalise_split(name: str, x: object, y: object, b: object) -> Split:
    """Bring one split into canonical dtypes and shapes, naming the key at fault."""
    xt = _normalise_x(x, f"{name}_x")
    yt = _normalise_labels(y, f"{name}_y")
    if yt.ndim == 2 and yt.shape[1] == 1:
        yt = yt[:, 0]
    if yt.ndim != 1:
        raise DatasetError(f"has shape {list(yt.shape)}; expected [n]", param=f"{name}_y")
    n = int(yt.shape[0])
    if n == 0:
        raise DatasetError("has no rows", param=f"{name}_y")
    bt = _normalise_labels(b, f"{name}_b")
    if bt.ndim == 1:
        bt = bt[:, None]
    if bt.ndim != 2 or bt.shape[1] == 0:
        raise DatasetError(f"has shape {list(bt.shape)}; expected [n] or [n, k]", param=f"{name}_b")
    for key, rows in ((f"{name}_x", xt.shape[0]), (f"{name}_b", bt.shape[0])):
        if rows != n:
            raise DatasetError(f"has {rows} rows but {name}_y has {n}", param=key)
    return Split(x=xt, y=yt, b=bt.contiguous())


def _check_consistent(splits: dict[str, Split]) -> None:
    """Every split must fit the same model: same sample shape, input kind and bias count."""
    train = splits["train"]
    for name, split in splits.items():
        if split.b.shape[1] != train.b.shape[1]:
            raise DatasetError(
                f"has {split.b.shape[1]} bias attributes but train_b has {train.b.shape[1]}", param=f"{name}_b"
            )
        if split.x.shape[1:] != train.x.shape[1:]:
            raise DatasetError(
                f"has sample shape {list(split.x.shape[1:])} but train_x has {list(train.x.shape[1:])}",
                param=f"{name}_x",
            )
        if split.x.dtype != train.x.dtype:
            raise DatasetError(f"is {split.x.dtype} but train_x is {train.x.dtype}", param=f"{name}_x")


def _resolve_num_classes(splits: dict[str, Split], num_classes: int | None) -> int:
    """Infer the class count, or hold every split to the one the caller (the model) imposes."""
    if num_classes is None:
        return max(int(s.y.max()) for s in splits.values()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DatasetError(f"must be a positive integer, got {num_classes!r}", param="num_classes")
    for name, split in splits.items():
        top = int(split.y.max())
        if top >= num_classes:
            raise DatasetError(f"has label {top}, out of range for num_classes={num_classes}", param=f"{name}_y")
    return num_classes


def _check_bias_groups(train: Split, bias_names: list[str]) -> None:
    """Debiasing compares groups; with one group (or a constant bias) there is nothing to compare."""
    groups = torch.unique(torch.cat([train.y[:, None], train.b], dim=1), dim=0)
    if groups.shape[0] < 2:
        raise DatasetError(
            "needs at least two bias groups; every training sample has the same (label, bias) pair", param="train_b"
        )
    for j, bias_name in enumerate(bias_names):
        values = torch.unique(train.b[:, j])
        if values.numel() < 2:
            raise DatasetError(
                f"needs at least two bias groups; bias attribute '{bias_name}' only takes the value "
                f"{int(values[0])} in train",
                param="train_b",
            )


def _resolve_bias_names(bias_names: list[str] | None, k: int) -> list[str]:
    if bias_names is None:
        return ["bias"] if k == 1 else [f"bias_{j}" for j in range(k)]
    names = [str(n) for n in bias_names]
    if len(names) != k:
        raise DatasetError(f"has {len(names)} names but the data has {k} bias attributes", param="bias_names")
    if len(set(names)) != len(names):
        raise DatasetError(f"has duplicate names: {names}", param="bias_names")
    return names


def build_dataset(
    raw: RawSplits,
    *,
    source: str,
    bias_names: list[str] | None = None,
    num_classes: int | None = None,
    categories: dict[str, list[str]] | None = None,
) -> Dataset:
    """Validate and normalise what a reader produced into a :class:`Dataset`.

    ``raw`` maps split names (train required; val, test optional) to ``(x, y, b)``.
    All readers go through here so that every format fails in the same, named way.
    """
    unknown = sorted(set(raw) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(f"unknown split '{unknown[0]}'; splits are named {', '.join(SPLIT_NAMES)}", param=unknown[0])
    if "train" not in raw:
        raise DatasetError("missing the 'train' split (train_x, train_y, train_b)", param="train")
    splits = {name: _normalise_split(name, *raw[name]) for name in SPLIT_NAMES if name in raw}
    _check_consistent(splits)
    k = int(splits["train"].b.shape[1])
    names = _resolve_bias_names(bias_names, k)
    classes = _resolve_num_classes(splits, num_classes)
    _check_bias_groups(splits["train"], names)
    cardinalities = [max(int(s.b[:, j].max()) for s in splits.values()) + 1 for j in range(k)]
    return Dataset(
        splits=splits,
        num_classes=classes,
        bias_cardinalities=cardinalities,
        bias_names=names,
        source=source,
        categories=dict(categories or {}),
    )
