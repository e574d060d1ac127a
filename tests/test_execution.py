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


def test_gpu_only_knobs_are_no_ops_on_cpu():
    config = BiseConfig(precision="bf16", channels_last=True)
    execution = Execution.for_config(config, torch.nn.Identity(), input_dims=4)
    assert not execution.bf16 and not execution.channels_last
    x = torch.zeros(2, 3, 4, 4)
    with execution.autocast():
        assert execution.layout(x).is_contiguous()


def test_execution_fields_do_not_change_the_mask(archive_factory, tmp_path):
    """Same seed with and without the knobs (on CPU they resolve to the plain path, compile included)."""
    model = archive_factory("mlp")
    plain = prune_quick(model, tmp_path / "plain", "--seed", "1", "--selection", "last")
    tuned = prune_quick(model, tmp_path / "tuned", "--seed", "1", "--selection", "last", "--precision", "bf16",
                        "--channels-last", "true", "--data-placement", "host")
    masks = [json.loads((tmp_path / name / "mask.json").read_text()) for name in ("plain", "tuned")]
    assert masks[0] == masks[1]
    assert plain["pruned"]["test"] == tuned["pruned"]["test"]
