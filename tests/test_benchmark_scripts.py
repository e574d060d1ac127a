"""The engine benchmarks still run and print their tables (miniature settings, seconds each).

Benchmarks are not timed here (figures live in benchmarks/RESULTS.md); this only keeps the
scripts from rotting between the sessions that run them for real. The service benchmarks
(load.py, job_time.py) need minutes and are left to those sessions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "step_cost": ["--models", "mlp", "cnn", "--iters", "1", "--warmup", "1", "--batch", "8"],
    "layout": ["--models", "resnet18", "--iters", "1", "--size", "32", "--batch", "2"],
    "compare": ["--n", "200", "--vanilla-epochs", "1", "--rho", "0.9", "--seeds", "0", "--no-ablation",
                "--random-draws", "1"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_prints_its_table(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *CASES[script]],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, proc.stdout  # header, rule, at least one row
