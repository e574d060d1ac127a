"""The product promise, end to end through the CLI: a strongly biased vanilla CNN gets a
fairer subnetwork. Trains its own vanilla model (plain ERM) on builtin biased digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

DATA = "builtin:biased-digits?rho=0.95&n=3000&seed=0"


def bise(*args: str) -> subprocess.CompletedProcess[str]:
    # One intra-op thread: float reductions, hence the trained vanilla model, are then the
    # same on every machine, whatever its core count.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bise_core", *args], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_bise_raises_unbiased_accuracy_of_a_biased_cnn(tmp_path):
    model = tmp_path / "vanilla.pt"
    bise("train-vanilla", "--data", DATA, "--arch", "cnn-wide", "--epochs", "20", "--out", str(model))
    proc = bise("prune", str(model), "--data", DATA, "--out", str(tmp_path / "out"), "--seed", "0")
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    before = report["vanilla"]["test"]["unbiased_accuracy"]
    after = report["pruned"]["test"]["unbiased_accuracy"]
    assert before < 0.5, f"the vanilla model is not biased enough to test anything ({before:.3f})"
    assert after - before >= 0.10, f"unbiased test accuracy {before:.3f} -> {after:.3f}"
    assert report["sparsity"]["fraction_kept"] <= 0.9
    assert report["verdict"] == "improved"
    assert report["pruned"]["test"]["bias_leakage"] <= report["vanilla"]["test"]["bias_leakage"]
    assert "IMPROVED" in proc.stdout  # the CLI states the verdict
