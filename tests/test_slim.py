"""Slimming: pruned channels physically removed where exact, same logits as the masked model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import fx, nn

from bise_core.models import fetch_attr, load_model, quiet_torch, save_graph_module
from bise_core.slim import count_flops, count_params, slim_graph
from bise_core.units import UnitGraph, find_units


class ConvBN(nn.Module):
    """conv->BN->ReLU->maxpool->conv->BN->ReLU->adaptive_avg_pool->flatten->linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvNoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(nn.functional.leaky_relu(self.c1(x)), 2)
        x = self.drop(torch.relu(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(20, 32), nn.Linear(32, 24), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


class Block(nn.Module):
    """x[B,T,D] -> LN -> Linear(D,4D) -> GELU -> Linear(4D,D) + x -> mean over T -> Linear."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ff2(nn.functional.gelu(self.ff1(self.ln(x))))
        return self.head(x.mean(1))


class Unslimmable(nn.Module):
    """Each unit hits one thing slimming must not cross."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)  # -> sigmoid: sigmoid(0) != 0
        self.b = nn.Conv2d(8, 8, 3, padding=1)  # -> relu -> depthwise conv
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # grouped producer
        self.e = nn.Conv2d(8, 6, 1)  # -> cat
        self.c = nn.Conv2d(3, 6, 1)  # -> cat
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(torch.relu(self.b(torch.sigmoid(self.a(x)))))
        z = torch.cat([self.e(torch.relu(y)), self.c(x)], dim=1)
        return self.fc(z.mean(dim=(2, 3)))


def _resnet() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


RESNET_SLIM = [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]

CASES = {
    # name: (factory, input shape, archive format, expected slimmed layers)
    "conv_bn": (ConvBN, (4, 3, 16, 16), "torchscript", ["c1", "c2"]),
    "conv_nobn": (ConvNoBN, (4, 3, 16, 16), "export", ["c1", "c2"]),
    "mlp": (MLP, (4, 20), "torchscript", ["l1", "l2"]),
    "resnet18": (_resnet, (2, 3, 32, 32), "torchscript", RESNET_SLIM),
    "block": (Block, (4, 5, 16), "export", ["ff1"]),
    "block_ts": (Block, (4, 5, 16), "torchscript", ["ff1"]),  # symbolic T: mean dims from rank
}


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial running stats, so BN slicing is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _load(model: nn.Module, x: torch.Tensor, fmt: str, path: Path) -> fx.GraphModule:
    model.eval()
    with quiet_torch():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.script(model), str(path))
        else:
            with path.open("wb") as handle:
                torch.export.save(torch.export.export(model, (x,)), handle)
    return load_model(path, x).graph_module


def _masks(units: UnitGraph, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for unit in units.units:
        keep = torch.rand(unit.size, generator=gen) < 0.5
        keep[0], keep[1] = True, False  # every layer both keeps and prunes something
        masks.append(keep)
    return masks


def _masked(gm: fx.GraphModule, units: UnitGraph, masks: list[torch.Tensor]) -> fx.GraphModule:
    out = copy.deepcopy(gm)
    with torch.no_grad():
        for unit, keep in zip(units.units, masks):
            for name in unit.zero_params:
                fetch_attr(out, name)[~keep] = 0
    return out


def _logits(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gm(x)


def _assert_same(a: fx.GraphModule, b: fx.GraphModule, shape: tuple[int, ...], batches=(1, 3, 5)) -> None:
    gen = torch.Generator().manual_seed(123)
    for batch in batches:
        x = torch.randn((batch, *shape[1:]), generator=gen)
        ya, yb = _logits(a, x), _logits(b, x)
        assert ya.shape == yb.shape
        assert torch.allclose(ya, yb, atol=1e-5), (ya - yb).abs().max()


@pytest.mark.parametrize("case", list(CASES))
def test_slim_matches_masked_model(case: str, tmp_path: Path) -> None:
    factory, shape, fmt, expected = CASES[case]
    torch.manual_seed(0)
    model = factory()
    _randomize_bn(model, 1)
    x = torch.randn(shape)
    gm = _load(model, x, fmt, tmp_path / f"{case}.pt")
    units = find_units(gm)
    masks = _masks(units, seed=2)
    masked = _masked(gm, units, masks)
    before = {k: v.clone() for k, v in masked.state_dict().items()}

    slim, names = slim_graph(masked, units, masks, example_input=x)

    assert names == expected
    assert all(torch.equal(before[k], v) for k, v in masked.state_dict().items())  # input untouched
    _assert_same(masked, slim, shape, batches=(1, 3) if case == "resnet18" else (1, 3, 5))
    assert count_params(slim) < count_params(masked)
    assert count_flops(slim, x) < count_flops(masked, x)
    # slimmed layers really lost their pruned channels
    by_name = {u.name: (u, m) for u, m in zip(units.units, masks)}
    for name in names:
        unit, keep = by_name[name]
        assert fetch_attr(slim, f"{name}.weight").shape[0] == int(keep.sum()) < unit.size

    for out_fmt in ("torchscript", "export"):
        path = tmp_path / f"slim_{out_fmt}.pt"
        save_graph_module(slim, out_fmt, x, path)
        reloaded = load_model(path, x).graph_module
        _assert_same(masked, reloaded, shape, batches=(shape[0] + 3,))


def test_fully_pruned_layer_keeps_one_zero_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 20)
    gm = _load(MLP(), x, "export", tmp_path / "mlp.pt")
    units = find_units(gm)
    masks = [torch.zeros(units.units[0].size, dtype=torch.bool), torch.ones(units.units[1].size, dtype=torch.bool)]
    masked = _masked(gm, units, masks)
    dense_before = count_params(gm), fetch_attr(gm, "l1.weight").clone()
    slim, names = slim_graph(gm, units, masks)  # the dense graph: slim_graph bakes the mask in
    assert count_params(gm) == dense_before[0] and torch.equal(fetch_attr(gm, "l1.weight"), dense_before[1])
    assert names == ["l1"]  # l2 keeps everything: nothing to slim
    assert fetch_attr(slim, "l1.weight").shape == (1, 20)
    assert fetch_attr(slim, "l2.weight").shape == (24, 1)
    _assert_same(masked, slim, (3, 20))


def test_shapes_from_shape_prop_when_meta_is_missing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    gm = _load(ConvBN(), x, "export", tmp_path / "cnn.pt")
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
    units = find_units(gm)
    masks = _masks(units, seed=4)
    masked = _masked(gm, units, masks)
    # without shapes, the flatten after c2 cannot be proven [N,C,1,1]: c2 stays dense
    slim, names = slim_graph(masked, units, masks)
    assert names == ["c1"]
    _assert_same(masked, slim, tuple(x.shape))
    slim, names = slim_graph(masked, units, masks, example_input=x)
    assert names == ["c1", "c2"]
    _assert_same(masked, slim, tuple(x.shape))


def test_unsafe_flows_stay_dense(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gm = _load(Unslimmable(), x, "export", tmp_path / "u.pt")
    units = find_units(gm)
    assert [u.name for u in units.units] == ["a", "b", "dw", "e", "c"]
    masks = _masks(units, seed=3)
    masked = _masked(gm, units, masks)
    slim, names = slim_graph(masked, units, masks, example_input=x)
    assert names == []
    assert count_params(slim) == count_params(masked)
    _assert_same(masked, slim, tuple(x.shape))


def test_mask_validation(tmp_path: Path) -> None:
    x = torch.randn(2, 20)
    gm = _load(MLP(), x, "export", tmp_path / "mlp.pt")
    units = find_units(gm)
    with pytest.raises(ValueError):
        slim_graph(gm, units, [torch.ones(32, dtype=torch.bool)])
    with pytest.raises(ValueError):
        slim_graph(gm, units, [torch.ones(31, dtype=torch.bool), torch.ones(24, dtype=torch.bool)])
