"""BISE directly on a loaded TorchScript module, for models the FX path cannot convert.

``TS2EPConverter`` gives up on scripted models with data-dependent control flow
(``prim::If`` in ``nn.MultiheadAttention``, torchvision ViT/EfficientNet, ...), and hooks and
``torch.func.functional_call`` refuse loaded ScriptModules. What does work is reassigning a
parameter attribute of a loaded ScriptModule to a tensor that carries a gradient: the
interpreter reads attributes at run time, so ``conv.weight = w * g`` gates the conv's output
channels and the gradient reaches ``g``. Scaling a BatchNorm's weight *and* bias by ``g``
multiplies that BN's output by ``g``, so a gate of 0 zeroes the channel exactly, the same
thing that baking the mask into those rows of the state dict does.

Units are found on the module tree (``original_name`` of each submodule) instead of a graph,
so data flow is unknown: every conv/linear except the classifier (and attention internals)
is a unit, and the bottleneck ``z`` is obtained by temporarily replacing the classifier's
weight by an identity matrix, then checked against the model's own output.
"""

from __future__ import annotations

import copy
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bise_core.errors import BiseInputError
from bise_core.gates import GateControls, UnitGate
from bise_core.models import fetch_attr, first_output
from bise_core.units import Unit, UnitGraph

CONV_NAMES = {"Conv1d", "Conv2d", "Conv3d"}  # ConvTranspose*: output channels are weight dim 1
LINEAR_NAMES = {"Linear", "NonDynamicallyQuantizableLinear"}
BATCH_NORM_NAMES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
ATTENTION_NAMES = {"MultiheadAttention"}


def _kind(module: nn.Module) -> str | None:
    name = getattr(module, "original_name", type(module).__name__)
    return "conv" if name in CONV_NAMES else "linear" if name in LINEAR_NAMES else None


def _qualified(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _split(qualified: str) -> tuple[str, str]:
    owner, _, leaf = qualified.rpartition(".")
    return owner, leaf


def _model_output(scripted: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = first_output(scripted(example_input))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise BiseInputError(
            f"the model must return logits of shape [batch, classes]; got {getattr(out, 'shape', type(out).__name__)}",
            param="model",
        )
    return out


def find_script_units(
    scripted: nn.Module,
    example_input: torch.Tensor,
    *,
    classifier: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
) -> UnitGraph:
    """Units of a (loaded) ScriptModule, found on its module tree.

    Without a graph we cannot tell which layers feed the classifier, so every conv/linear
    except the classifier is a unit, skipping ``MultiheadAttention`` internals (its input
    projection is a raw parameter, not a layer). A conv is paired with the BatchNorm
    registered right after it when that BN is affine and has as many channels; the pairing
    is a guess, but scaling a BN's weight and bias is exact whatever layer precedes it, so a
    wrong guess only changes what a unit means, never the computation.
    """
    modules = list(scripted.named_modules())
    attention = [n for n, m in modules if getattr(m, "original_name", "") in ATTENTION_NAMES]

    def in_attention(name: str) -> bool:
        return any(name == a or name.startswith(f"{a}.") or a == "" for a in attention)

    linears = [(n, m) for n, m in modules if _kind(m) == "linear" and not in_attention(n)]
    clf_name, clf = _pick_classifier(linears, _model_output(scripted, example_input).shape[-1], classifier)
    units: list[Unit] = []
    for i, (name, module) in enumerate(modules):
        kind = _kind(module)
        if kind is None or name == clf_name or in_attention(name):
            continue
        if (include and not re.search(include, name)) or (exclude and re.search(exclude, name)):
            continue
        size = int(module.weight.shape[0])
        owner = name
        zero = [_qualified(name, "weight")] + ([_qualified(name, "bias")] if module.bias is not None else [])
        if kind == "conv" and i + 1 < len(modules):
            bn_name, bn = modules[i + 1]
            if (
                getattr(bn, "original_name", "") in BATCH_NORM_NAMES
                and bn.weight is not None
                and bn.bias is not None
                and int(bn.weight.shape[0]) == size
            ):
                owner, zero = bn_name, [_qualified(bn_name, "weight"), _qualified(bn_name, "bias")]
        units.append(Unit(name=name, kind=kind, node=name, gate_after=owner, channel_dim=0, size=size,
                          zero_params=zero))
    if not units:
        raise BiseInputError(
            f"no prunable unit (convolution or linear layer) found besides the classifier '{clf_name}'",
            param="model",
        )
    return UnitGraph(units=units, classifier=clf_name, classifier_node=clf_name, bottleneck_node=clf_name,
                     num_classes=int(clf.weight.shape[0]))


def _pick_classifier(
    linears: list[tuple[str, nn.Module]], out_dim: int, wanted: str | None
) -> tuple[str, nn.Module]:
    if wanted:
        for name, module in linears:
            if name == wanted:
                return name, module
        raise BiseInputError(
            f"no linear layer named '{wanted}'; linear layers: {[n for n, _ in linears]}", param="classifier"
        )
    candidates = [(n, m) for n, m in linears if int(m.weight.shape[0]) == out_dim]
    if not candidates:
        raise BiseInputError(
            f"could not find the classifier: no linear layer has {out_dim} outputs like the model "
            "(override with --classifier NAME)",
            param="model",
        )
    return candidates[-1]


class ScriptGated(GateControls, nn.Module):
    """The :class:`~bise_core.gates.GatedModel` interface over a loaded ScriptModule.

    Each forward reassigns every unit's ``zero_params`` attribute to ``original * gate`` and
    the classifier's weight/bias to identity/zeros (so the model returns ``z``), runs the
    module, and always puts the original tensors back (``finally``), so the ScriptModule is
    never left modified between calls. The logits are the classifier applied to ``z``.
    Not thread-safe: concurrent forwards on one instance would see each other's gates.
    """

    def __init__(self, scripted: nn.Module, units: UnitGraph, example_input: torch.Tensor,
                 init: float = 0.0) -> None:
        super().__init__()
        self.units = units
        with torch.no_grad():  # a ScriptModule deepcopy clones with autograd: non-leaf params
            self.net = copy.deepcopy(scripted)  # like GatedModel: the caller's module is untouched
        self.net.eval()
        for tensor in list(self.net.parameters()) + list(self.net.buffers()):
            tensor.requires_grad_(False)
        self.gates = nn.ModuleList(UnitGate(u.size, u.channel_dim, init) for u in units.units)
        self._names = sorted({p for u in units.units for p in u.zero_params}
                             | {_qualified(units.classifier, "weight"), _qualified(units.classifier, "bias")})
        self._originals: dict[str, torch.Tensor] = {}
        self._snapshot()
        self._check_bottleneck(example_input)

    def _snapshot(self) -> None:
        """Remember the tensors to restore; redone after ``.to()``/``.half()`` move them.

        References, not clones: nothing is ever written into them in place, so they stay the
        originals without doubling the model's memory.
        """
        values = {n: getattr(fetch_attr(self.net, _split(n)[0]), _split(n)[1]) for n in self._names}
        self._originals = {n: t for n, t in values.items() if t is not None}  # bias=False: nothing to swap

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> ScriptGated:
        super()._apply(fn, recurse)
        self._snapshot()
        return self

    def train(self, mode: bool = True) -> ScriptGated:
        """The network stays in eval mode: BN must not update running stats, dropout stays off."""
        super().train(mode)
        self.net.eval()
        return self

    def _check_bottleneck(self, example_input: torch.Tensor) -> None:
        modes = [g.mode for g in self.gates]
        self.set_mode("dense")
        try:
            with torch.no_grad():
                expected = _model_output(self.net, example_input)
                logits, _ = self(example_input)
            ok = logits.shape == expected.shape and torch.allclose(logits, expected, rtol=1e-4, atol=1e-5)
            problem = "its output differs from the classifier applied to its input"
        except Exception as exc:  # the identity head broke the model (shape checks, ...)
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        finally:
            for gate, mode in zip(self.gates, modes):
                gate.mode = mode
        if not ok:
            raise BiseInputError(
                f"cannot locate the bottleneck: the classifier '{self.units.classifier}' is not the last "
                f"operation of the model ({problem}); name the classifier with --classifier NAME",
                param="model",
            )

    def _set(self, name: str, value: torch.Tensor) -> None:
        owner, leaf = _split(name)
        setattr(fetch_attr(self.net, owner), leaf, value)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight_name = _qualified(self.units.classifier, "weight")
        bias_name = _qualified(self.units.classifier, "bias")
        weight, bias = self._originals[weight_name], self._originals.get(bias_name)
        try:
            for unit, gate in zip(self.units.units, self.gates):
                g = gate.gate()
                for name in unit.zero_params:
                    owner, leaf = _split(name)
                    current = getattr(fetch_attr(self.net, owner), leaf)  # composes shared params
                    shape = [-1] + [1] * (current.dim() - 1)
                    self._set(name, current * g.to(current.dtype).view(shape))
            eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
            self._set(weight_name, eye)
            if bias is not None:
                self._set(bias_name, torch.zeros(weight.shape[1], dtype=bias.dtype, device=bias.device))
            z = first_output(self.net(x))
        finally:
            for name, tensor in self._originals.items():
                self._set(name, tensor)
        return F.linear(z, weight, bias), z.flatten(1)


def count_flops_script(scripted: nn.Module, example_input: torch.Tensor) -> int | None:
    """FLOPs of one forward on a single sample; None when the counter cannot see the ops.

    ``FlopCounterMode`` is a dispatch mode, which the TorchScript interpreter's ops do go
    through on torch 2.14; the None fallback guards against builds where they do not.
    """
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            first_output(scripted(example_input[:1]))
    except Exception:
        return None
    flops = int(counter.get_total_flops())
    return flops or None
