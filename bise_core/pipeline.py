"""One BISE job end to end: model + dataset in, checkpoints + mask + report out.

This is what both the CLI (``bise prune``) and the service's worker call. The pruned
metrics are measured on the *saved* checkpoint reloaded from disk, so the report always
describes exactly the file the user downloads.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from bise_core.checkpoint import Checkpointer
from bise_core.config import BiseConfig
from bise_core.data import open_dataset
from bise_core.data.splits import Dataset
from bise_core.errors import BiseInputError
from bise_core.evaluate import evaluate_model
from bise_core.execution import use_channels_last
from bise_core.backends import dense_forward, params_and_flops, prepare
from bise_core.gates import GateControls
from bise_core.loop import BiseLoop, ProgressCallback, StopCheck
from bise_core.models import LoadedModel, load_model, save_graph_module, save_masked
from bise_core.objective import majority_bias
from bise_core.pseudo_labels import pseudo_bias, with_bias
from bise_core.report import build_report, mask_document
from bise_core.report_html import render_report_html
from bise_core.units import UnitGraph, find_units

MASKED_NAME = "pruned.pt"
SLIM_NAME = "pruned_slim.pt"


@dataclass
class PruneResult:
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, on_progress: ProgressCallback) -> Iterator[None]:
        on_progress({"type": "phase", "phase": name})
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 4)


def _check_compatible(units: UnitGraph, data: Dataset) -> None:
    if data.num_classes > units.num_classes:
        raise BiseInputError(
            f"the model outputs {units.num_classes} classes but the labels go up to {data.num_classes - 1}",
            param="data",
        )


def _zeroed_rows(units: UnitGraph, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    zeroed: dict[str, torch.Tensor] = {}
    for unit, keep in zip(units.units, masks):
        for name in unit.zero_params:
            zeroed[name] = zeroed.get(name, torch.zeros_like(keep)) | ~keep
    return zeroed


def prune(
    model_path: Path | str,
    data: str | Dataset,
    out_dir: Path | str,
    config: BiseConfig | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    data_roots: list[Path] | None = None,
    checkpoint: Checkpointer | None = None,
    bias_columns: list[str] | None = None,
) -> PruneResult:
    """Run BISE and write report.json, mask.json, mask.pt, pruned.pt (and pruned_slim.pt)."""
    cfg = config or BiseConfig()
    emit: ProgressCallback = on_progress or (lambda event: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    torch.manual_seed(cfg.seed)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BiseInputError("CUDA was requested but no GPU is available", param="device")

    with timer.phase("load", emit):
        dataset = data if isinstance(data, Dataset) else open_dataset(
            data, data_roots=data_roots, bias_columns=bias_columns)
        example = dataset.splits["train"].x[:2]
        loaded: LoadedModel = load_model(model_path, example)
        prepared = prepare(loaded, example, classifier=cfg.classifier, include=cfg.include_layers,
                           exclude=cfg.exclude_layers, init=float(cfg.mask_init))  # type: ignore[arg-type]
        units = prepared.units
        _check_compatible(units, dataset)
    majority = majority_bias(dataset.splits["train"].y, dataset.splits["train"].b, dataset.num_classes)
    eval_kwargs = dict(batch_size=cfg.eval_batch_size, device=cfg.device, seed=cfg.seed)

    gated = prepared.gated.to(cfg.device)  # type: ignore[attr-defined]
    layout_sample = dataset.splits["train"].x[:8].to(cfg.device)
    use_channels_last(cfg.channels_last, gated, layout_sample)  # the evaluation runs in the loop's layout
    with timer.phase("evaluate_vanilla", emit):
        gated.set_mode("dense")
        vanilla = evaluate_model(gated, dataset.splits, majority, dataset.bias_cardinalities,
                                 dataset.bias_names, **eval_kwargs)  # type: ignore[arg-type]

    train_data, supervision = dataset, "labels"
    if cfg.bias_supervision == "none":
        train_data, supervision = _with_pseudo_labels(gated, dataset, cfg)

    with timer.phase("prune", emit):
        result = BiseLoop(cfg, gated, train_data, emit, should_stop, checkpoint).run()

    with timer.phase("export", emit):
        masked_path = out / MASKED_NAME
        save_masked(loaded, _zeroed_rows(units, result.masks), masked_path)
        pruned_loaded = load_model(masked_path, example)

    with timer.phase("evaluate_pruned", emit):
        pruned_forward = dense_forward(pruned_loaded, example, units.classifier).to(cfg.device)
        use_channels_last(cfg.channels_last, pruned_forward, layout_sample)
        pruned = evaluate_model(pruned_forward, dataset.splits, majority, dataset.bias_cardinalities,
                                dataset.bias_names, **eval_kwargs)  # type: ignore[arg-type]

    files = {"masked": masked_path}
    with timer.phase("slim", emit):
        slim_info = _slim(pruned_loaded, units, result.masks, loaded, example, out / SLIM_NAME)
        if slim_info.get("path"):
            files["slim"] = slim_info["path"]

    mask_doc = mask_document(units, result.masks)
    (out / "mask.json").write_text(json.dumps(mask_doc, indent=2))
    torch.save({u.name: m for u, m in zip(units.units, result.masks)}, out / "mask.pt")
    files.update({"mask_json": out / "mask.json", "mask_tensor": out / "mask.pt"})

    report = build_report(
        vanilla=vanilla, pruned=pruned, units=units, masks=result.masks, loop=result, config=cfg,
        supervision=supervision, slim_info=slim_info, timings=timer.seconds, model_format=loaded.format,
    )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.html").write_text(render_report_html(report, title=f"BISE report: {Path(model_path).name}"))
    files.update(report=out / "report.json", report_html=out / "report.html")
    emit({"type": "done", "verdict": report["verdict"]})
    return PruneResult(report=report, files=files)


def _with_pseudo_labels(gated: GateControls, dataset: Dataset, cfg: BiseConfig) -> tuple[Dataset, str]:
    """Replace the training split's bias labels by the vanilla model's pseudo labels."""
    train = dataset.splits["train"]
    gated.set_mode("dense")
    logits, _ = _logits(gated, train.x, cfg)
    b, rule = pseudo_bias(logits, train.y, cfg.pseudo_label_rule)
    splits = {"train": with_bias(train, b)}
    if "val" in dataset.splits:  # val keeps no real labels either, to be honest about supervision
        val = dataset.splits["val"]
        val_logits, _ = _logits(gated, val.x, cfg)
        splits["val"] = with_bias(val, pseudo_bias(val_logits, val.y, cfg.pseudo_label_rule)[0])
    card = int(b.max()) + 1
    return Dataset(splits=splits, num_classes=dataset.num_classes, bias_cardinalities=[max(card, 2)],
                   bias_names=["pseudo_bias"], source=dataset.source), rule


def _logits(gated: GateControls, x: torch.Tensor, cfg: BiseConfig) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        outs = [gated(x[i : i + cfg.eval_batch_size].to(cfg.device)) for i in range(0, len(x), cfg.eval_batch_size)]
    return torch.cat([o[0].cpu() for o in outs]), torch.cat([o[1].cpu() for o in outs])


def _slim(pruned: LoadedModel, units: UnitGraph, masks: list[torch.Tensor], loaded: LoadedModel,
          example: torch.Tensor, path: Path) -> dict[str, Any]:
    """Physically remove pruned channels where the architecture allows; never fail the job."""
    params_dense, flops_dense = params_and_flops(loaded, example)
    info: dict[str, Any] = {"params_dense": params_dense, "flops_dense": flops_dense, "path": None,
                            "layers": [], "params_slim": None, "flops_slim": None}
    if pruned.graph_module is None:
        info["error"] = f"slimming needs an FX graph; this TorchScript model has none ({loaded.conversion_error})"
        return info
    from bise_core.slim import count_flops, count_params, slim_graph

    try:
        pruned_units = find_units(pruned.graph_module, classifier=units.classifier)
        slim_gm, slimmed = slim_graph(pruned.graph_module, pruned_units, masks, example)
        save_graph_module(slim_gm, loaded.format, example, path)
        info.update(path=path, layers=slimmed, params_slim=count_params(slim_gm),
                    flops_slim=count_flops(slim_gm, example))
    except Exception as exc:  # slimming is a bonus: report why it was skipped
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info
