"""Ordinary ERM training of a vanilla model, and saving it as the archive a user would upload.

Used by the demo, the tests and the benchmarks to produce a *biased* starting point the way
an ML team would: plain cross-entropy on the biased training split, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bise_core.data.splits import Split
from bise_core.models import quiet_torch


def train_vanilla(
    model: nn.Module,
    train: Split,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
) -> nn.Module:
    """Adam + cross-entropy on the training split; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(train.x[idx].to(device)), train.y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def save_archive(model: nn.Module, example: torch.Tensor, path: Path, fmt: str = "torchscript") -> Path:
    """Save as ``torchscript`` (scripted), ``traced`` (TorchScript via tracing) or ``export`` (.pt2)."""
    model = model.eval().cpu()
    with quiet_torch():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.script(model), str(path))
        elif fmt == "traced":
            torch.jit.save(torch.jit.trace(model, (example,)), str(path))
        elif fmt == "export":
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            with path.open("wb") as handle:
                torch.export.save(program, handle)
        else:
            raise ValueError(f"unknown format {fmt}")
    return path
