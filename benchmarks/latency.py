"""Inference latency of a vanilla model vs its BISE outputs (masked and physically slimmed).

Usage: .venv/bin/python benchmarks/latency.py VANILLA.pt BISE_OUT_DIR [--threads N] [--runs N]
(e.g. after `bash scripts/demo.sh`: runs/demo/vanilla.pt runs/demo). Prints one row per
model and batch size: median and p90 milliseconds per forward pass, and the speed-up over the
vanilla model. The masked checkpoint has the vanilla's shapes (zeroed units), so it should
cost the same; only the slim one removes work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import set_threads  # noqa: F401  (puts the repository on sys.path)

import torch

from bise_core.data import open_dataset
from bise_core.models import quiet_torch


def load(path: Path) -> torch.nn.Module:
    with quiet_torch():
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception:
            with path.open("rb") as handle:
                return torch.export.load(handle).module()


def timings(model: torch.nn.Module, x: torch.Tensor, runs: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(max(3, runs // 10)):
            model(x)
        out = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vanilla", type=Path)
    parser.add_argument("bise_out", type=Path)
    parser.add_argument("--data", default="builtin:biased-digits?rho=0.95&n=3000&seed=0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    set_threads(args.threads)
    sample = open_dataset(args.data).splits["test"].x
    models = {"vanilla": load(args.vanilla), "masked": load(args.bise_out / "pruned.pt")}
    if (args.bise_out / "pruned_slim.pt").is_file():
        models["slim"] = load(args.bise_out / "pruned_slim.pt")
    print(f"threads={args.threads} runs={args.runs} input={tuple(sample.shape[1:])}")
    print(f"| model | batch | median ms | p90 ms | speed-up vs vanilla |")
    print("|---|---|---|---|---|")
    for batch in (1, 64):
        x = sample[:batch].contiguous()
        base = None
        for name, model in models.items():
            t = sorted(timings(model, x, args.runs))
            median, p90 = statistics.median(t), t[int(0.9 * (len(t) - 1))]
            base = base or median
            print(f"| {name} | {batch} | {median:.3f} | {p90:.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
