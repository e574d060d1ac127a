"""Pseudo bias labels from the vanilla model, for datasets used without bias supervision.

Following the paper's unsupervised setting, what the vanilla model finds *easy* stands in
for the bias: samples it gets confidently right are "aligned", the rest "conflicting".
``vanilla_prediction`` uses its predicted class instead (an identification model).
"""

from __future__ import annotations

import torch

from bise_core.data.splits import Split

#: Fraction of each class treated as conflicting when the vanilla model is right everywhere.
LOW_CONFIDENCE_QUANTILE = 0.1


def pseudo_bias(logits: torch.Tensor, y: torch.Tensor, rule: str) -> tuple[torch.Tensor, str]:
    """Return [n, 1] pseudo labels and the exact rule applied (for the report)."""
    if rule == "vanilla_prediction":
        return logits.argmax(1)[:, None], "vanilla_prediction"
    prob_true = torch.softmax(logits.float(), 1).gather(1, y[:, None])[:, 0]
    correct = (logits.argmax(1) == y).long()
    if 0 < int(correct.sum()) < len(y):
        return correct[:, None], "vanilla_correct"
    # A model that memorised its training set is right everywhere: fall back to its least
    # confident samples per class, which is where bias-conflicting samples end up.
    easy = torch.ones_like(y)
    for c in torch.unique(y):
        rows = (y == c).nonzero()[:, 0]
        cut = torch.quantile(prob_true[rows], LOW_CONFIDENCE_QUANTILE)
        easy[rows[prob_true[rows] <= cut]] = 0
    return easy[:, None], f"vanilla_low_confidence_q{LOW_CONFIDENCE_QUANTILE:.2f}"


def with_bias(split: Split, b: torch.Tensor) -> Split:
    return Split(x=split.x, y=split.y, b=b)
