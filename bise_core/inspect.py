"""Summaries of a model file and of a dataset, for validation before any job runs.

``inspect_model`` works without a dataset: a ``torch.export`` archive records its input
shape; a TorchScript archive does not, so a plausible example is guessed from its first
layer (conv → image, linear → features, embedding → token ids) and a few common image
sizes are tried. When no guess runs, the summary says so and the units are found at job
time with the dataset's real input. The service runs both functions in a sandboxed
process; nothing here trusts the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bise_core.backends import params_and_flops, prepare
from bise_core.data import open_dataset
from bise_core.errors import BiseInputError, ModelFormatError
from bise_core.memory import activation_bytes_per_sample
from bise_core.models import _first_line, detect_format, load_model, quiet_torch

IMAGE_SIDES = (32, 28, 64, 224, 16)
FIRST_LAYER_KINDS = {"Conv1d": 3, "Conv2d": 4, "Conv3d": 5, "Linear": 2, "Embedding": 0, "EmbeddingBag": 0}


def _export_example(path: Path) -> torch.Tensor:
    with quiet_torch(), path.open("rb") as handle:
        program = torch.export.load(handle)
    names = set(program.graph_signature.user_inputs)
    inputs = [node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder" and node.name in names]
    tensors = [val for val in inputs if isinstance(val, torch.Tensor)]
    if len(inputs) != 1 or len(tensors) != 1:
        raise ModelFormatError(f"{path.name} takes {len(inputs)} inputs ({len(tensors)} tensors); "
                               "BISE needs a model with one input tensor")
    val = tensors[0]
    shape = [int(s) if isinstance(s, int) else 2 for s in val.shape]  # symbolic (dynamic) sizes: 2
    return torch.zeros(shape, dtype=val.dtype)


def _count_params(path: Path, fmt: str) -> int | None:
    """Parameters of the archive without running it (when no input could be guessed)."""
    from bise_core.models import _load_scripted
    from bise_core.slim import count_params

    try:
        return count_params(_load_scripted(path)) if fmt == "torchscript" else None
    except Exception:
        return None


def _script_examples(path: Path) -> list[torch.Tensor]:
    """Example inputs to try, guessed from the first layer that has parameters."""
    with quiet_torch():
        module = torch.jit.load(str(path), map_location="cpu")
    for _, sub in module.named_modules():
        kind = getattr(sub, "original_name", "")
        if kind not in FIRST_LAYER_KINDS:
            continue
        if kind.startswith("Embedding"):
            return [torch.zeros(2, 16, dtype=torch.long)]
        weight = sub.weight
        if kind == "Linear":
            return [torch.zeros(2, int(weight.shape[1]))]
        channels, spatial = int(weight.shape[1]), FIRST_LAYER_KINDS[kind] - 2
        return [torch.zeros(2, channels, *([side] * spatial)) for side in IMAGE_SIDES]
    return []


def _shape(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise BiseInputError(f"--input-shape {text!r}: expected comma-separated sizes such as 3,32,32",
                             param="input_shape") from None
    if not dims or any(d <= 0 for d in dims):
        raise BiseInputError(f"--input-shape {text!r}: sizes must be positive", param="input_shape")
    return dims


def inspect_model(path: Path | str, input_shape: str | None = None) -> dict[str, Any]:
    path = Path(path)
    fmt = detect_format(path)
    warnings: list[str] = []
    try:
        if input_shape:
            candidates = [torch.zeros(2, *_shape(input_shape))]
        elif fmt == "export":
            candidates = [_export_example(path)]
        else:
            candidates = _script_examples(path)
    except BiseInputError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"could not load {path.name} as {fmt}: {_first_line(exc)}") from None
    summary: dict[str, Any] = {"format": fmt, "params": None, "input_spec": None, "classifier": None,
                               "num_classes": None, "backend": None, "layers": None, "units_total": None,
                               "warnings": warnings}
    last_error = "no layer with parameters to guess the input from"
    for example in candidates:
        try:
            prepared = prepare(load_model(path, example), example)
        except BiseInputError as exc:
            last_error = exc.message
            continue
        units = prepared.units
        summary.update(
            params=int(params_and_flops(prepared.loaded, example)[0]),
            input_spec={"shape": list(example.shape[1:]), "dtype": str(example.dtype).replace("torch.", ""),
                        "source": "given" if input_shape else ("archive" if fmt == "export" else "guessed")},
            classifier=units.classifier, num_classes=units.num_classes, backend=prepared.backend,
            layers=[{"name": u.name, "kind": u.kind, "units": u.size} for u in units.units],
            units_total=units.total_units,
            activation_bytes_per_sample=activation_bytes_per_sample(prepared.loaded.module, example),
        )
        return summary
    if fmt == "export" or input_shape:
        raise ModelFormatError(f"{path.name} does not run: {last_error}")
    summary["params"] = _count_params(path, fmt)
    warnings.append(f"could not guess an input that runs ({last_error}); prunable units are found when a job "
                    "runs with the dataset's input")
    return summary


def dataset_info(uri: str, data_roots: list[Path] | None = None, bias_columns: list[str] | None = None) -> dict[str, Any]:
    data = open_dataset(uri, data_roots=data_roots, bias_columns=bias_columns)
    train = data.splits["train"]
    names = data.bias_names or [f"bias_{j}" for j in range(len(data.bias_cardinalities))]
    splits: dict[str, Any] = {}
    for name, split in data.splits.items():
        keys = torch.cat([split.y[:, None], split.b], dim=1)
        groups, counts = torch.unique(keys, dim=0, return_counts=True)
        splits[name] = {"count": len(split), "groups": [
            {"label": int(g[0]), "bias": int(g[1]) if g.numel() == 2 else [int(v) for v in g[1:]], "count": int(c)}
            for g, c in zip(groups, counts)]}
    return {"uri": uri, "num_classes": data.num_classes,
            "bias_attributes": [{"name": n, "cardinality": c} for n, c in zip(names, data.bias_cardinalities)],
            "input": {"shape": list(train.x.shape[1:]), "dtype": str(train.x.dtype).replace("torch.", "")},
            "splits": splits}
