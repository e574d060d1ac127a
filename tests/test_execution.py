"""The execution knobs of issue 6 (staging, precision, layout, compile): they change how fast
a run goes, never what it computes; off the GPU they fall back to the plain path."""

from __future__ import annotations

import json

import torch

from bise_core.config import BiseConfig
from bise_core.execution import Execution
from bise_core.staging import stage
from tests.test_cli import prune_quick


def test_staging_on_the_host_gathers_the_right_rows():
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    b, w = torch.arange(10)[:, None] % 2, torch.linspace(0, 1, 10)
    staged = stage(x, y, b, w, "cpu")
    assert not staged.on_device
    bx, by, bb, bw = staged.batch(torch.tensor([7, 2]), "cpu")
    assert torch.equal(bx, x[[7, 2]]) and torch.equal(by, y[[7, 2]]) and torch.equal(bb, b[[7, 2]])
    assert torch.equal(bw, w[[7, 2]])


def test_bf16_is_a_no_op_on_cpu():
    execution = Execution.for_config(BiseConfig(precision="bf16"), torch.nn.Identity(), torch.zeros(2, 3, 4, 4))
    assert not execution.bf16 and not execution.channels_last
    x = torch.zeros(2, 3, 4, 4)
    with execution.autocast():
        assert execution.layout(x).is_contiguous()


class _Gated(torch.nn.Module):
    """The little a GateControls needs for the layout check: set_mode and gates."""

    def __init__(self, flatten_with_view: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 6 * 6, 2)
        self.gates = torch.nn.ModuleList()
        self.view = flatten_with_view

    def set_mode(self, mode: str) -> None:
        pass

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.conv(x))
        flat = z.view(z.shape[0], -1) if self.view else z.flatten(1)
        return self.head(flat), z.mean((2, 3))


def test_channels_last_by_default_for_convolutions_that_accept_it():
    model, sample = _Gated(flatten_with_view=False), torch.randn(4, 3, 6, 6)
    before = model(sample)[0]
    execution = Execution.for_config(BiseConfig(), model, sample)
    assert execution.channels_last and model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    after = execution.forward(execution.layout(sample))[0]
    assert torch.allclose(before, after, atol=1e-5)


def test_channels_last_is_left_off_where_it_breaks_or_does_not_apply():
    viewing, sample = _Gated(flatten_with_view=True), torch.randn(4, 3, 6, 6)
    execution = Execution.for_config(BiseConfig(), viewing, sample)
    assert not execution.channels_last and viewing.conv.weight.is_contiguous()
    viewing(execution.layout(sample))  # still runs in the plain layout
    assert not Execution.for_config(BiseConfig(channels_last=False), _Gated(False), sample).channels_last
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2))
    mlp.set_mode = lambda mode: None  # type: ignore[attr-defined]
    assert not Execution.for_config(BiseConfig(), mlp, sample).channels_last  # no convolution
    assert not Execution.for_config(BiseConfig(), _Gated(False), torch.randn(4, 108)).channels_last  # not 4-D


def test_execution_fields_do_not_change_the_mask(archive_factory, tmp_path):
    """Same seed with and without the knobs (on CPU they resolve to the plain path, compile included)."""
    model = archive_factory("mlp")
    plain = prune_quick(model, tmp_path / "plain", "--seed", "1", "--selection", "last")
    tuned = prune_quick(model, tmp_path / "tuned", "--seed", "1", "--selection", "last", "--precision", "bf16",
                        "--channels-last", "true", "--data-placement", "host")
    masks = [json.loads((tmp_path / name / "mask.json").read_text()) for name in ("plain", "tuned")]
    assert masks[0] == masks[1]
    assert plain["pruned"]["test"] == tuned["pruned"]["test"]
