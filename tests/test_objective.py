"""The pieces of the BISE objective and configuration, checked on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from bise_core.config import PRESETS, BiseConfig
from bise_core.evaluate import split_metrics
from bise_core.gates import UnitGate
from bise_core.objective import group_weights, majority_bias, soft_joint_mi


def test_group_weights_give_every_group_the_same_total():
    y = torch.tensor([0] * 90 + [0] * 10 + [1] * 5 + [1] * 95)
    b = torch.tensor([0] * 90 + [1] * 10 + [0] * 5 + [1] * 95)[:, None]
    w = group_weights(y, b)
    totals = [float(w[(y == c) & (b[:, 0] == v)].sum()) for c in (0, 1) for v in (0, 1)]
    assert max(totals) == pytest.approx(min(totals))
    assert float(w.mean()) == pytest.approx(1.0)


def test_soft_joint_mi_is_zero_when_independent_and_positive_when_not():
    b = torch.arange(4).repeat(50)
    uninformative = torch.zeros(200, 4)
    informative = torch.nn.functional.one_hot(b, 4).float() * 20
    assert float(soft_joint_mi(uninformative, b, 4)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_joint_mi(informative, b, 4)) == pytest.approx(1.0, abs=1e-3)  # normalised by log(4)


def test_majority_bias_per_class_and_attribute():
    y = torch.tensor([0, 0, 0, 1, 1])
    b = torch.tensor([[2, 1], [2, 0], [1, 0], [3, 3], [3, 1]])
    majority = majority_bias(y, b, 2)
    assert majority[0].tolist() == [2, 0] and majority[1, 0] == 3


def test_gate_is_hard_forward_and_soft_backward():
    gate = UnitGate(3, channel_dim=1, init=0.0)
    with torch.no_grad():
        gate.m.copy_(torch.tensor([0.2, -0.1, 0.0]))
    gate.tau = 0.5
    x = torch.ones(2, 3, 4, 4)
    out = gate(x)
    assert out[:, 1].abs().sum() == 0 and torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 2])
    out.sum().backward()
    soft = torch.sigmoid(gate.m.detach() / 0.5)
    expected = 32 * soft * (1 - soft) / 0.5  # d/dm of sum(x * sigmoid(m/tau)), STE
    torch.testing.assert_close(gate.m.grad, expected)


def test_metrics_on_a_known_confusion():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    b = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])[:, None]
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])  # predicts the bias
    m = split_metrics(pred, y, b, majority_bias(y, b, 2), [0.75], ["color"])
    assert m["accuracy"] == 0.75
    assert m["aligned_accuracy"] == 1.0 and m["conflicting_accuracy"] == 0.0
    assert m["unbiased_accuracy"] == 0.5 and m["worst_group_accuracy"] == 0.0
    assert m["bias_leakage"] == 0.75 and len(m["groups"]) == 4


def test_presets_fill_only_what_the_user_left_unset():
    cfg = BiseConfig(preset="paper", gamma=0.25)
    assert cfg.gamma == 0.25 and cfg.tau_decay == PRESETS["paper"]["tau_decay"]
    assert BiseConfig().schedule_epochs() == math.ceil(math.log(1e-3) / math.log(0.7))
    assert BiseConfig(preset="paper").schedule_epochs() == 100


@pytest.mark.parametrize("bad", [{"gamma": -1}, {"tau_decay": 1.0}, {"batch_size": 0}, {"nope": 1},
                                 {"tau_0": 0.01, "tau_min": 0.1}])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        BiseConfig(**bad)


def test_head_refresh_without_autograd_matches_torch_adam():
    """objective.train_heads' closed-form path (head_fit) = autograd + torch.optim.Adam, to rounding,
    drawing the same permutations (two heads of different widths, a last batch that is short)."""
    import copy

    import torch.nn.functional as F

    from bise_core.objective import AuxHeads, train_heads

    torch.manual_seed(0)
    z = torch.randn(1000, 16)
    b = torch.stack([torch.randint(0, 5, (1000,)), torch.randint(0, 2, (1000,))], dim=1)
    fast = AuxHeads(16, [5, 2])
    reference = copy.deepcopy(fast)
    initial = [p.clone() for p in fast.parameters()]
    gen_fast, gen_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    train_heads(fast, z, b, epochs=3, lr=1e-2, optimizer="adam", batch_size=96, generator=gen_fast)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for _ in range(3):
        order = torch.randperm(1000, generator=gen_ref)
        for start in range(0, 1000, 96):
            idx = order[start:start + 96]
            loss = sum(F.cross_entropy(out, b[idx, j]) for j, out in enumerate(reference(z[idx])))
            opt.zero_grad()
            loss.backward()
            opt.step()
    for mine, theirs, start in zip(fast.parameters(), reference.parameters(), initial):
        assert not torch.allclose(mine, start, atol=1e-3)  # it did train
        assert torch.allclose(mine, theirs, atol=1e-6), (mine - theirs).abs().max()
    assert torch.equal(gen_fast.get_state(), gen_ref.get_state())


def test_aux_heads_subset_is_fixed_and_only_for_large_splits():
    from bise_core.loop import _aux_rows

    assert _aux_rows(500, 0, seed=1) is None and _aux_rows(500, 500, seed=1) is None
    rows = _aux_rows(5000, 300, seed=1)
    assert rows is not None and len(rows) == 300 and len(set(rows.tolist())) == 300
    assert torch.equal(rows, rows.sort().values) and int(rows.max()) < 5000
    assert torch.equal(rows, _aux_rows(5000, 300, seed=1)) and not torch.equal(rows, _aux_rows(5000, 300, seed=2))
