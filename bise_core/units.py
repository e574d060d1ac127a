"""Find the prunable units and the encoder/classifier split on a model's FX graph.

Works on graphs of ATen ops, so it does not care whether the model was scripted, traced or
exported, nor which library defined it. A *unit* is an output channel of a convolution or an
output feature of a linear layer upstream of the classifier; the classifier is the last
``linear`` the logits flow out of, and its input is the bottleneck ``z``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import fx

from bise_core.errors import BiseInputError
from bise_core.models import fetch_attr

CONV_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
LINEAR_OPS = {"linear"}
BATCH_NORM_OPS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm"}


def op_name(node: fx.Node) -> str:
    """The ATen op name of a call_function node (``conv2d``), or '' for anything else."""
    if node.op != "call_function":
        return ""
    return getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")


@dataclass
class Unit:
    """One layer's worth of prunable units.

    ``gate_after`` is the node whose output the gate multiplies: the BatchNorm output for
    conv->BN pairs (so a pruned channel is exactly zero), else the layer output.
    ``zero_params`` are the state tensors whose rows are zeroed to bake the mask in.
    """

    name: str
    kind: str
    node: str
    gate_after: str
    channel_dim: int
    size: int
    zero_params: list[str] = field(default_factory=list)


@dataclass
class UnitGraph:
    units: list[Unit]
    classifier: str
    classifier_node: str
    bottleneck_node: str
    num_classes: int

    @property
    def total_units(self) -> int:
        return sum(u.size for u in self.units)


def _attr_name(arg: object) -> str | None:
    return str(arg.target) if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _layer_name(weight_name: str) -> str:
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name


def find_units(
    gm: fx.GraphModule,
    *,
    classifier: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
) -> UnitGraph:
    """Discover units. ``classifier`` overrides the automatic choice by layer name
    (e.g. ``"fc"`` or ``"head.fc"``); ``include``/``exclude`` are regexes on layer names."""
    nodes = list(gm.graph.nodes)
    linear_nodes = [n for n in nodes if op_name(n) in LINEAR_OPS and _attr_name(n.args[1])]
    clf = _pick_classifier(gm, linear_nodes, classifier)
    z_node = clf.args[0]
    upstream = _ancestors(z_node)
    units: list[Unit] = []
    for node in nodes:
        if node not in upstream and node is not z_node:
            continue
        unit = _unit_for(gm, node)
        if unit is None:
            continue
        if include and not re.search(include, unit.name):
            continue
        if exclude and re.search(exclude, unit.name):
            continue
        units.append(unit)
    if not units:
        raise BiseInputError(
            "no prunable unit (convolution or linear layer) found before the classifier "
            f"'{_layer_name(str(clf.args[1].target))}'",
            param="model",
        )
    weight = fetch_attr(gm, str(clf.args[1].target))
    return UnitGraph(
        units=units,
        classifier=_layer_name(str(clf.args[1].target)),
        classifier_node=clf.name,
        bottleneck_node=z_node.name,
        num_classes=int(weight.shape[0]),
    )


def _pick_classifier(gm: fx.GraphModule, linear_nodes: list[fx.Node], wanted: str | None) -> fx.Node:
    if wanted:
        for node in linear_nodes:
            if _layer_name(str(node.args[1].target)) == wanted:
                return node
        names = [_layer_name(str(n.args[1].target)) for n in linear_nodes]
        raise BiseInputError(f"no linear layer named '{wanted}'; linear layers: {names}", param="classifier")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    feeding_output = _ancestors(output)
    candidates = [n for n in linear_nodes if n in feeding_output]
    if not candidates:
        raise BiseInputError(
            "could not find the classifier: no linear layer produces the logits "
            "(override with --classifier NAME)",
            param="model",
        )
    return candidates[-1]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return seen


def _unit_for(gm: fx.GraphModule, node: fx.Node) -> Unit | None:
    name = op_name(node)
    if name in CONV_OPS:
        if name in {"convolution", "_convolution"} and len(node.args) > 6 and node.args[6]:
            return None  # transposed convolution: output channels live on dim 1 of the weight
        kind, channel_dim = "conv", 1
    elif name in LINEAR_OPS:
        kind, channel_dim = "linear", -1
    else:
        return None
    weight_name = _attr_name(node.args[1])
    if weight_name is None:
        return None
    size = int(fetch_attr(gm, weight_name).shape[0])
    bias_name = _attr_name(node.args[2]) if len(node.args) > 2 else None
    gate_after, zero = node.name, [weight_name] + ([bias_name] if bias_name else [])
    bn = _following_batch_norm(node)
    if bn is not None:
        gate_after, zero = bn
    return Unit(
        name=_layer_name(weight_name),
        kind=kind,
        node=node.name,
        gate_after=gate_after,
        channel_dim=channel_dim,
        size=size,
        zero_params=zero,
    )


def _following_batch_norm(node: fx.Node) -> tuple[str, list[str]] | None:
    """If the layer's only consumer is an affine BatchNorm, gate its output instead."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if op_name(user) not in BATCH_NORM_OPS or user.args[0] is not node:
        return None
    bn_weight, bn_bias = _attr_name(user.args[1]), _attr_name(user.args[2])
    if not (bn_weight and bn_bias):
        return None  # affine=False: cannot bake a zero into it, keep gating the conv itself
    out = user
    if op_name(user) != "batch_norm":  # tuple-returning variants: gate getitem(bn, 0)
        getitems = [u for u in user.users if getattr(u.target, "__name__", "") == "getitem" and u.args[1] == 0]
        if len(getitems) != 1:
            return None
        out = getitems[0]
    return out.name, [bn_weight, bn_bias]
