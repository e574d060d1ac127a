"""The TorchScript fallback: units, gated forward and counts on *reloaded* ScriptModules.

Models are scripted, saved and reloaded with ``torch.jit.load`` because that is what users
upload, and a loaded ScriptModule is what refuses hooks and ``functional_call``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bise_core import zoo
from bise_core.errors import BiseInputError
from bise_core.evaluate import predict
from bise_core.models import quiet_torch
from bise_core.script_backend import ScriptGated, count_flops_script, find_script_units
from bise_core.slim import count_params
from bise_core.units import UnitGraph


def _randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial BN affine params and stats, so zeroing only the weight would not suffice."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)


def _save(model: nn.Module, path: Path) -> Path:
    with quiet_torch():
        torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


def _load(path: Path) -> torch.jit.ScriptModule:
    with quiet_torch():
        module = torch.jit.load(str(path))
    return module.eval()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("script_backend")
    torch.manual_seed(0)
    transformer = zoo.TinyTransformer(image_size=16, patch=4)
    with torch.no_grad():
        transformer.pos.normal_()
    cnn = zoo.SimpleCNN(width=8)
    _randomise_batch_norm(cnn)
    return {"transformer": _save(transformer, root / "transformer.pt"), "cnn": _save(cnn, root / "cnn.pt")}


X = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _gated(path: Path) -> tuple[torch.jit.ScriptModule, ScriptGated]:
    scripted = _load(path)
    units = find_script_units(scripted, X[:2])
    return scripted, ScriptGated(scripted, units, X[:2])


def _masked_copy(path: Path, units: UnitGraph, masks: list[torch.Tensor]) -> torch.jit.ScriptModule:
    """The archive with pruned units' zero_params rows set to 0, as ``save_masked`` does."""
    module = _load(path)
    state = module.state_dict()
    with torch.no_grad():
        for unit, keep in zip(units.units, masks):
            for name in unit.zero_params:
                state[name][~keep] = 0
    return module


def test_transformer_units_skip_attention_and_classifier(archives):
    units = find_script_units(_load(archives["transformer"]), X[:2])
    assert [u.name for u in units.units] == ["embed", "ff1", "ff2"]
    assert units.classifier == "head" and units.num_classes == 10
    ff1 = units.units[1]
    assert (ff1.kind, ff1.size, ff1.gate_after, ff1.channel_dim) == ("linear", 128, "ff1", 0)
    assert ff1.zero_params == ["ff1.weight", "ff1.bias"]
    assert units.units[0].kind == "conv" and units.units[0].size == 32


def test_cnn_convs_are_paired_with_their_batch_norm(archives):
    units = find_script_units(_load(archives["cnn"]), X[:2])
    assert units.classifier == "fc"
    assert [(u.name, u.gate_after, u.size) for u in units.units] == [
        ("features.0", "features.1", 8), ("features.4", "features.5", 16), ("features.8", "features.9", 32)
    ]
    assert units.units[0].zero_params == ["features.1.weight", "features.1.bias"]


def test_classifier_override_and_filters(archives):
    scripted = _load(archives["transformer"])
    assert [u.name for u in find_script_units(scripted, X[:2], exclude="embed").units] == ["ff1", "ff2"]
    assert [u.name for u in find_script_units(scripted, X[:2], include="^ff").units] == ["ff1", "ff2"]
    with pytest.raises(BiseInputError, match="no linear layer named"):
        find_script_units(scripted, X[:2], classifier="nope")
    with pytest.raises(BiseInputError, match="cannot locate the bottleneck"):
        # ff2 is a linear layer, but the model does not end with it
        ScriptGated(scripted, find_script_units(scripted, X[:2], classifier="ff2"), X[:2])


class _ScaledHead(nn.Module):
    """Something after the classifier: z cannot be read off the classifier's input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(12, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.relu(self.body(x))))


def test_model_not_ending_with_the_classifier_is_refused(tmp_path):
    scripted = _load(_save(_ScaledHead(), tmp_path / "scaled.pt"))
    x = torch.randn(2, 12)
    with pytest.raises(BiseInputError, match="cannot locate the bottleneck") as err:
        ScriptGated(scripted, find_script_units(scripted, x), x)
    assert err.value.param == "model"


@pytest.mark.parametrize("arch", ["transformer", "cnn"])
def test_dense_forward_is_the_model(archives, arch):
    scripted, gated = _gated(archives[arch])
    gated.set_mode("dense")
    with torch.no_grad():
        logits, z = gated(X)
        expected = scripted(X)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert z.shape == (len(X), scripted.state_dict()[f"{gated.units.classifier}.weight"].shape[1])


@pytest.mark.parametrize("arch", ["transformer", "cnn"])
def test_hard_mask_equals_zeroed_archive(archives, arch):
    _, gated = _gated(archives[arch])
    gen = torch.Generator().manual_seed(2)
    masks = [torch.rand(g.m.shape[0], generator=gen) < 0.6 for g in gated.gates]
    gated.load_keep_masks(masks)
    gated.set_mode("hard")
    assert gated.units_kept() == sum(int(m.sum()) for m in masks)
    assert all(torch.equal(a, b) for a, b in zip(gated.keep_masks(), masks))
    reference = _masked_copy(archives[arch], gated.units, masks)
    with torch.no_grad():
        logits, _ = gated(X)
        expected = reference(X)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    with torch.inference_mode():  # the evaluation path (predict runs under inference_mode)
        torch.testing.assert_close(gated(X)[0], expected, rtol=0, atol=1e-6)
    pred, z = predict(gated, X, batch_size=2, device="cpu")
    assert torch.equal(pred, expected.argmax(1)) and z.shape[0] == len(X)


@pytest.mark.parametrize("arch", ["transformer", "cnn"])
def test_soft_gradient_reaches_every_gate_and_no_weight(archives, arch):
    scripted, gated = _gated(archives[arch])
    gated.set_mode("dense")
    with torch.no_grad():  # let the JIT profile and optimise gradient-free runs first
        for _ in range(3):
            gated(X)
    with torch.inference_mode():
        gated.set_mode("hard")
        gated(X)
    gated.set_mode("soft")
    gated.set_tau(0.5)
    for _ in range(3):  # repeated: the optimised graph must still differentiate to the gates
        gated.zero_grad(set_to_none=True)
        logits, z = gated(X)
        (logits.square().mean() + z.square().mean()).backward()
        for gate in gated.gates:
            assert gate.m.grad is not None and bool(gate.m.grad.abs().sum() > 0)
    assert all(not p.requires_grad and p.grad is None for p in gated.net.parameters())
    assert [p for p in gated.parameters() if p.requires_grad] == gated.mask_parameters()
    assert all(p.requires_grad for p in scripted.parameters())  # the caller's module is untouched


@pytest.mark.parametrize("arch", ["transformer", "cnn"])
def test_state_is_restored_after_every_forward(archives, arch):
    _, gated = _gated(archives[arch])
    before = {k: v.clone() for k, v in gated.net.state_dict().items()}
    ids = {k: id(v) for k, v in gated.net.named_parameters()}
    gated.load_keep_masks([torch.arange(g.m.shape[0]) % 2 == 0 for g in gated.gates])
    for mode in ("soft", "hard", "dense"):
        gated.set_mode(mode)
        gated(X)[0].sum().backward() if mode == "soft" else gated(X)
    with torch.inference_mode():
        gated(X)
    gated.train()  # must not switch the network's BN/dropout to training behaviour
    assert not gated.net.training
    gated(X)
    after = gated.net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: id(v) for k, v in gated.net.named_parameters()} == ids


def test_device_and_dtype_moves_follow(archives):
    scripted, gated = _gated(archives["cnn"])
    gated.set_mode("dense")
    gated.double()
    with torch.no_grad():
        logits, z = gated(X.double())
    assert logits.dtype == z.dtype == torch.float64
    torch.testing.assert_close(logits.float(), scripted(X), rtol=1e-4, atol=1e-5)


def test_counts(archives):
    torch.manual_seed(0)
    eager = zoo.SimpleCNN(width=8).eval()
    scripted = _load(archives["cnn"])
    assert count_params(scripted) == sum(p.numel() for p in eager.parameters())
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        eager(X[:1])
    assert count_flops_script(scripted, X) == counter.get_total_flops() > 0
