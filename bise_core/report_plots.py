"""The report's plots, rendered server-side to inline SVG (no external assets, no JS).

matplotlib draws text as paths in SVG by default, so the page looks the same in any browser
without fonts. Each function returns an ``<svg>`` string, or "" when there is nothing to plot.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: servers, workers and CI have none
import matplotlib.pyplot as plt  # noqa: E402

matplotlib.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
                            "axes.spines.right": False})


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def learning_curves(history: list[dict[str, Any]]) -> str:
    """Loss terms, tau, units kept and val unbiased accuracy at every tau period."""
    if not history:
        return ""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    for key, label in (("loss", "objective"), ("ce", "reweighted CE"), ("mi", "MI penalty")):
        if any(h.get(key) is not None for h in history):
            axes[0].plot(epochs, [h.get(key) for h in history], label=label)
    axes[0].set(title="loss terms", xlabel="epoch")
    axes[0].legend(frameon=False)
    axes[1].plot(epochs, [h["tau"] for h in history], color="tab:purple")
    axes[1].set(title="temperature τ", xlabel="epoch", yscale="log")
    axes[2].plot(epochs, [h["units_kept"] / max(h["units_total"], 1) for h in history], label="units kept")
    val = [h.get("val_unbiased_accuracy") for h in history]
    if any(v is not None for v in val):
        axes[2].plot(epochs, [v if v is not None else float("nan") for v in val], label="val unbiased acc.")
    axes[2].set(title="units kept / val unbiased accuracy", xlabel="epoch", ylim=(0, 1.02))
    axes[2].legend(frameon=False)
    return _svg(fig)


def layer_sparsity(layers: list[dict[str, Any]]) -> str:
    """Fraction of units kept in every prunable layer."""
    if not layers:
        return ""
    names = [str(l["name"]) for l in layers]
    fractions = [l["kept"] / l["total"] if l["total"] else 0.0 for l in layers]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(layers) + 0.8))
    ax.barh(range(len(layers)), fractions, color="tab:green")
    ax.set_yticks(range(len(layers)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="fraction of units kept")
    for i, layer in enumerate(layers):
        ax.text(min(fractions[i] + 0.01, 0.9), i, f"{layer['kept']}/{layer['total']}", va="center", fontsize=7)
    return _svg(fig)


def _grid(groups: list[dict[str, Any]]) -> tuple[list[Any], list[str], list[list[float]]]:
    labels = sorted({g["label"] for g in groups})
    biases = sorted({str(g["bias"]) for g in groups})
    cells = {(g["label"], str(g["bias"])): g["accuracy"] for g in groups}
    return labels, biases, [[cells.get((y, b), float("nan")) for b in biases] for y in labels]


def group_heatmap(vanilla: list[dict[str, Any]], pruned: list[dict[str, Any]], split: str) -> str:
    """Accuracy of every (label, bias) group, vanilla beside pruned (empty cells: no sample)."""
    if not vanilla or not pruned:
        return ""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, groups, title in ((axes[0], vanilla, "vanilla"), (axes[1], pruned, "pruned")):
        labels, biases, grid = _grid(groups)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(biases)), biases, rotation=90 if len(biases) > 12 else 0)
        ax.set_yticks(range(len(labels)), [str(y) for y in labels])
        ax.set(title=f"{title}: accuracy per group ({split})", xlabel="bias", ylabel="label")
    fig.colorbar(image, ax=axes, fraction=0.025)
    return _svg(fig)
