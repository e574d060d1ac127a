"""BISE against vanilla and against random / magnitude pruning at the same per-layer sparsity.

For every rho x seed: generate ``builtin:biased-digits`` (train biased by rho, val/test
unbiased), train a vanilla model with plain ERM (Adam), save it as TorchScript, then on the
TEST split compare

* ``vanilla``            the dense model;
* ``bise``               ``prune`` with the default ``BiseConfig`` (fast preset);
* ``random``             random units kept, same kept count per layer as BISE's mask
                         (``--random-draws`` seeded draws, averaged within a seed);
* ``magnitude``          largest-L1 units kept, same per-layer counts as BISE's mask
                         (|BN weight| for conv->BN, else the filter / row L1 norm);
* ``bise-no-mi``         ``BiseConfig(gamma=0)``: the paper's ablation without the MI term;
* ``bise-paper``         ``BiseConfig(preset="paper")``, only with ``--paper`` (slow).

The dataset, the vanilla training, BISE and the random masks all use the seed; several
``--seeds`` give mean ± std over seeds. ``wall s`` is the method's own time: training for
vanilla, the whole ``prune`` call (load, evaluation, loop, export, slim) for BISE runs, and
building + evaluating the mask for random / magnitude (BISE's time not included).

    .venv/bin/python benchmarks/compare.py                       # default, ~8 min on 2 cores
    .venv/bin/python benchmarks/compare.py --rho 0.95 --n 1000 --vanilla-epochs 5   # smoke
    .venv/bin/python benchmarks/compare.py --seeds 0 1 2 --paper --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as C  # noqa: I001  (sibling module; also puts the repo root on sys.path)

import torch

from bise_core.config import BiseConfig
from bise_core.data.splits import Dataset, Split
from bise_core.objective import majority_bias
from bise_core.pipeline import prune

METRICS = ("unbiased_accuracy", "accuracy", "worst_group_accuracy", "conflicting_accuracy", "aligned_accuracy")
METHOD_ORDER = ("vanilla", "bise", "random", "magnitude", "bise-no-mi", "bise-paper")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rho", type=float, nargs="+", default=[0.9, 0.95, 0.98], help="train-split bias strengths")
    p.add_argument("--n", type=int, default=3000, help="training samples (val n//5, test n//2)")
    p.add_argument("--size", type=int, default=28, help="image side")
    p.add_argument("--arch", default="cnn", choices=C.zoo.ARCHITECTURES)
    p.add_argument("--format", default="torchscript", choices=["torchscript", "traced", "export"],
                   help="archive format of the vanilla model")
    p.add_argument("--vanilla-epochs", type=int, default=30)
    p.add_argument("--vanilla-lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--random-draws", type=int, default=3, help="random masks per seed (averaged)")
    p.add_argument("--no-ablation", action="store_true", help="skip BISE without the MI term (gamma=0)")
    p.add_argument("--paper", action="store_true", help="also run the paper preset (slow) and print fast vs paper time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also dump every result here")
    p.add_argument("--keep-dir", type=Path, default=None, help="keep archives and BISE outputs here")
    return p.parse_args(argv)


def _metrics(source: dict[str, Any]) -> dict[str, Any]:
    return {k: source.get(k) for k in METRICS}


def run_bise(path: Path, data: C.Dataset, out: Path, cfg: BiseConfig, units: C.UnitGraph) -> dict[str, Any]:
    with C.Stopwatch() as sw:
        result = prune(path, data, out, cfg)
    report = result.report
    by_name = torch.load(result.files["mask_tensor"])
    masks = [by_name[u.name].bool() for u in units.units]
    return {
        **_metrics(report["pruned"]["test"]),
        "fraction_kept": report["sparsity"]["fraction_kept"],
        "units_kept": report["sparsity"]["units_kept"],
        "wall_s": sw.seconds,
        "prune_loop_s": report["timings"].get("prune"),
        "epochs_run": report["epochs_run"],
        "selection": report["selection"],
        "verdict": report["verdict"],
        "bias_leakage": report["pruned"]["test"].get("bias_leakage"),
        "vanilla_report_test": _metrics(report["vanilla"]["test"]),
        "masks": masks,
    }


def warm_up(args: argparse.Namespace, work: Path) -> None:
    """One throwaway miniature of every step, so one-off costs (TorchScript compilation, the
    TorchScript->FX converter, first autograd/kernel calls) are not billed to the first rho."""
    data = C.load_data(args.rho[0], 200, 0, args.size)
    tiny = Dataset(splits={k: Split(s.x[:64], s.y[:64], s.b[:64]) for k, s in data.splits.items()},
                   num_classes=data.num_classes, bias_cardinalities=data.bias_cardinalities,
                   bias_names=data.bias_names)
    path = C.train_and_save(args.arch, tiny, work / "warmup.pt", epochs=1, seed=0, fmt=args.format)
    cfg = BiseConfig(max_epochs=1, aux_pretrain_epochs=1, aux_epochs=1, device=args.device)
    prune(path, tiny, work / "warmup", cfg)


def run_one(args: argparse.Namespace, rho: float, seed: int, work: Path) -> list[dict[str, Any]]:
    data = C.load_data(rho, args.n, seed, args.size)
    train = data.splits["train"]
    majority = majority_bias(train.y, train.b, data.num_classes)
    ev = dict(data=data, majority=majority, device=args.device)
    records: list[dict[str, Any]] = []
    tag = f"rho={rho:g} seed={seed}"

    def add(method: str, values: dict[str, Any]) -> None:
        records.append({"rho": rho, "seed": seed, "method": method, **values})
        log(f"[{tag}] {method:<11} unbiased={values['unbiased_accuracy']:.4f} "
            f"acc={values['accuracy']:.4f} worst={values['worst_group_accuracy']:.4f} "
            f"kept={values['fraction_kept']:.3f} ({values['wall_s']:.1f}s)")

    path = work / f"vanilla-{args.arch}-rho{rho:g}-seed{seed}.pt"
    with C.Stopwatch() as sw:
        C.train_and_save(args.arch, data, path, epochs=args.vanilla_epochs, seed=seed, lr=args.vanilla_lr,
                        fmt=args.format)
    prepared = C.load_gated(path, data)
    gated, units = prepared.gated, prepared.units
    gated.to(args.device)  # type: ignore[attr-defined]
    vanilla = C.evaluate_masks(gated, None, **ev)
    add("vanilla", {**_metrics(vanilla), "fraction_kept": 1.0, "units_kept": units.total_units, "wall_s": sw.seconds})

    bise = run_bise(path, data, work / f"bise-rho{rho:g}-seed{seed}", BiseConfig(seed=seed, device=args.device), units)
    masks = bise.pop("masks")
    counts = C.kept_counts(masks)
    # consistency: the reloaded masked checkpoint (report) vs the hard gates on the frozen graph
    checks = {
        "gated_vs_checkpoint": abs(C.evaluate_masks(gated, masks, **ev)["unbiased_accuracy"]
                                   - bise["unbiased_accuracy"]),
        "vanilla_vs_report": abs(vanilla["unbiased_accuracy"] - bise.pop("vanilla_report_test")["unbiased_accuracy"]),
    }
    for name, diff in checks.items():
        if diff > 1e-6:
            log(f"[{tag}] WARNING {name}: unbiased accuracies differ by {diff:.6f}")
    add("bise", {**bise, "kept_per_layer": counts, "checks": checks})
    total = units.total_units

    draws = []
    with C.Stopwatch() as sw:
        for d in range(args.random_draws):
            draws.append(C.evaluate_masks(gated, C.random_masks(units, counts, seed * 1000 + d), **ev))
    mean = {k: None if any(m[k] is None for m in draws) else sum(m[k] for m in draws) / len(draws) for k in METRICS}
    add("random", {**mean, "fraction_kept": sum(counts) / total, "units_kept": sum(counts), "wall_s": sw.seconds,
                   "draws": [_metrics(m) for m in draws]})

    with C.Stopwatch() as sw:
        mag_masks = C.magnitude_masks(C.unit_magnitudes(prepared.loaded.module, units), counts)
        mag = C.evaluate_masks(gated, mag_masks, **ev)
    overlap = sum(int((a & b).sum()) for a, b in zip(mag_masks, masks)) / max(sum(counts), 1)
    add("magnitude", {**_metrics(mag), "fraction_kept": sum(counts) / total, "units_kept": sum(counts),
                      "wall_s": sw.seconds, "overlap_with_bise": overlap})

    if not args.no_ablation:
        cfg = BiseConfig(gamma=0.0, seed=seed, device=args.device)
        ablation = run_bise(path, data, work / f"bise-nomi-rho{rho:g}-seed{seed}", cfg, units)
        for key in ("masks", "vanilla_report_test"):
            ablation.pop(key)
        add("bise-no-mi", ablation)

    if args.paper:
        cfg = BiseConfig(preset="paper", seed=seed, device=args.device)
        paper = run_bise(path, data, work / f"bise-paper-rho{rho:g}-seed{seed}", cfg, units)
        for key in ("masks", "vanilla_report_test"):
            paper.pop(key)
        add("bise-paper", paper)
    return records


def summary_rows(records: list[dict[str, Any]], rhos: list[float]) -> list[list[str]]:
    rows = []
    for rho in rhos:
        for method in METHOD_ORDER:
            group = [r for r in records if r["rho"] == rho and r["method"] == method]
            if not group:
                continue
            rows.append([
                f"{rho:g}", method,
                C.mean_std((r["unbiased_accuracy"] for r in group), 1, 100),
                C.mean_std((r["accuracy"] for r in group), 1, 100),
                C.mean_std((r["worst_group_accuracy"] for r in group), 1, 100),
                C.mean_std((r["fraction_kept"] for r in group), 3),
                C.mean_std((r["wall_s"] for r in group), 1),
            ])
    return rows


def paper_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in records:
        if r["method"] != "bise-paper":
            continue
        fast = next(x for x in records if x["method"] == "bise" and x["rho"] == r["rho"] and x["seed"] == r["seed"])
        rows.append([f"{r['rho']:g}", str(r["seed"]), f"{fast['wall_s']:.1f}", f"{r['wall_s']:.1f}",
                     f"{r['wall_s'] / fast['wall_s']:.1f}x", str(fast["epochs_run"]), str(r["epochs_run"])])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.random_draws < 1:
        sys.exit("--random-draws must be at least 1")
    C.set_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda but no GPU is available")
    records: list[dict[str, Any]] = []
    with C.Stopwatch() as total, tempfile.TemporaryDirectory(prefix="bise-compare-") as tmp:
        work = args.keep_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with C.Stopwatch() as sw:
            warm_up(args, work)
        log(f"warm-up {sw.seconds:.1f}s")
        for seed in args.seeds:
            for rho in args.rho:
                records += run_one(args, rho, seed, work)

    seeds = ", ".join(map(str, args.seeds))
    print(f"\n### BISE vs baselines on the test split ({args.arch}, biased-digits n={args.n} size={args.size}, "
          f"vanilla {args.vanilla_epochs} epochs, seeds {seeds}; accuracies in %)\n")
    headers = ["rho", "method", "unbiased acc", "accuracy", "worst-group", "frac kept", "wall s"]
    print(C.markdown_table(headers, summary_rows(records, args.rho)))
    if args.paper:
        print("\n### Wall time of one BISE job: fast (default) vs paper preset\n")
        print(C.markdown_table(["rho", "seed", "fast s", "paper s", "paper/fast", "fast epochs", "paper epochs"],
                               paper_rows(records)))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{platform.processor() or platform.machine()}; total {total.seconds / 60:.1f} min")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        doc = {"args": meta, "torch": torch.__version__, "total_s": total.seconds, "results": records}
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
