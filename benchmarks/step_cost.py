"""Cost of one BISE mask step relative to one ordinary training step of the same model.

* plain step: the original ``nn.Module`` (``zoo.build``) in train mode: forward,
  cross-entropy, backward, optimiser step (Adam or SGD) on ALL weights;
* BISE step: exactly what the engine's mask epoch (``BiseLoop._mask_epoch``) does per
  batch: the model saved as TorchScript, reloaded with ``load_model`` (frozen eval-mode FX
  graph), ``find_units`` + ``GatedModel`` (through ``backends.prepare``, as ``prune`` does)
  in soft (straight-through) mode, the aux heads, ``Objective.loss`` (group-weighted CE +
  gamma * MI, with its ``.item()`` calls), backward to the mask parameters only, the mask
  optimiser step, and the ``units_kept()`` the engine reports after every step, run through
  the engine's ``Execution`` (its memory-layout, precision and compile choices). The mask
  optimiser is the preset's (``loop._mask_optimizer``; ``--mask-optimizer sgd`` forces
  ``SGD(mask_parameters(), lr=0.05, momentum=0.9)``). Per-epoch work that is not a step
  (aux-head refresh, validation checks) is not included.

The plain step uses the default memory layout, as training code usually does;
``--plain-layout channels_last`` measures it against a plain step in channels_last too.

Both run on the same batch (already on the device), ``--warmup`` untimed iterations then
``--iters`` timed ones, plain and BISE interleaved so load drift hits both alike; the table
shows medians. CUDA is synchronised around every timed step.

    .venv/bin/python benchmarks/step_cost.py                      # cnn + resnet18 on CPU
    .venv/bin/python benchmarks/step_cost.py --device cuda --batch 128 --iters 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import _common as C  # noqa: I001  (sibling module; also puts the repo root on sys.path)

import torch
import torch.nn.functional as F

from bise_core.config import BiseConfig
from bise_core.data.splits import Split
from bise_core.backends import prepare
from bise_core.execution import Execution
from bise_core.gates import GateControls
from bise_core import loop as engine_loop
from bise_core.models import load_model
from bise_core.objective import AuxHeads, Objective, group_weights

NUM_CLASSES = 10
BIAS_CARDINALITY = 10
#: input shape (C, H, W) per model, as the brief fixes them
SHAPES = {"cnn": (3, 28, 28), "cnn-wide": (3, 28, 28), "cnn-nobn": (3, 28, 28), "mlp": (3, 28, 28), "transformer": (3, 28, 28),
          "resnet18": (3, 64, 64)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--plain-optimizer", choices=["adam", "sgd"], default="adam",
                   help="optimiser of the plain step (Adam lr 1e-3 or SGD lr 0.01 momentum 0.9)")
    p.add_argument("--plain-layout", choices=["default", "channels_last"], default="default",
                   help="memory format of the plain step's model and batch (the BISE step picks its own)")
    p.add_argument("--preset", choices=["fast", "paper"], default="fast",
                   help="which preset's objective (gamma, MI estimator, MI samples) the BISE step uses")
    p.add_argument("--mask-optimizer", choices=["preset", "sgd"], default="preset",
                   help="preset: the engine's optimiser for --preset; sgd: SGD(lr=0.05, momentum=0.9)")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "traced", "export"],
                   help="archive format the model is saved in and reloaded from")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(shape: tuple[int, ...], n: int, gen: torch.Generator) -> Split:
    """Random images, labels and a 90%-aligned bias attribute (values do not matter for timing)."""
    x = torch.rand((n, *shape), generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    other = (y + torch.randint(1, BIAS_CARDINALITY, (n,), generator=gen)) % BIAS_CARDINALITY
    b = torch.where(torch.rand(n, generator=gen) < 0.9, y, other)[:, None]
    return Split(x=x, y=y, b=b)


def plain_step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bise_step_fn(gated: GateControls, execution: Execution, heads: AuxHeads, objective: Objective,
                 opt: torch.optim.Optimizer, normalise: bool, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor,
                 w: torch.Tensor) -> Callable[[], None]:
    def step() -> None:  # the body of BiseLoop._mask_epoch's batch loop, data already on device
        with execution.autocast():
            logits, z = execution.forward(execution.layout(x))
        loss, parts = objective.loss(logits.float(), heads(z.float()), y, b, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if normalise:
            engine_loop._normalise_gradients(gated.mask_parameters())  # what the loop does for nsgd
        opt.step()
        _ = {"type": "step", **parts, "units_kept": gated.units_kept(), "units_total": gated.units.total_units}
    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def measure(arch: str, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    shape = SHAPES[arch]
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    data = synthetic_batch(shape, args.batch, gen)
    x, y, b = data.x.to(device), data.y.to(device), data.b.to(device)

    # plain: the original module, train mode, every weight trained
    model = C.zoo.build(arch, shape, NUM_CLASSES)
    path = C.save_archive(model, data.x[:2], work / f"{arch}.pt", args.format)  # saved before any step changes it
    model.to(device).train()
    plain_x = x
    if args.plain_layout == "channels_last" and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        plain_x = x.contiguous(memory_format=torch.channels_last)
    params = list(model.parameters())
    plain_opt = (torch.optim.Adam(params, lr=1e-3) if args.plain_optimizer == "adam"
                 else torch.optim.SGD(params, lr=0.01, momentum=0.9))
    plain = plain_step_fn(model, plain_opt, plain_x, y)

    # BISE: what pipeline.prune + BiseLoop build
    cfg = BiseConfig(preset=args.preset, seed=args.seed, device=str(device))
    prepared = prepare(load_model(path, data.x[:2]), data.x[:2], init=float(cfg.mask_init))
    units, gated = prepared.units, prepared.gated
    gated.to(device)  # type: ignore[attr-defined]
    gated.set_mode("soft")
    gated.set_tau(0.5)
    objective = Objective(data, NUM_CLASSES, [BIAS_CARDINALITY], gamma=float(cfg.gamma),
                          estimator=str(cfg.mi_estimator), samples=str(cfg.mi_samples))
    with torch.no_grad():
        z_dim = gated(x[:2])[1].shape[1]  # type: ignore[operator]
    heads = AuxHeads(z_dim, [BIAS_CARDINALITY]).to(device)
    heads.requires_grad_(False)  # frozen during mask epochs, as in the loop
    if args.mask_optimizer == "sgd":
        mask_opt: torch.optim.Optimizer = torch.optim.SGD(gated.mask_parameters(), lr=0.05, momentum=0.9)
        opt_name, normalise = "sgd lr=0.05 m=0.9", False
    else:
        mask_opt = engine_loop._mask_optimizer(cfg, gated.mask_parameters())
        opt_name, normalise = f"{cfg.mask_optimizer} lr={cfg.mask_lr:g}", cfg.mask_optimizer == "nsgd"
    w = group_weights(data.y, data.b).to(device)
    execution = Execution.for_config(cfg, gated, x[:8])  # the engine's layout, precision and compile choices
    bise = bise_step_fn(gated, execution, heads, objective, mask_opt, normalise, x, y, b, w)

    trainable = sum(p.numel() for p in gated.parameters() if p.requires_grad)  # type: ignore[attr-defined]
    assert trainable == units.total_units, "only the mask should be trainable"
    for _ in range(max(args.warmup, 1)):
        plain()
        bise()
    sync(device)
    plain_times, bise_times = [], []
    for _ in range(args.iters):
        plain_times.append(timed(plain, device))
        bise_times.append(timed(bise, device))
    # the BISE step produced gradients for the mask and for nothing else
    mask_ids = {id(p) for p in gated.mask_parameters()}
    with_grad = {id(p) for p in list(gated.parameters()) + list(heads.parameters())  # type: ignore[attr-defined]
                 if p.grad is not None}
    assert with_grad == mask_ids, "the BISE step should reach the mask parameters only"
    plain_ms = statistics.median(plain_times) * 1e3
    bise_ms = statistics.median(bise_times) * 1e3
    return {"model": arch, "device": str(device), "batch": args.batch, "plain_ms": plain_ms, "bise_ms": bise_ms,
            "ratio": bise_ms / plain_ms, "units": units.total_units, "mask_optimizer": opt_name,
            "backend": prepared.backend, "channels_last": execution.channels_last, "params": sum(p.numel() for p in params),
            "plain_iqr": _iqr(plain_times), "bise_iqr": _iqr(bise_times)}


def _iqr(values: list[float]) -> float | None:
    if len(values) < 4:
        return None
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.iters < 1:
        sys.exit("--iters must be at least 1")
    C.set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no GPU is available")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bise-step-") as tmp:
        for arch in args.models:
            r = measure(arch, args, device, Path(tmp))
            print(f"{arch}: plain {r['plain_ms']:.1f} ms, BISE {r['bise_ms']:.1f} ms", file=sys.stderr, flush=True)
            rows.append(r)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\n### One BISE mask step vs one plain training step (median of {args.iters} after {args.warmup} warmup; "
          f"plain optimiser {args.plain_optimizer}, layout {args.plain_layout}; BISE: {args.preset} preset objective, mask optimiser "
          f"{rows[0]['mask_optimizer'] if rows else '-'})\n")
    print(C.markdown_table(
        ["model", "device", "batch", "BISE layout", "plain step ms", "BISE step ms", "ratio"],
        [[r["model"], r["device"], r["batch"], "channels_last" if r["channels_last"] else "plain",
          f"{r['plain_ms']:.1f}", f"{r['bise_ms']:.1f}", f"{r['ratio']:.2f}"] for r in rows],
    ))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {name}; "
          + "; ".join(f"{r['model']}: {r['params']:,} weights, {r['units']} units ({r['backend']}), IQR plain "
                      f"{_ms(r['plain_iqr'])} / BISE {_ms(r['bise_iqr'])} ms" for r in rows))


if __name__ == "__main__":
    main()
