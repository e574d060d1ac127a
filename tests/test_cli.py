"""`bise prune` and friends as a user runs them: files written, errors on one line, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bise_core.cli import main
from bise_core.evaluate import group_table
from bise_core.models import quiet_torch
from tests.conftest import TINY_URI

# A short schedule: tau 1 -> 0.3 -> 0.09 -> 0.027 (three periods), aux heads barely trained.
QUICK = ["--tau-decay", "0.3", "--tau-min", "0.02", "--aux-epochs", "2", "--aux-pretrain-epochs", "2"]
REPORT_KEYS = {"vanilla", "pruned", "sparsity", "params", "flops", "hyperparameters", "timings",
               "verdict", "selection", "bias_supervision"}
METRIC_KEYS = {"accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy",
               "worst_group_accuracy", "bias_leakage", "groups"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bise_core", *args], capture_output=True, text=True, timeout=600)


def prune_quick(model: Path, out: Path, *extra: str, data: str = TINY_URI) -> dict:
    assert main(["prune", str(model), "--data", data, "--out", str(out), *QUICK, *extra]) == 0
    return json.loads((out / "report.json").read_text())


def accuracy_of_checkpoint(path: Path, x: torch.Tensor, y: torch.Tensor, fmt: str) -> tuple[float, float, torch.Tensor]:
    """Load a checkpoint with plain torch, as a user would, and score it."""
    with quiet_torch():
        if fmt == "export":
            with path.open("rb") as handle:
                model = torch.export.load(handle).module()
        else:
            model = torch.jit.load(str(path))
    with torch.no_grad():
        pred = model(x).argmax(1)
    return float((pred == y).double().mean()), 0.0, pred


@pytest.mark.parametrize("arch,fmt", [("cnn", "torchscript"), ("cnn-nobn", "traced"), ("mlp", "export")])
def test_prune_writes_every_artifact_and_the_checkpoint_reproduces_the_report(
    archive_factory, tiny_data, tmp_path, arch, fmt
):
    report = prune_quick(archive_factory(arch, fmt), tmp_path)
    for name in ("report.json", "mask.json", "mask.pt", "pruned.pt"):
        assert (tmp_path / name).is_file(), name
    assert REPORT_KEYS <= set(report)
    for split in ("train", "val", "test"):
        assert METRIC_KEYS <= set(report["pruned"][split])
        assert METRIC_KEYS <= set(report["vanilla"][split])
    assert report["verdict"] in {"improved", "no_improvement"}
    assert report["bias_supervision"] == "labels"
    sp = report["sparsity"]
    assert sp["units_total"] == sum(layer["total"] for layer in sp["layers"])
    assert sp["fraction_kept"] == pytest.approx(sp["units_kept"] / sp["units_total"])

    test = tiny_data.splits["test"]
    accuracy, _, pred = accuracy_of_checkpoint(tmp_path / "pruned.pt", test.x, test.y, fmt)
    assert accuracy == report["pruned"]["test"]["accuracy"]
    groups = group_table(pred, test.y, test.b)
    assert sum(g["accuracy"] for g in groups) / len(groups) == pytest.approx(
        report["pruned"]["test"]["unbiased_accuracy"], abs=1e-12
    )
    mask = json.loads((tmp_path / "mask.json").read_text())
    assert mask["units_kept"] == sp["units_kept"]


def test_slim_checkpoint_matches_masked_and_is_smaller(archive_factory, tiny_data, tmp_path):
    # A large mask learning rate and the last mask: units are certainly pruned.
    report = prune_quick(archive_factory("cnn"), tmp_path, "--mask-lr", "0.05", "--selection", "last")
    assert report["sparsity"]["units_kept"] < report["sparsity"]["units_total"]
    assert (tmp_path / "pruned_slim.pt").is_file()
    x = tiny_data.splits["test"].x
    with quiet_torch():
        masked, slim = torch.jit.load(str(tmp_path / "pruned.pt")), torch.jit.load(str(tmp_path / "pruned_slim.pt"))
    with torch.no_grad():
        torch.testing.assert_close(slim(x), masked(x), atol=1e-4, rtol=1e-4)
    assert report["params"]["slim"] < report["params"]["dense"]
    assert report["flops"]["slim"] < report["flops"]["dense"]


def test_same_seed_same_mask(archive_factory, tmp_path):
    model = archive_factory("cnn")
    first = prune_quick(model, tmp_path / "a", "--seed", "3", "--selection", "last")
    second = prune_quick(model, tmp_path / "b", "--seed", "3", "--selection", "last")
    assert json.loads((tmp_path / "a" / "mask.json").read_text()) == json.loads((tmp_path / "b" / "mask.json").read_text())
    assert first["pruned"]["test"] == second["pruned"]["test"]


def test_unsupervised_mode_reports_its_pseudo_labels(archive_factory, tmp_path):
    report = prune_quick(archive_factory("cnn"), tmp_path, "--bias-supervision", "none")
    assert report["bias_supervision"].startswith("vanilla_")
    assert report["hyperparameters"]["bias_supervision"] == "none"


def test_json_progress_is_one_json_object_per_line(archive_factory, tmp_path):
    proc = run_cli("prune", str(archive_factory("mlp")), "--data", TINY_URI, "--out", str(tmp_path),
                   "--json-progress", *QUICK)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = {e["type"] for e in events}
    assert {"phase", "step", "period", "done", "result"} <= kinds
    step = next(e for e in events if e["type"] == "step")
    assert {"epoch", "tau", "ce", "mi", "units_kept", "units_total"} <= set(step)
    assert "Warning" not in proc.stderr


def _one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]


def test_error_not_a_model(tmp_path):
    bad = tmp_path / "m.pt"
    bad.write_text("hello")
    _one_line_error(run_cli("prune", str(bad), "--data", TINY_URI, "--out", str(tmp_path / "o")),
                    "not a TorchScript")


def test_error_output_size_does_not_match_labels(tmp_path, tiny_data):
    from bise_core import zoo
    from bise_core.vanilla import save_archive

    model = zoo.build("mlp", tiny_data.input_shape, 5)
    path = save_archive(model, tiny_data.splits["train"].x[:2], tmp_path / "five.pt")
    _one_line_error(run_cli("prune", str(path), "--data", TINY_URI, "--out", str(tmp_path / "o")),
                    "outputs 5 classes")


def _bundle(tmp_path: Path, **override: torch.Tensor) -> Path:
    gen = torch.Generator().manual_seed(0)
    n = 60
    tensors = {
        "train_x": torch.rand(n, 3, 16, 16, generator=gen),
        "train_y": torch.randint(0, 10, (n,), generator=gen),
        "train_b": torch.randint(0, 10, (n,), generator=gen),
    }
    tensors.update(override)
    tensors = {k: v for k, v in tensors.items() if v is not None}
    path = tmp_path / "bundle.pt"
    torch.save(tensors, path)
    return path


@pytest.mark.parametrize(
    "override,fragment",
    [
        ({"train_b": None}, "train_b"),
        ({"train_y": torch.zeros(59, dtype=torch.long)}, "rows"),
        ({"train_y": torch.full((60,), 12)}, "outputs 10 classes"),
        ({"train_b": torch.zeros(60, dtype=torch.long)}, "bias"),
        ({"train_x": torch.full((60, 3, 16, 16), float("nan"))}, "NaN"),
    ],
    ids=["missing-key", "mismatched-lengths", "label-out-of-range", "single-bias-group", "nan-inputs"],
)
def test_bad_dataset_errors(archive_factory, tmp_path, override, fragment):
    bundle = _bundle(tmp_path, **override)
    _one_line_error(run_cli("prune", str(archive_factory("cnn")), "--data", str(bundle), "--out", str(tmp_path / "o")),
                    fragment)


def test_bad_hyperparameter_names_the_flag(archive_factory, tmp_path):
    _one_line_error(run_cli("prune", str(archive_factory("cnn")), "--data", TINY_URI, "--out", str(tmp_path),
                            "--tau-decay", "1.5"), "--tau-decay")


def test_units_command_lists_layers(archive_factory, capsys):
    assert main(["units", str(archive_factory("cnn")), "--data", TINY_URI]) == 0
    out = capsys.readouterr().out
    assert "classifier: fc" in out and "features.0" in out


@pytest.mark.parametrize("arch", ["resnet18", "transformer"])
def test_prune_torchvision_resnet_and_transformer(archive_factory, tiny_data, tmp_path, arch):
    """Scripted ResNet-18 (FX backend, residual adds) and a scripted attention block
    (parameter backend): the checkpoint still reproduces the report exactly."""
    report = prune_quick(archive_factory(arch), tmp_path, "--selection", "last", "--gamma", "0.5")
    test = tiny_data.splits["test"]
    accuracy, _, _ = accuracy_of_checkpoint(tmp_path / "pruned.pt", test.x, test.y, "torchscript")
    assert accuracy == report["pruned"]["test"]["accuracy"]
    names = {layer["name"] for layer in report["sparsity"]["layers"]}
    if arch == "resnet18":
        assert "layer4.1.conv2" in names and "fc" not in names
    else:
        assert {"ff1", "ff2"} <= names and report["model"]["slim_error"]


def test_two_bias_attributes_get_per_attribute_metrics(tmp_path, tiny_data):
    from bise_core import zoo
    from bise_core.data import open_dataset
    from bise_core.vanilla import save_archive, train_vanilla

    uri = "builtin:multicolor-digits?rho_left=0.95&rho_right=0.8&n=400&size=16"
    data = open_dataset(uri)
    model = train_vanilla(zoo.build("cnn", data.input_shape, 10), data.splits["train"], epochs=1)
    path = save_archive(model, data.splits["train"].x[:2], tmp_path / "m.pt")
    report = prune_quick(path, tmp_path / "out", data=uri)
    metrics = report["pruned"]["test"]
    assert [a["attribute"] for a in metrics["per_attribute"]] == ["left_color", "right_color"]
    assert all(isinstance(g["bias"], list) and len(g["bias"]) == 2 for g in metrics["groups"])
    for attribute in metrics["per_attribute"]:
        assert 0.0 <= attribute["unbiased_accuracy"] <= 1.0 and attribute["bias_leakage"] is not None


def test_paper_preset_runs_with_the_official_recipe(archive_factory, tmp_path):
    out = tmp_path / "paper"
    assert main(["prune", str(archive_factory("cnn")), "--data", TINY_URI, "--out", str(out), "--preset", "paper",
                 "--max-epochs", "10", "--aux-epochs", "1", "--aux-pretrain-epochs", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    hp = report["hyperparameters"]
    assert (hp["gamma"], hp["mask_lr"], hp["tau_decay"], hp["tau_period"], hp["batch_size"]) == (1.0, 0.01, 0.5, 10, 100)
    assert (hp["mi_estimator"], hp["mi_samples"], hp["mask_init"]) == ("soft_joint", "conflicting", 0.0)
    assert report["epochs_run"] == 10
