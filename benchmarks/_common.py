"""Helpers shared by the benchmark scripts (not part of the engine).

Both scripts are run as ``.venv/bin/python benchmarks/NAME.py`` from the repository root;
this module is imported as a sibling (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bise_core import zoo  # noqa: E402
from bise_core.data import open_dataset  # noqa: E402
from bise_core.data.splits import Dataset  # noqa: E402
from bise_core.evaluate import predict, split_metrics  # noqa: E402
from bise_core.backends import Prepared, prepare  # noqa: E402
from bise_core.gates import GateControls  # noqa: E402
from bise_core.models import fetch_attr, load_model  # noqa: E402
from bise_core.units import UnitGraph  # noqa: E402
from bise_core.vanilla import save_archive, train_vanilla  # noqa: E402


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, int(threads)))


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# -- data and vanilla models --------------------------------------------------------------
def builtin_uri(rho: float, n: int, seed: int, size: int = 28) -> str:
    return f"builtin:biased-digits?rho={rho:g}&n={n}&seed={seed}&size={size}"


def load_data(rho: float, n: int, seed: int, size: int = 28) -> Dataset:
    return open_dataset(builtin_uri(rho, n, seed, size))


def train_and_save(
    arch: str, data: Dataset, path: Path, *, epochs: int, seed: int, lr: float = 1e-3, fmt: str = "torchscript"
) -> Path:
    """Plain ERM (Adam) on the biased training split, saved as ``fmt`` (TorchScript by default)."""
    torch.manual_seed(seed)
    model = zoo.build(arch, data.input_shape, data.num_classes)
    train_vanilla(model, data.splits["train"], epochs=epochs, lr=lr, seed=seed)
    return save_archive(model, data.splits["train"].x[:2], path, fmt)


# -- fixed-mask baselines -----------------------------------------------------------------
def load_gated(model_path: Path, data: Dataset) -> Prepared:
    """The engine's view of the archive, as ``prune`` builds it (default unit discovery):
    ``GatedModel(load_model(path, x[:2]).graph_module, find_units(gm))`` on the FX path, the
    ScriptModule parameter-reassignment backend for TorchScript the converter refuses."""
    example = data.splits["train"].x[:2]
    return prepare(load_model(model_path, example), example)


def kept_counts(masks: Sequence[torch.Tensor]) -> list[int]:
    return [int(m.sum()) for m in masks]


def random_masks(units: UnitGraph, counts: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Uniformly random units per layer, ``counts[i]`` kept in layer i."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for unit, count in zip(units.units, counts):
        keep = torch.zeros(unit.size, dtype=torch.bool)
        keep[torch.randperm(unit.size, generator=gen)[:count]] = True
        masks.append(keep)
    return masks


def unit_magnitudes(module: torch.nn.Module, units: UnitGraph) -> list[torch.Tensor]:
    """Per-unit importance = L1 norm of the unit's row in its scale tensor.

    The scale tensor is the unit's first ``zero_params`` entry: the BatchNorm weight for
    conv->BN pairs (|gamma|, as network slimming), else the conv/linear weight (L1 norm of
    the output filter / row, as Li et al. 2017). Biases are not counted.
    """
    scores = []
    for unit in units.units:
        weight = fetch_attr(module, unit.zero_params[0]).detach().float()
        scores.append(weight.reshape(weight.shape[0], -1).abs().sum(1))
    return scores


def magnitude_masks(scores: Sequence[torch.Tensor], counts: Sequence[int]) -> list[torch.Tensor]:
    masks = []
    for score, count in zip(scores, counts):
        keep = torch.zeros(len(score), dtype=torch.bool)
        if count > 0:  # stable order so ties resolve the same way every run
            keep[torch.sort(score, descending=True, stable=True).indices[:count]] = True
        masks.append(keep)
    return masks


def evaluate_masks(
    gated: GateControls,
    masks: Sequence[torch.Tensor] | None,
    data: Dataset,
    majority: torch.Tensor,
    split: str = "test",
    batch_size: int = 512,
    device: str = "cpu",
) -> dict[str, Any]:
    """Test metrics of ``gated`` with a binary mask (``None``: dense). No leakage probe."""
    if masks is None:
        gated.set_mode("dense")
    else:
        gated.load_keep_masks(list(masks))
        gated.set_mode("hard")
    s = data.splits[split]
    pred, _ = predict(gated, s.x, batch_size, device)  # type: ignore[arg-type]
    metrics = split_metrics(pred, s.y, s.b, majority, [], data.bias_names)
    metrics.pop("groups", None)
    return metrics


# -- formatting ---------------------------------------------------------------------------
def mean_std(values: Iterable[float | None], digits: int = 3, scale: float = 1.0) -> str:
    vals = [float(v) * scale for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
