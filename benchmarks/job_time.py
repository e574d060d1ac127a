"""A full BISE job against plain training of the same model on the same data.

Usage: .venv/bin/python benchmarks/job_time.py [--n 60000] [--size 28] [--arch cnn]
           [--device cpu|cuda] [--threads N] [--set key=value ...]

The dataset is ``builtin:biased-digits`` scaled to ``--n`` samples at ``--size``x``--size``
(60,000 at 28x28 by default, MNIST's shape). The plain model is trained for one epoch
(timed: that is the unit of the target), then ``bise_core.pipeline.prune`` runs the whole
job with the fast preset (timed end to end: loading, both evaluations, every mask epoch,
aux-head refreshes, export, slim). Target (issue 6): job wall time < plain epoch time x
BISE epochs x 0.7. On a GPU a thread samples ``nvidia-smi`` for the utilisation.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import _common as C  # noqa: I001  (sibling module; also puts the repo root on sys.path)

import torch

from bise_core import zoo
from bise_core.config import BiseConfig
from bise_core.data import open_dataset
from bise_core.pipeline import prune
from bise_core.vanilla import save_archive, train_vanilla


class GpuSampler(threading.Thread):
    """GPU utilisation (%) every 0.5 s from nvidia-smi, while a job runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--rho", type=float, default=0.95)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], help="BISE hyperparameter key=value")
    args = parser.parse_args()
    if args.threads:
        C.set_threads(args.threads)
    uri = f"builtin:biased-digits?rho={args.rho}&n={args.n}&size={args.size}&seed=0"
    hyper = {k.replace("-", "_"): v for k, v in (item.split("=", 1) for item in args.set)}
    config = BiseConfig(device=args.device, **hyper)

    with C.Stopwatch() as sw:
        data = open_dataset(uri)
    train = data.splits["train"]
    print(f"dataset {uri}: {len(train)} training samples, generated in {sw.seconds:.1f} s", flush=True)

    torch.manual_seed(0)
    model = zoo.build(args.arch, data.input_shape, data.num_classes)
    batch = int(config.batch_size)  # type: ignore[arg-type]
    train_vanilla(model, train, epochs=1, batch_size=batch, device=args.device)  # warm-up epoch (and the model)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    with C.Stopwatch() as sw:
        train_vanilla(model, train, epochs=1, batch_size=batch, seed=1, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    plain_epoch = sw.seconds

    with tempfile.TemporaryDirectory(prefix="bise-jobtime-") as tmp:
        archive = save_archive(model, train.x[:2], Path(tmp) / "vanilla.pt")
        sampler = GpuSampler() if args.device.startswith("cuda") and shutil.which("nvidia-smi") else None
        if sampler:
            sampler.start()
        with C.Stopwatch() as sw:
            result = prune(archive, data, Path(tmp) / "out", config)
        if sampler:
            sampler.stopped.set()
        job = sw.seconds
    report = result.report
    epochs = float(report.get("epochs_run") or 0)
    budget = plain_epoch * epochs * 0.7
    print(f"\nmachine: {platform.node()} ({platform.processor() or platform.machine()}), device {args.device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch}, batch {batch}")
    print(f"{'plain epoch s':>13s} {'BISE epochs':>11s} {'job s':>8s} {'mask phase s':>12s} {'samples/s':>10s} "
          f"{'budget s':>9s} {'job/budget':>10s} {'GPU util %':>10s}")
    gpu = f"{statistics.mean(sampler.samples):.0f}" if sampler and sampler.samples else "-"
    print(f"{plain_epoch:13.2f} {epochs:11.2f} {job:8.1f} {report['timings'].get('prune', 0):12.1f} "
          f"{epochs * len(train) / max(job, 1e-9):10.0f} {budget:9.1f} {job / max(budget, 1e-9):10.2f} {gpu:>10s}")
    print(f"timings by phase: {report['timings']}")
    print(f"units kept {report['sparsity']['units_kept']}/{report['sparsity']['units_total']}, "
          f"test unbiased accuracy {report['vanilla']['test']['unbiased_accuracy']:.3f} -> "
          f"{report['pruned']['test']['unbiased_accuracy']:.3f}, verdict {report['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
