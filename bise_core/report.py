"""The report (SPEC section 3) and the mask document.

The JSON keys are a contract that clients and CI gates read, so they are assembled in one
place. The verdict is decided on validation evidence (never on test), falling back to the
training split, and says which evidence it used.
"""

from __future__ import annotations

from typing import Any

import torch

from bise_core.config import BiseConfig
from bise_core.loop import LoopResult
from bise_core.units import UnitGraph


def mask_document(units: UnitGraph, masks: list[torch.Tensor]) -> dict[str, Any]:
    layers = [
        {"name": u.name, "kind": u.kind, "total": u.size, "kept": int(m.sum()), "keep": [int(v) for v in m.tolist()]}
        for u, m in zip(units.units, masks)
    ]
    kept = sum(layer["kept"] for layer in layers)
    return {"classifier": units.classifier, "units_kept": kept, "units_total": units.total_units, "layers": layers}


def sparsity(units: UnitGraph, masks: list[torch.Tensor]) -> dict[str, Any]:
    layers = [{"name": u.name, "kept": int(m.sum()), "total": u.size} for u, m in zip(units.units, masks)]
    kept = sum(layer["kept"] for layer in layers)
    total = units.total_units
    return {"units_kept": kept, "units_total": total, "fraction_kept": kept / total, "layers": layers}


def verdict(vanilla: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """improved / no_improvement on val unbiased accuracy (train when there is no val)."""
    split = "val" if "val" in vanilla else "train"
    before = vanilla[split]["unbiased_accuracy"]
    after = pruned[split]["unbiased_accuracy"]
    return {
        "verdict": "improved" if after > before else "no_improvement",
        "evidence": {"split": split, "metric": "unbiased_accuracy", "vanilla": before, "pruned": after,
                     "delta": after - before},
    }


def build_report(
    *,
    vanilla: dict[str, Any],
    pruned: dict[str, Any],
    units: UnitGraph,
    masks: list[torch.Tensor],
    loop: LoopResult,
    config: BiseConfig,
    supervision: str,
    slim_info: dict[str, Any],
    timings: dict[str, float],
    model_format: str,
) -> dict[str, Any]:
    decided = verdict(vanilla, pruned)
    timings = {**timings, "total": round(sum(timings.values()), 4)}
    return {
        "vanilla": vanilla,
        "pruned": pruned,
        "sparsity": sparsity(units, masks),
        "params": {"dense": slim_info["params_dense"], "slim": slim_info["params_slim"]},
        "flops": {"dense": slim_info["flops_dense"], "slim": slim_info["flops_slim"]},
        "hyperparameters": config.model_dump(),
        "timings": timings,
        "verdict": decided["verdict"],
        "verdict_evidence": decided["evidence"],
        "selection": loop.selection,
        "bias_supervision": supervision,
        "history": loop.history,
        "model": {"format": model_format, "classifier": units.classifier,
                  "slimmed_layers": slim_info.get("layers", []), "slim_error": slim_info.get("error")},
        "epochs_run": loop.epochs_run,
    }
