"""How the masked forward runs: precision, memory layout and compilation (BiseConfig's
execution fields). None of them changes what is optimised. bf16 and torch.compile are
opt-in because each has a cost where it does not pay (bf16 on CPUs without bf16 units,
the minutes torch.compile spends before the first step). channels_last is on by default
where it is safe: convolutions run 1.4-1.8x faster in it on CPU as on GPU, but a model
that reshapes with ``.view`` after a convolution breaks in it, so the default tries the
layout on one batch first and keeps the plain one unless outputs match.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from bise_core.config import BiseConfig


@dataclass
class Execution:
    forward: Callable[[torch.Tensor], Any]
    device_type: str
    bf16: bool
    channels_last: bool

    @classmethod
    def for_config(cls, config: BiseConfig, gated: Any, sample: torch.Tensor) -> "Execution":
        """``sample``: a few training inputs on the device (the channels_last check runs them)."""
        device_type = torch.device(config.device).type
        on_gpu = device_type == "cuda"
        channels_last = use_channels_last(config.channels_last, gated, sample)
        forward = torch.compile(gated) if config.torch_compile else gated
        return cls(forward=forward, device_type=device_type, bf16=config.precision == "bf16" and on_gpu,
                   channels_last=channels_last)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> ContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)


def _outputs(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = module(x)
    return [t.float() for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]


def use_channels_last(wanted: bool | None, gated: Any, sample: torch.Tensor) -> bool:
    """Convert ``gated`` (a gated model, or any forward module) to channels_last when
    ``wanted`` (None: when it has 4-D kernels and its outputs on ``sample`` match the plain
    layout's); leaves it unchanged otherwise. Idempotent."""
    if wanted is False or sample.dim() != 4 or not isinstance(gated, torch.nn.Module):
        return False
    if wanted is None and not any(t.dim() == 4 for t in (*gated.parameters(), *gated.buffers())):  # frozen: buffers
        return False
    if wanted:
        gated.to(memory_format=torch.channels_last)
        return True
    modes = [getattr(g, "mode", None) for g in getattr(gated, "gates", [])]
    try:
        if hasattr(gated, "set_mode"):
            gated.set_mode("dense")
        with torch.no_grad():
            plain = _outputs(gated, sample)
            gated.to(memory_format=torch.channels_last)
            converted = _outputs(gated, sample.contiguous(memory_format=torch.channels_last))
        same = len(plain) == len(converted) and all(
            a.shape == b.shape and float((a - b).abs().max()) <= 1e-3 * float(a.abs().max()) + 1e-5
            for a, b in zip(plain, converted))
    except Exception:  # e.g. a .view() that channels_last strides refuse: keep the plain layout
        same = False
    finally:
        for gate, mode in zip(getattr(gated, "gates", []), modes):
            gate.mode = mode
    if not same:
        gated.to(memory_format=torch.contiguous_format)
    return same
