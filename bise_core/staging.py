"""Where the training split lives during the mask epochs.

A BISE step is cheap (only the gates learn), so on a GPU the per-batch host-to-device copy
of a gathered batch can cost as much as the step itself. When the whole split fits in a
fraction of the free device memory it is moved once, and batches are gathered on the
device; otherwise batches are gathered on the host and copied without blocking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The staged split may take at most this fraction of the device's free memory.
DEVICE_FRACTION = 0.4


@dataclass
class StagedSplit:
    """Inputs, labels, bias labels and per-sample loss weights, on one device."""

    x: torch.Tensor
    y: torch.Tensor
    b: torch.Tensor
    w: torch.Tensor

    @property
    def on_device(self) -> bool:
        return self.x.device.type != "cpu"

    def batch(self, idx: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.on_device:
            idx = idx.to(self.x.device, non_blocking=True)
        return tuple(t[idx].to(device, non_blocking=True) for t in (self.x, self.y, self.b, self.w))  # type: ignore[return-value]


def stage(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, w: torch.Tensor, device: str,
          policy: str = "auto") -> StagedSplit:
    """Move the split to ``device`` when ``policy`` is ``auto`` and it fits; keep it on the host otherwise."""
    tensors = (x, y, b, w)
    if policy == "auto" and torch.device(device).type == "cuda":
        size = sum(t.numel() * t.element_size() for t in tensors)
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        if size <= DEVICE_FRACTION * free:
            return StagedSplit(*(t.to(device) for t in tensors))
    return StagedSplit(*tensors)
