"""How the masked forward runs: precision, memory layout and compilation (BiseConfig's
execution fields). None of them changes what is optimised; each is opt-in because each
has a cost where it does not pay (bf16 on CPUs without bf16 units, channels_last for
models without convolutions, the minutes torch.compile spends before the first step).
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
    def for_config(cls, config: BiseConfig, gated: Any, input_dims: int) -> "Execution":
        device_type = torch.device(config.device).type
        on_gpu = device_type == "cuda"
        channels_last = bool(config.channels_last and on_gpu and input_dims == 4)
        if channels_last and isinstance(gated, torch.nn.Module):
            gated.to(memory_format=torch.channels_last)
        forward = torch.compile(gated) if config.torch_compile else gated
        return cls(forward=forward, device_type=device_type, bf16=config.precision == "bf16" and on_gpu,
                   channels_last=channels_last)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> ContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
