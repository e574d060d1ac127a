"""``bise inspect`` and ``bise dataset-info``: the summaries the service validates uploads
and dataset references with (run in a sandbox there, so bad input must give JSON errors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bise_core.inspect import dataset_info, inspect_model
from tests.conftest import TINY_URI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bise_core", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch,fmt,source", [("cnn", "torchscript", "guessed"), ("cnn-nobn", "traced", "guessed"),
                                             ("mlp", "export", "archive"), ("resnet18", "torchscript", "guessed")])
def test_inspect_finds_input_params_and_units(archive_factory, tiny_data, arch, fmt, source):
    summary = inspect_model(archive_factory(arch, fmt))
    assert summary["format"] == ("export" if fmt == "export" else "torchscript")
    assert summary["params"] > 0 and summary["units_total"] == sum(l["units"] for l in summary["layers"]) > 0
    assert summary["num_classes"] == tiny_data.num_classes and summary["input_spec"]["source"] == source
    if fmt == "export":
        assert summary["input_spec"]["shape"] == list(tiny_data.input_shape)


def test_inspect_with_a_given_input_shape(archive_factory):
    summary = inspect_model(archive_factory("mlp"), "3,16,16")
    assert summary["input_spec"] == {"shape": [3, 16, 16], "dtype": "float32", "source": "given"}


def test_inspect_cli_json(archive_factory):
    proc = cli("inspect", str(archive_factory("cnn")), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["units_total"] > 0


@pytest.mark.parametrize("content", [b"hello, not a model", b"PK\x03\x04" + b"\x00" * 100])
def test_inspect_bad_files_give_a_json_error_not_a_traceback(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    proc = cli("inspect", str(bad), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "invalid_model" and error["param"] == "model" and error["message"]


def test_inspect_truncated_archive(archive_factory, tmp_path):
    data = archive_factory("cnn").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    proc = cli("inspect", str(cut), "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["code"] == "invalid_model"


def test_dataset_info_counts_groups(tiny_data):
    info = dataset_info(TINY_URI)
    assert info["num_classes"] == tiny_data.num_classes
    for name, split in tiny_data.splits.items():
        assert info["splits"][name]["count"] == len(split)
        assert sum(g["count"] for g in info["splits"][name]["groups"]) == len(split)
    assert info["bias_attributes"][0]["cardinality"] == tiny_data.bias_cardinalities[0]


def test_dataset_info_errors(tmp_path):
    missing = cli("dataset-info", f"file://{tmp_path}/nope.pt", "--data-root", str(tmp_path), "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["param"] == "uri"
    outside = cli("dataset-info", "file:///etc/hostname", "--data-root", str(tmp_path), "--json")
    assert outside.returncode == 2 and "outside" in json.loads(outside.stdout)["error"]["message"]


def test_inspect_without_a_runnable_guess_warns_and_still_counts_params(tmp_path):
    import torch
    from torch import nn

    from bise_core.vanilla import save_archive

    class OddSize(nn.Module):  # runs only on 13x13 images, which no guess tries
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 13 * 13, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).reshape(x.shape[0], 4 * 13 * 13))

    path = save_archive(OddSize(), torch.zeros(2, 3, 13, 13), tmp_path / "odd.pt")
    summary = inspect_model(path)
    assert summary["layers"] is None and summary["input_spec"] is None and summary["warnings"]
    assert summary["params"] == sum(p.numel() for p in OddSize().parameters())
    given = inspect_model(path, "3,13,13")
    assert [layer["name"] for layer in given["layers"]] == ["conv"] and given["classifier"] == "fc"


def test_inspect_export_with_two_inputs_is_invalid(tmp_path):
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(self.a(x + y))

    path = tmp_path / "two.pt2"
    program = torch.export.export(TwoInputs(), (torch.zeros(2, 4), torch.zeros(2, 4)))
    with path.open("wb") as handle:
        torch.export.save(program, handle)
    proc = cli("inspect", str(path), "--json")
    assert proc.returncode == 2 and "one input tensor" in json.loads(proc.stdout)["error"]["message"]


def test_errors_without_json_are_one_line_on_stderr(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    proc = cli("inspect", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a TorchScript" in proc.stderr


def test_dataset_info_error_names_the_key_at_fault(tmp_path):
    import torch

    bundle = tmp_path / "bundle.pt"
    torch.save({"train_x": torch.rand(10, 4), "train_y": torch.arange(10) % 2, "train_b": torch.zeros(9)}, bundle)
    proc = cli("dataset-info", str(bundle), "--data-root", str(tmp_path), "--json")
    error = json.loads(proc.stdout)["error"]
    assert proc.returncode == 2 and error["code"] == "invalid_dataset" and error["param"] == "uri"
    assert error["message"].startswith("train_b:")
