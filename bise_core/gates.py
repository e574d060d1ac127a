"""The BISE gate and the gated forward.

Each unit i has a real parameter m_i; the forward multiplies the unit's output by the hard
gate 1{sigmoid(m_i/tau) >= 0.5} (i.e. m_i >= 0) while the gradient flows through the soft
gate sigmoid(m_i/tau) (straight-through). Gates are inserted as modules into a *copy* of
the frozen FX graph, and a tap records the bottleneck z, so one forward yields the logits,
z, and gradients only for the mask.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from bise_core.models import first_output
from bise_core.units import UnitGraph

GATE_PREFIX = "bise_gate_"
TAP_NAME = "bise_bottleneck_tap"


class UnitGate(nn.Module):
    """Gate of one layer. ``mode``: 'soft' (STE, training), 'hard' (binary), 'dense' (all ones)."""

    def __init__(self, size: int, channel_dim: int, init: float) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.full((size,), float(init)))
        self.channel_dim = channel_dim
        self.tau = 1.0
        self.mode = "soft"

    def gate(self) -> torch.Tensor:
        if self.mode == "dense":
            return torch.ones_like(self.m)
        hard = (self.m >= 0).to(self.m.dtype)
        if self.mode == "hard":
            return hard
        soft = torch.sigmoid(self.m / self.tau)
        return hard + soft - soft.detach()

    def keep(self) -> torch.Tensor:
        return self.m.detach() >= 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate().to(x.dtype)
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return x * g.view(shape)


class BottleneckTap(nn.Module):
    """Identity that remembers the last z it saw (the input of the classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.z: torch.Tensor | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.z = z
        return z


class GateControls:
    """What the loop needs from any gated model, whatever backend applies the gates.

    Subclasses provide ``gates`` (an ``nn.ModuleList`` of :class:`UnitGate`, in unit order)
    and ``units`` (the :class:`UnitGraph`).
    """

    gates: nn.ModuleList
    units: UnitGraph

    def mask_parameters(self) -> list[nn.Parameter]:
        return [g.m for g in self.gates]

    def set_tau(self, tau: float) -> None:
        for g in self.gates:
            g.tau = tau

    def set_mode(self, mode: str) -> None:
        for g in self.gates:
            g.mode = mode

    def keep_masks(self) -> list[torch.Tensor]:
        return [g.keep().cpu() for g in self.gates]

    def load_keep_masks(self, masks: list[torch.Tensor], margin: float = 0.0) -> None:
        """Set m so that the hard gate equals ``masks`` (used for resume and best-mask restore)."""
        with torch.no_grad():
            for g, keep in zip(self.gates, masks):
                g.m.copy_(torch.where(keep.to(g.m.device), margin, -1.0))

    def units_kept(self) -> int:
        return int(sum(int(g.keep().sum()) for g in self.gates))


class GatedModel(GateControls, nn.Module):
    """A frozen model with one gate per unit layer; only the gates' ``m`` are trainable."""

    def __init__(self, gm: fx.GraphModule, units: UnitGraph, init: float = 0.0) -> None:
        super().__init__()
        self.units = units
        self.net = copy.deepcopy(gm)
        for tensor in list(self.net.parameters()) + list(self.net.buffers()):
            tensor.requires_grad_(False)
        self.gates = nn.ModuleList(UnitGate(u.size, u.channel_dim, init) for u in units.units)
        self.tap = BottleneckTap()
        self._insert()

    def _insert(self) -> None:
        graph = self.net.graph
        by_name = {n.name: n for n in graph.nodes}
        for i, (unit, gate) in enumerate(zip(self.units.units, self.gates)):
            self._wrap(graph, by_name[unit.gate_after], f"{GATE_PREFIX}{i}", gate)
        self._wrap(graph, by_name[self.units.bottleneck_node], TAP_NAME, self.tap)
        graph.lint()
        self.net.recompile()

    def _wrap(self, graph: fx.Graph, target: fx.Node, name: str, module: nn.Module) -> None:
        self.net.add_submodule(name, module)
        with graph.inserting_after(target):
            wrapped = graph.call_module(name, (target,))
        target.replace_all_uses_with(wrapped, delete_user_cb=lambda user: user is not wrapped)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = first_output(self.net(x))
        z = self.tap.z
        assert z is not None
        return logits, z.flatten(1)

