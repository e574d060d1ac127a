"""Is channels_last worth it for the mask step's network pass? Frozen forward plus the
backward to the input (what a BISE step asks of the network: no weight gradients) in the
default and in the channels_last memory format, for torchvision model families.

The engine turns channels_last on by default for convolutional models (bise_core.execution);
this is the evidence that the default does not slow a family down.

    .venv/bin/python benchmarks/layout.py [--models resnet18 mobilenet_v3_small ...] [--batch 32]
        [--size 64] [--threads 2] [--iters 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C  # noqa: I001  (sibling module; also puts the repo root on sys.path)

import torch
import torchvision

DEFAULT_MODELS = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_y_400mf", "resnet18",
                  "convnext_tiny"]


def pass_ms(model: torch.nn.Module, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Median milliseconds of forward + backward to ``x`` (weights frozen)."""
    times = []
    for _ in range(iters + 1):  # the first is a warm-up
        inp = x.detach().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(inp).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    C.set_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    rows = []
    for name in args.models:
        model = getattr(torchvision.models, name)(num_classes=10).eval().to(device)
        model.requires_grad_(False)
        plain = pass_ms(model, x.contiguous(), args.iters, device)
        model.to(memory_format=torch.channels_last)
        last = pass_ms(model, x.contiguous(memory_format=torch.channels_last), args.iters, device)
        rows.append([name, f"{plain:.1f}", f"{last:.1f}", f"{plain / last:.2f}"])
    print(f"forward + input-gradient backward, batch {args.batch} at {args.size}x{args.size}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(C.markdown_table(["model", "default layout ms", "channels_last ms", "speed-up"], rows))


if __name__ == "__main__":
    main()
