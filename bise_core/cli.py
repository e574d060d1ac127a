"""``bise`` local mode: arguments in, progress out, nothing else.

``bise prune MODEL --data URI --out DIR`` runs a whole job without any server;
``bise train-vanilla`` trains a plain (biased) model on a dataset, for demos and trials;
``bise units MODEL --data URI`` lists what would be pruned.
Hyperparameter flags are generated from :class:`BiseConfig`, so the CLI can never drift
from the job schema. Input errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from bise_core.config import BiseConfig
from bise_core.errors import BiseInputError

EXIT_INPUT_ERROR = 2
_SPECIAL = {"seed", "device"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(argparse type, choices) for a BiseConfig field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar_type(args[0])
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if annotation is bool:
        return lambda v: v.lower() in {"1", "true", "yes", "on"}, None
    return (annotation if annotation in (int, float, str) else str), None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameters (defaults come from --preset)")
    for name, field in BiseConfig.model_fields.items():
        kind, choices = _scalar_type(field.annotation)
        help_text = field.description or ""
        default_note = f" (default: {field.default})" if field.default is not None else ""
        target = parser if name in _SPECIAL else group
        target.add_argument(_flag(name), dest=name, type=kind, choices=choices, default=None,
                            help=help_text + default_note)


def config_from_args(ns: argparse.Namespace) -> BiseConfig:
    values = {name: getattr(ns, name) for name in BiseConfig.model_fields if getattr(ns, name, None) is not None}
    return BiseConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bise", description="Debias a trained model by pruning (BISE).")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="find a bias-invariant subnetwork of MODEL")
    prune.add_argument("model", type=Path, help="TorchScript (torch.jit.save) or torch.export (.pt2) archive")
    prune.add_argument("--data", required=True, help="dataset URI: path, file://, or builtin:NAME?k=v")
    prune.add_argument("--out", required=True, type=Path, help="output directory")
    prune.add_argument("--json-progress", action="store_true", help="one JSON line per step on stdout")
    prune.add_argument("--data-root", action="append", type=Path, default=None,
                       help="only read datasets under this folder (repeatable)")
    prune.add_argument("--bias-columns", default=None, help="comma-separated manifest bias columns")
    _add_config_flags(prune)

    train = sub.add_parser("train-vanilla", help="train a plain model on a dataset (for trials and demos)")
    train.add_argument("--data", required=True)
    train.add_argument("--arch", default="cnn")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--format", choices=["torchscript", "traced", "export"], default="torchscript")
    train.add_argument("--out", required=True, type=Path)

    units = sub.add_parser("units", help="list the prunable units MODEL has")
    units.add_argument("model", type=Path)
    units.add_argument("--data", required=True)
    units.add_argument("--classifier", default=None)

    inspect = sub.add_parser("inspect", help="summarise MODEL without a dataset (format, params, units)")
    inspect.add_argument("model", type=Path)
    inspect.add_argument("--input-shape", default=None, help="per-sample input shape, e.g. 3,32,32")
    inspect.add_argument("--json", action="store_true", help="one JSON object on stdout (errors too)")

    info = sub.add_parser("dataset-info", help="classes, bias attributes and (label, bias) group counts of URI")
    info.add_argument("uri")
    info.add_argument("--data-root", action="append", type=Path, default=None,
                      help="only read datasets under this folder (repeatable)")
    info.add_argument("--bias-columns", default=None, help="comma-separated manifest bias columns")
    info.add_argument("--json", action="store_true", help="one JSON object on stdout (errors too)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prune":
            return _cmd_prune(args)
        if args.command == "train-vanilla":
            return _cmd_train(args)
        if args.command in ("inspect", "dataset-info"):
            return _cmd_summary(args)
        return _cmd_units(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "hyperparameters"
        print(f"bise: error: {_flag(field) if field in BiseConfig.model_fields else field}: {first['msg']}",
              file=sys.stderr)
        return EXIT_INPUT_ERROR
    except BiseInputError as exc:
        print(f"bise: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def _columns(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _cmd_prune(args: argparse.Namespace) -> int:
    from bise_core.pipeline import prune
    from bise_core.progress import JsonLinesProgress, ProgressBar, print_summary

    config = config_from_args(args)
    progress = JsonLinesProgress(sys.stdout) if args.json_progress else ProgressBar()
    try:
        result = prune(args.model, args.data, args.out, config, on_progress=progress, data_roots=args.data_root,
                       bias_columns=_columns(args.bias_columns))
    finally:
        progress.close()
    if args.json_progress:
        print(json.dumps({"type": "result", "verdict": result.report["verdict"],
                          "files": {k: str(v) for k, v in result.files.items()}}), flush=True)
    else:
        print_summary(result.report, result.files)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from bise_core import zoo
    from bise_core.data import open_dataset
    from bise_core.vanilla import save_archive, train_vanilla

    data = open_dataset(args.data)
    train = data.splits["train"]
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same vanilla model
    try:
        model = zoo.build(args.arch, data.input_shape, data.num_classes)
    except ValueError as exc:
        raise BiseInputError(str(exc), param="arch") from exc
    train_vanilla(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed)
    save_archive(model, train.x[:2], args.out, args.format)
    print(f"saved {args.format} model to {args.out}")
    return 0


def _cmd_units(args: argparse.Namespace) -> int:
    from bise_core.backends import prepare
    from bise_core.data import open_dataset
    from bise_core.models import load_model

    data = open_dataset(args.data)
    example = data.splits["train"].x[:2]
    prepared = prepare(load_model(args.model, example), example, classifier=args.classifier)
    graph = prepared.units
    print(f"backend: {prepared.backend}")
    print(f"classifier: {graph.classifier} ({graph.num_classes} outputs)")
    for unit in graph.units:
        print(f"  {unit.name:40s} {unit.kind:6s} {unit.size:6d} units  zeroes {', '.join(unit.zero_params)}")
    print(f"total: {graph.total_units} units in {len(graph.units)} layers")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """``inspect`` and ``dataset-info``: a JSON summary, or a JSON error, never a traceback.

    Their input is untrusted (the service runs them on uploads), so any failure is the
    input's: it is reported as ``{"error": {code, message, param}}`` with exit code 2.
    """
    from bise_core.inspect import dataset_info, inspect_model

    param = "model" if args.command == "inspect" else "uri"
    try:
        if args.command == "inspect":
            summary = inspect_model(args.model, args.input_shape)
        else:
            summary = dataset_info(args.uri, args.data_root, _columns(args.bias_columns))
    except Exception as exc:  # a hostile or broken file can make torch fail in any way
        if _out_of_memory(exc):
            # No JSON answer: the sandbox recognises this line and reports its memory limit.
            print(f"bise: error: MemoryError: inspecting the {param} ran out of memory", file=sys.stderr)
            return 1
        error = _error_body(exc, param)
    else:
        print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
        return 0
    if args.json:
        print(json.dumps({"error": error}))
    else:
        print(f"bise: error: {error['message']}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def _error_body(exc: Exception, param: str) -> dict[str, str]:
    if isinstance(exc, BiseInputError):
        # Keep the specific key at fault (e.g. ``train_b``) in the message; ``param`` names the argument.
        specific = exc.param not in (None, "model", "data", "uri")
        return {"code": exc.code, "message": f"{exc.param}: {exc.message}" if specific else exc.message,
                "param": param}
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"code": "invalid_model" if param == "model" else "invalid_dataset",
            "message": f"{type(exc).__name__}: {first}"[:500], "param": param}


def _out_of_memory(exc: BaseException | None) -> bool:
    """MemoryError, or torch's allocator failing, possibly wrapped in one of our errors."""
    while exc is not None:
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "bad_alloc" in str(exc):
            return True
        exc = exc.__cause__
    return False


if __name__ == "__main__":
    raise SystemExit(main())
