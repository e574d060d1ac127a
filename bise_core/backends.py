"""Pick how gates are applied to a loaded model: FX graph insertion, or TorchScript fallback.

Most archives become an FX graph (gates are modules inserted after each unit's output and
the layer structure is known exactly, which also makes slimming possible). ScriptModules
the converter cannot handle are gated by reassigning their parameters on every forward.
Callers get one object with the same interface either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bise_core.gates import GateControls, GatedModel
from bise_core.models import LoadedModel
from bise_core.script_backend import ScriptGated, count_flops_script, find_script_units
from bise_core.units import UnitGraph, find_units


@dataclass
class Prepared:
    """A loaded model, its units, and a gated forward over it."""

    loaded: LoadedModel
    units: UnitGraph
    gated: GateControls

    @property
    def backend(self) -> str:
        return "fx" if self.loaded.graph_module is not None else "torchscript_parameters"


def prepare(
    loaded: LoadedModel,
    example: torch.Tensor,
    *,
    classifier: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    init: float = 0.0,
) -> Prepared:
    """Discover units and build the gated model on whichever backend ``loaded`` supports."""
    if loaded.graph_module is not None:
        units = find_units(loaded.graph_module, classifier=classifier, include=include, exclude=exclude)
        gated: GateControls = GatedModel(loaded.graph_module, units, init=init)
    else:
        assert loaded.scripted is not None
        units = find_script_units(loaded.scripted, example, classifier=classifier, include=include, exclude=exclude)
        gated = ScriptGated(loaded.scripted, units, example, init=init)
    return Prepared(loaded=loaded, units=units, gated=gated)


def dense_forward(loaded: LoadedModel, example: torch.Tensor, classifier: str) -> nn.Module:
    """A (logits, z) forward with every gate open: how any checkpoint is evaluated."""
    prepared = prepare(loaded, example, classifier=classifier)
    prepared.gated.set_mode("dense")
    assert isinstance(prepared.gated, nn.Module)
    return prepared.gated


def params_and_flops(loaded: LoadedModel, example: torch.Tensor) -> tuple[int, int | None]:
    from bise_core.slim import count_flops, count_params

    if loaded.graph_module is not None:
        return count_params(loaded.graph_module), count_flops(loaded.graph_module, example)
    assert loaded.scripted is not None
    return count_params(loaded.scripted), count_flops_script(loaded.scripted, example)
