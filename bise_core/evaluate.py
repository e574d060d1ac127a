"""Every metric of SPEC section 3, for any model that maps x to (logits, z).

Group-based metrics treat each (y, b) combination as a population of its own: the
*unbiased* accuracy is the mean of group accuracies, so a model that only gets the common
(bias-aligned) groups right cannot hide behind their size. Bias *leakage* is how well a
fresh linear probe recovers b from the bottleneck z.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from bise_core.data.splits import Split

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.inference_mode()
def predict(forward: Forward, x: torch.Tensor, batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and bottleneck features of a whole split, batched."""
    preds, feats = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        logits, z = forward(xb)
        preds.append(logits.argmax(1).cpu())
        feats.append(z.float().cpu())
    return torch.cat(preds), torch.cat(feats)


def group_table(pred: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> list[dict[str, Any]]:
    """Accuracy of every non-empty (y, b_1..b_k) group, sorted by label then bias."""
    keys = torch.cat([y[:, None], b], dim=1)
    uniq, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    correct = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, (pred == y).double())
    rows = []
    for key, count, right in zip(uniq.tolist(), counts.tolist(), correct.tolist()):
        bias: int | list[int] = key[1] if b.shape[1] == 1 else key[1:]
        rows.append({"label": key[0], "bias": bias, "count": count, "accuracy": right / count})
    return rows


def _mean_acc(pred: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> float | None:
    return float((pred[rows] == y[rows]).double().mean()) if bool(rows.any()) else None


def split_metrics(
    pred: torch.Tensor,
    y: torch.Tensor,
    b: torch.Tensor,
    majority: torch.Tensor,
    leakage: list[float],
    bias_names: list[str],
) -> dict[str, Any]:
    """The METRICS object of the report for one split."""
    groups = group_table(pred, y, b)
    aligned_each = b == majority[y]
    metrics: dict[str, Any] = {
        "accuracy": float((pred == y).double().mean()),
        "unbiased_accuracy": sum(g["accuracy"] for g in groups) / len(groups),
        "aligned_accuracy": _mean_acc(pred, y, aligned_each.all(1)),
        "conflicting_accuracy": _mean_acc(pred, y, ~aligned_each.all(1)),
        "worst_group_accuracy": min(g["accuracy"] for g in groups),
        "bias_leakage": sum(leakage) / len(leakage) if leakage else None,
        "groups": groups,
    }
    if b.shape[1] > 1:
        metrics["per_attribute"] = []
        for j in range(b.shape[1]):
            sub = split_metrics(pred, y, b[:, j : j + 1], majority[:, j : j + 1], [leakage[j]] if leakage else [], [])
            metrics["per_attribute"].append(
                {
                    "attribute": bias_names[j] if j < len(bias_names) else f"bias_{j}",
                    "unbiased_accuracy": sub["unbiased_accuracy"],
                    "aligned_accuracy": sub["aligned_accuracy"],
                    "conflicting_accuracy": sub["conflicting_accuracy"],
                    "bias_leakage": sub["bias_leakage"],
                }
            )
    return metrics


def fit_probe(z: torch.Tensor, b: torch.Tensor, cardinality: int, seed: int, epochs: int = 100) -> torch.nn.Linear:
    """A fresh linear probe b <- z (standardised features, full-batch Adam)."""
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(z.shape[1], cardinality)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=gen)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(epochs):
        loss = F.cross_entropy(probe(z), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe


def leakage(
    z_train: torch.Tensor,
    b_train: torch.Tensor,
    z_by_split: dict[str, torch.Tensor],
    b_by_split: dict[str, torch.Tensor],
    cardinalities: list[int],
    seed: int,
) -> dict[str, list[float]]:
    """Probe accuracy per split and attribute, probes trained on the training split's z."""
    mean = z_train.mean(0, keepdim=True)
    std = z_train.std(0, keepdim=True).clamp_min(1e-6)
    out: dict[str, list[float]] = {name: [] for name in z_by_split}
    with torch.enable_grad():
        for j, card in enumerate(cardinalities):
            probe = fit_probe((z_train - mean) / std, b_train[:, j], card, seed + j)
            with torch.no_grad():
                for name, z in z_by_split.items():
                    hit = probe((z - mean) / std).argmax(1) == b_by_split[name][:, j]
                    out[name].append(float(hit.double().mean()))
    return out


def evaluate_model(
    forward: Forward,
    splits: dict[str, Split],
    majority: torch.Tensor,
    cardinalities: list[int],
    bias_names: list[str],
    *,
    batch_size: int,
    device: str,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """METRICS for every split, leakage probes included."""
    preds, feats = {}, {}
    for name, split in splits.items():
        preds[name], feats[name] = predict(forward, split.x, batch_size, device)
    leaks = leakage(
        feats["train"], splits["train"].b, feats, {n: s.b for n, s in splits.items()}, cardinalities, seed
    )
    return {
        name: split_metrics(preds[name], split.y, split.b, majority, leaks[name], bias_names)
        for name, split in splits.items()
    }


def unbiased_accuracy(forward: Forward, split: Split, batch_size: int, device: str) -> float:
    """Cheap per-period validation score (no probe)."""
    pred, _ = predict(forward, split.x, batch_size, device)
    groups = group_table(pred, split.y, split.b)
    return sum(g["accuracy"] for g in groups) / len(groups)
