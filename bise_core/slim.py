"""Physically remove pruned channels from a frozen FX graph, where that is provably exact.

The *masked* model zeroes, for every pruned unit, its ``zero_params`` rows (the BN affine
rows for conv->BN pairs, else the layer's own weight/bias rows), so a pruned channel is
exactly 0 at ``unit.gate_after``. Slimming drops such a channel from the producer (weight
and bias rows, plus its own BN's affine rows and running statistics) and the matching input
slice from every consumer. That is exact when, from ``gate_after`` on, the channel only
flows through ops that map a zero channel to a zero channel without mixing channels
(relu, gelu, pooling over other dims, dropout in eval, flatten of [N,C,1,1], ...) into
convolutions (``groups == 1``) or linear layers, where a zero input contributes nothing.
Anything else (residual adds, concatenation, reshapes, depthwise convs, a foreign
batch norm, ``sigmoid`` whose f(0) != 0, the graph output...) keeps the unit dense: its
zeroed parameters stay, so the slim model still computes exactly the masked model.

The graph itself is not rewritten: only tensors change shape, so the generated code and
every get_attr name stay the same (the slim graph saves like any other).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils.flop_counter import FlopCounterMode

from bise_core.models import fetch_attr, first_output
from bise_core.units import BATCH_NORM_OPS, CONV_OPS, LINEAR_OPS, UnitGraph, op_name

# Unary ops that act per element, with f(0) == 0 (so a zero channel stays zero). Keyed by
# ATen overload-packet name; in-place variants included.
_ZERO_PRESERVING = {
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "hardtanh", "hardtanh_",
    "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_",
    "hardswish", "hardswish_", "mish", "mish_", "softshrink", "hardshrink",
}
# Identity in inference (``freeze_for_inference`` sets training=False) or plain copies/views
# that keep the layout.
_IDENTITY = {
    "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
    "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_", "clone",
    "contiguous", "detach", "detach_", "alias", "lift_fresh_copy",
}
# Pooling over the last k dims; the channel must sit before them.
_POOL_DIMS = {
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3,
    "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3,
    "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3,
    "_adaptive_avg_pool2d": 2, "_adaptive_avg_pool3d": 3,
}
# Pooling ops that return (values, indices): only ``getitem(., 0)`` may be used downstream.
_POOL_WITH_INDICES = {
    "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3,
    "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3,
}
_REDUCTIONS = {"mean", "sum"}  # over explicit dims that do not include the channel
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class _Unsafe(Exception):
    """The unit's channels reach something slimming cannot follow exactly."""


@dataclass
class _Plan:
    """For one unit: which tensor dims to index, and which nodes' metadata go stale."""

    slices: list[tuple[str, int]] = field(default_factory=list)  # (get_attr target, dim)
    touched: list[fx.Node] = field(default_factory=list)


def slim_graph(
    gm: fx.GraphModule,
    units: UnitGraph,
    masks: list[torch.Tensor],
    example_input: torch.Tensor | None = None,
) -> tuple[fx.GraphModule, list[str]]:
    """Return a new GraphModule with pruned channels removed wherever provably exact.

    ``masks[i]`` (bool, True = kept) belongs to ``units.units[i]``. ``gm`` may be the dense
    or the masked model: the copy first gets every pruned unit's ``zero_params`` rows zeroed
    (a no-op on a masked graph), so the result always computes the masked model. Shapes for
    ``flatten``/``mean`` come from ``node.meta['val']``; where those are missing or symbolic
    and ``example_input`` is given, a ``ShapeProp`` run supplies them, else such a unit stays
    dense. Returns the slim graph and the names of the layers that lost channels.
    """
    if len(masks) != len(units.units):
        raise ValueError(f"{len(masks)} masks for {len(units.units)} units")
    out = copy.deepcopy(gm)
    shapes = _Shapes(out, example_input)
    nodes = {n.name: n for n in out.graph.nodes}
    attr_users = _attr_users(out.graph)

    keeps = []
    for unit, mask in zip(units.units, masks):
        keep = torch.as_tensor(mask).to(device="cpu", dtype=torch.bool).flatten()
        if keep.numel() != unit.size:
            raise ValueError(f"mask of {unit.name} has {keep.numel()} entries for {unit.size} units")
        keeps.append(keep)
    with torch.no_grad():  # bake the mask in: dense units stay exact, kept-for-shape channels are 0
        for unit, keep in zip(units.units, keeps):
            for name in unit.zero_params:
                tensor = fetch_attr(out, name)
                tensor[~keep.to(tensor.device)] = 0

    per_target: dict[str, dict[int, torch.Tensor]] = {}
    touched: set[fx.Node] = set()
    slimmed: list[str] = []
    for unit, keep in zip(units.units, keeps):
        if bool(keep.all()):
            continue
        try:
            plan = _plan_unit(out, unit.node, unit.gate_after, nodes, attr_users, shapes)
        except _Unsafe:
            continue
        index = torch.nonzero(keep).flatten()
        if index.numel() == 0:
            index = torch.zeros(1, dtype=torch.long)  # keep one (zeroed) channel: shapes stay valid
        for target, dim in plan.slices:
            dims = per_target.setdefault(target, {})
            if dim in dims and not torch.equal(dims[dim], index):
                raise RuntimeError(f"conflicting slices of {target} along dim {dim}")
            dims[dim] = index
        touched.update(plan.touched)
        slimmed.append(unit.name)

    with torch.no_grad():
        for target, dims in per_target.items():
            tensor = fetch_attr(out, target)
            for dim, index in sorted(dims.items()):
                tensor = tensor.index_select(dim, index.to(tensor.device))
            _assign(out, target, tensor.contiguous())
    for node in touched:  # shapes changed: stale metadata is worse than none
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)
    out.graph.lint()
    out.recompile()
    return out, slimmed


# ----------------------------------------------------------------------------- planning


def _plan_unit(
    gm: fx.GraphModule,
    node_name: str,
    gate_name: str,
    nodes: dict[str, fx.Node],
    attr_users: dict[str, set[fx.Node]],
    shapes: "_Shapes",
) -> _Plan:
    plan = _Plan()
    producer, gate = nodes[node_name], nodes[gate_name]
    name = op_name(producer)
    if name in CONV_OPS:
        if _conv_transposed(producer) or _conv_groups(producer) != 1:
            raise _Unsafe("grouped/transposed producer")
    elif name not in LINEAR_OPS:
        raise _Unsafe("not a conv/linear")
    weight, bias = _arg(producer, 1, "weight"), _arg(producer, 2, "bias")
    _own(plan, weight, 0, producer, attr_users, required=True)
    _own(plan, bias, 0, producer, attr_users)
    plan.touched.append(producer)

    if gate is not producer:  # conv -> own BN (-> getitem 0 for tuple-returning variants)
        bn = gate if op_name(gate) in BATCH_NORM_OPS else gate.args[0]
        if not (isinstance(bn, fx.Node) and op_name(bn) in BATCH_NORM_OPS and bn.args[0] is producer):
            raise _Unsafe("unexpected gate node")
        if list(producer.users) != [bn]:
            raise _Unsafe("producer output used elsewhere")
        for index, arg_name in ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")):
            _own(plan, _arg(bn, index, arg_name), 0, bn, attr_users)
        if bn is not gate:
            for user in bn.users:
                if user is not gate and user.users:
                    raise _Unsafe("batch norm side outputs used")
        plan.touched.extend({bn, gate})

    rank = shapes.rank(gate)
    if name in CONV_OPS:
        cneg = -(fetch_attr(gm, str(weight.target)).dim() - 1)  # channel position, from the end
    else:
        cneg = -1
    if rank is not None and rank + cneg < 0:
        raise _Unsafe("rank too small")
    _follow(gm, gate, cneg, plan, attr_users, shapes)
    return plan


def _follow(
    gm: fx.GraphModule,
    node: fx.Node,
    cneg: int,
    plan: _Plan,
    attr_users: dict[str, set[fx.Node]],
    shapes: "_Shapes",
) -> None:
    """Check every use of ``node`` (whose channel sits at ``cneg``) and record consumer slices."""
    if not node.users:
        return
    for user in node.users:
        if user.op == "output":
            raise _Unsafe("reaches the graph output")
        name = op_name(user)
        if name in CONV_OPS:
            _consume(gm, user, node, cneg, plan, attr_users, conv=True)
            continue
        if name in LINEAR_OPS:
            _consume(gm, user, node, cneg, plan, attr_users, conv=False)
            continue
        if name in {"sym_size", "size"}:
            _check_size_read(user, node, cneg, shapes)
            continue
        if user.all_input_nodes != [node] or user.args[:1] != (node,):
            raise _Unsafe(f"{user.name} mixes the channel with other tensors")
        if name in _ZERO_PRESERVING:
            next_cneg = cneg
        elif name in _IDENTITY:
            if "dropout" in name and _arg(user, 2, "train", False) is not False:
                raise _Unsafe("dropout in training mode")
            next_cneg = cneg
        elif name in _POOL_DIMS or name in _POOL_WITH_INDICES:
            pooled = _POOL_DIMS.get(name) or _POOL_WITH_INDICES[name]
            if -cneg <= pooled:
                raise _Unsafe("pooling over the channel dim")
            next_cneg = cneg
        elif name in _REDUCTIONS:
            next_cneg = _reduce(user, node, cneg, shapes)
        elif name == "flatten":
            next_cneg = _flatten(user, node, cneg, shapes)
        else:
            raise _Unsafe(f"unsupported op {name or user.op} ({user.name})")
        plan.touched.append(user)
        if name in _POOL_WITH_INDICES:
            for item in user.users:
                if item.op != "call_function" or item.target is not operator.getitem:
                    raise _Unsafe("tuple output used directly")
                if item.args[1] == 0:
                    plan.touched.append(item)
                    _follow(gm, item, next_cneg, plan, attr_users, shapes)
                elif item.users:
                    raise _Unsafe("pooling indices used")
        else:
            _follow(gm, user, next_cneg, plan, attr_users, shapes)


def _consume(
    gm: fx.GraphModule,
    user: fx.Node,
    node: fx.Node,
    cneg: int,
    plan: _Plan,
    attr_users: dict[str, set[fx.Node]],
    *,
    conv: bool,
) -> None:
    if _arg(user, 0, "input") is not node:
        raise _Unsafe(f"{user.name} uses the channel as a parameter")
    weight = _arg(user, 1, "weight")
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        raise _Unsafe(f"{user.name} weight is computed")
    others = [n for n in user.all_input_nodes if n is not weight and n.op != "get_attr"]
    if others != [node]:
        raise _Unsafe(f"{user.name} reads the channel twice")
    if conv:
        if _conv_transposed(user) or _conv_groups(user) != 1:
            raise _Unsafe("grouped/transposed consumer")
        if cneg != -(fetch_attr(gm, str(weight.target)).dim() - 1):
            raise _Unsafe("channel is not the conv input channel")
    elif cneg != -1:
        raise _Unsafe("channel is not the linear input feature")
    _own(plan, weight, 1, user, attr_users, required=True)


def _own(
    plan: _Plan,
    arg: Any,
    dim: int,
    owner: fx.Node,
    attr_users: dict[str, set[fx.Node]],
    *,
    required: bool = False,
) -> None:
    """Record slicing ``arg`` (a get_attr node) along ``dim``; it must be read by ``owner`` only."""
    if arg is None:
        if required:
            raise _Unsafe(f"{owner.name} has no weight")
        return
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        raise _Unsafe(f"{owner.name} reads a computed tensor")
    target = str(arg.target)
    if attr_users.get(target, set()) != {owner}:
        raise _Unsafe(f"{target} is shared")
    plan.slices.append((target, dim))
    plan.touched.append(arg)


def _reduce(user: fx.Node, node: fx.Node, cneg: int, shapes: "_Shapes") -> int:
    overload = getattr(user.target, "_overloadname", "")
    if overload not in {"dim", "dim_IntList"}:
        raise _Unsafe("reduction over all dims")
    rank = shapes.rank(node)
    dims = _arg(user, 1, "dim")
    if rank is None or dims is None:
        raise _Unsafe("unknown reduction dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        raise _Unsafe("reduction over all dims")
    if not all(isinstance(d, int) for d in dims):
        raise _Unsafe("symbolic reduction dims")
    norm = {d % rank for d in dims}
    cpos = rank + cneg
    if cpos in norm:
        raise _Unsafe("reduction over the channel dim")
    if _arg(user, 2, "keepdim", False):
        return cneg
    return cneg + sum(1 for d in norm if d > cpos)


def _flatten(user: fx.Node, node: fx.Node, cneg: int, shapes: "_Shapes") -> int:
    if getattr(user.target, "_overloadname", "") != "using_ints":
        raise _Unsafe("flatten overload")
    rank = shapes.rank(node)
    if rank is None or rank == 0:
        raise _Unsafe("unknown rank before flatten")
    start = _arg(user, 1, "start_dim", 0) % rank
    end = _arg(user, 2, "end_dim", -1) % rank
    cpos = rank + cneg
    if end < start:
        raise _Unsafe("empty flatten range")
    new_rank = rank - (end - start)
    if end < cpos or start > cpos:
        new_cpos = cpos - (end - start if end < cpos else 0)
    elif start == cpos and shapes.dims_are_one(node, range(cpos + 1, end + 1)):
        new_cpos = cpos  # [N, C, 1, 1] -> [N, C]
    else:
        raise _Unsafe("flatten merges the channel with other dims")
    return new_cpos - new_rank


def _check_size_read(user: fx.Node, node: fx.Node, cneg: int, shapes: "_Shapes") -> None:
    dim = _arg(user, 1, "dim")
    rank = shapes.rank(node)
    if not isinstance(dim, int) or rank is None or dim % rank == rank + cneg:
        raise _Unsafe("reads the channel count")


# ------------------------------------------------------------------------------ helpers


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _conv_groups(node: fx.Node) -> int:
    if op_name(node) in {"convolution", "_convolution"}:
        return int(_arg(node, 8, "groups", 1))
    return int(_arg(node, 6, "groups", 1))


def _conv_transposed(node: fx.Node) -> bool:
    return op_name(node) in {"convolution", "_convolution"} and bool(_arg(node, 6, "transposed", False))


def _attr_users(graph: fx.Graph) -> dict[str, set[fx.Node]]:
    users: dict[str, set[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            bucket = users.setdefault(str(node.target), set())
            bucket.update(node.users)
            if not node.users:
                bucket.add(node)  # read but unused: harmless, but not "owned" by a layer
    return users


class _Shapes:
    """Static shapes from ``meta['val']``; where a needed dim is symbolic or missing, one
    ``ShapeProp`` run on ``example_input`` (if given) fills ``meta['tensor_meta']``."""

    def __init__(self, gm: fx.GraphModule, example_input: torch.Tensor | None) -> None:
        self.gm = gm
        self.example_input = example_input
        self._propagated = False

    def rank(self, node: fx.Node) -> int | None:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.dim()
        shape = self._propagated_shape(node)
        return None if shape is None else len(shape)

    def dims_are_one(self, node: fx.Node, dims: range) -> bool:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and all(is_concrete_int(val.shape[d]) for d in dims):
            return all(int(val.shape[d]) == 1 for d in dims)
        shape = self._propagated_shape(node)
        return shape is not None and all(shape[d] == 1 for d in dims)

    def _propagated_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        self._propagate()
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            return tuple(int(d) for d in meta.shape)
        return None

    def _propagate(self) -> None:
        if self._propagated or self.example_input is None:
            return
        self._propagated = True
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(self.example_input)
        except Exception:  # no shapes: units that need them stay dense
            pass


def _assign(root: nn.Module, qualified: str, value: torch.Tensor) -> None:
    """Replace the tensor at ``qualified`` (parameter, buffer or plain attribute) by ``value``."""
    *path, leaf = qualified.split(".")
    owner: Any = root
    for part in path:
        owner = getattr(owner, part)
    if isinstance(owner, nn.Module) and leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad))
    elif isinstance(owner, nn.Module) and leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)


# ---------------------------------------------------------------------------- counting


def count_params(gm: nn.Module) -> int:
    """Parameters plus buffers and get_attr constants, minus BN running statistics.

    Tensors are counted once even when reachable under several names.
    """
    seen: set[int] = set()
    total = 0

    def add(name: str, tensor: torch.Tensor) -> None:
        nonlocal total
        if name.rsplit(".", 1)[-1] in _RUNNING_STATS or id(tensor) in seen:
            return
        seen.add(id(tensor))
        total += tensor.numel()

    for name, tensor in gm.named_parameters():
        add(name, tensor)
    for name, tensor in gm.named_buffers():
        add(name, tensor)
    if isinstance(gm, fx.GraphModule):
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                try:
                    add(str(node.target), fetch_attr(gm, str(node.target)))
                except (AttributeError, TypeError):
                    pass
    return total


def count_flops(gm: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward on a single sample (``example_input[:1]``)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        first_output(gm(example_input[:1]))
    return int(counter.get_total_flops())
