"""The BISE objective: group-reweighted cross-entropy + gamma * mutual information on the bias.

The MI term needs an auxiliary head per bias attribute predicting b from the bottleneck z;
the heads are trained (alternating with the mask) to be as good as possible, and the mask is
trained to make them useless. Two estimators:

* ``entropy_ce``: I ~ H(b) - CE(C_aux(z), b), clamped at 0 (a variational lower bound).
* ``soft_joint``: the official code's estimator from the batch's soft joint of b and
  softmax(C_aux(z)), normalised by log(#bias classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bise_core.data.splits import Split
from bise_core.head_fit import fit_linear_heads_adam


def group_weights(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample weights so every (y, b_j) group weighs the same in total, per attribute.

    With one attribute this is exactly 1/|group| (normalised to mean 1). With several, the
    per-attribute factors multiply (groups over all attributes at once are mostly empty).
    """
    weights = torch.ones(len(y), dtype=torch.float64)
    for j in range(b.shape[1]):
        key = y * (int(b[:, j].max()) + 1) + b[:, j]
        _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        weights *= len(y) / (len(counts) * counts[inverse].double())
    return (weights / weights.mean()).float()


def majority_bias(y: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, k]: the most frequent value of each bias attribute within each class."""
    out = torch.zeros(num_classes, b.shape[1], dtype=torch.long)
    for c in range(num_classes):
        rows = b[y == c]
        if len(rows):
            out[c] = torch.mode(rows, dim=0).values
    return out


def bias_entropy(b: torch.Tensor, cardinality: int) -> float:
    p = torch.bincount(b, minlength=cardinality).double() / len(b)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


class AuxHeads(nn.Module):
    """One linear head per bias attribute on the (flattened) bottleneck."""

    def __init__(self, z_dim: int, cardinalities: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(z_dim, c) for c in cardinalities)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [head(z) for head in self.heads]


class Objective:
    """Computes J = L_r + gamma * sum_j I_j for a batch."""

    def __init__(
        self,
        train: Split,
        num_classes: int,
        cardinalities: list[int],
        gamma: float,
        estimator: str,
        samples: str,
    ) -> None:
        self.gamma = gamma
        self.estimator = estimator
        self.samples = samples
        self.cardinalities = cardinalities
        self.entropies = [bias_entropy(train.b[:, j], c) for j, c in enumerate(cardinalities)]
        self.majority = majority_bias(train.y, train.b, num_classes)

    def loss(
        self,
        logits: torch.Tensor,
        aux_logits: list[torch.Tensor],
        y: torch.Tensor,
        b: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ce = (F.cross_entropy(logits.float(), y, reduction="none") * weights).mean()
        mi_terms = [self._mi(out.float(), b[:, j], y, j) for j, out in enumerate(aux_logits)]
        mi = torch.stack(mi_terms).sum() if mi_terms else logits.new_zeros(())
        total = ce + self.gamma * mi
        return total, {"loss": total.item(), "ce": ce.item(), "mi": mi.item()}

    def _mi(self, aux_logits: torch.Tensor, b: torch.Tensor, y: torch.Tensor, j: int) -> torch.Tensor:
        if self.samples == "conflicting":
            keep = b != self.majority[:, j].to(y.device)[y]
            if int(keep.sum()) < 2:
                return aux_logits.new_zeros(())
            aux_logits, b = aux_logits[keep], b[keep]
        if self.estimator == "soft_joint":
            return soft_joint_mi(aux_logits, b, self.cardinalities[j])
        ce = F.cross_entropy(aux_logits, b)
        return torch.clamp(self.entropies[j] - ce, min=0.0)


def soft_joint_mi(aux_logits: torch.Tensor, b: torch.Tensor, cardinality: int) -> torch.Tensor:
    """MI between b and the head's soft prediction, normalised by log(cardinality)."""
    onehot = F.one_hot(b, cardinality).float()
    prob = torch.softmax(aux_logits, dim=1)
    joint = torch.clamp(onehot.t() @ prob, min=1e-15) / len(b)
    outer = torch.clamp(joint.sum(1, keepdim=True) @ joint.sum(0, keepdim=True), min=1e-15)
    return (joint * torch.log(joint / outer)).sum() / math.log(max(cardinality, 2))


def train_heads(
    heads: AuxHeads,
    z: torch.Tensor,
    b: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    optimizer: str,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """Fit the aux heads on cached bottleneck features (cheap: no pass through the network)."""
    if epochs <= 0:
        return
    if optimizer == "adam" and all(isinstance(h, nn.Linear) and h.bias is not None for h in heads.heads):
        fit_linear_heads_adam(list(heads.heads), z, b, epochs=epochs, lr=lr, batch_size=batch_size,  # type: ignore[arg-type]
                              generator=generator)
        return
    params = list(heads.parameters())
    opt = (
        torch.optim.Adam(params, lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    )
    n = len(z)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(z.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            outs = heads(z[idx])
            loss = sum(F.cross_entropy(out, b[idx, j]) for j, out in enumerate(outs))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
