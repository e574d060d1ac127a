"""Where progress events go: a tqdm bar for people, JSON lines for machines (the worker).

The engine emits plain dicts (``type`` = phase | step | period | done); these sinks only
render them, so the loop never knows who is watching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


class JsonLinesProgress:
    """One JSON object per line; steps are passed through as they come."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class ProgressBar:
    """A tqdm bar over mask steps showing epoch, tau, loss terms and units kept."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "phase":
            if event["phase"] != "prune" and self.bar is None:
                tqdm.write(f"[bise] {event['phase'].replace('_', ' ')}")
        elif kind == "step":
            if self.bar is None:
                self.bar = tqdm(total=event["total_steps"], desc="bise", unit="step", dynamic_ncols=True)
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix_str(
                f"ep {event['epoch']} tau {event['tau']:.3g} ce {event['ce']:.3f} mi {event['mi']:.3f} "
                f"kept {event['units_kept']}/{event['units_total']}",
                refresh=False,
            )
        elif kind == "period" and self.bar is not None and event.get("val_unbiased_accuracy") is not None:
            tqdm.write(f"[bise] period {event['period']}: val unbiased acc "
                       f"{event['val_unbiased_accuracy']:.3f}, kept {event['units_kept']}/{event['units_total']}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_ROWS = ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy",
         "worst_group_accuracy", "bias_leakage")


def _pct(value: Any) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def format_summary(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    lines = []
    for split in report["vanilla"]:
        lines.append(f"{split:>6s}  {'metric':22s} {'vanilla':>8s} {'pruned':>8s}")
        for key in _ROWS:
            lines.append(f"{'':6s}  {key:22s} {_pct(report['vanilla'][split][key]):>8s} "
                         f"{_pct(report['pruned'][split][key]):>8s}")
    sp = report["sparsity"]
    lines.append(f"units kept: {sp['units_kept']}/{sp['units_total']} ({100 * sp['fraction_kept']:.1f}%)")
    params, flops = report["params"], report["flops"]
    if params.get("slim"):
        lines.append(f"params: {params['dense']:,} -> {params['slim']:,} (slim);  "
                     f"FLOPs: {flops['dense']:,} -> {flops['slim']:,}")
    ev = report["verdict_evidence"]
    lines.append(f"verdict: {report['verdict'].upper()}  ({ev['split']} unbiased accuracy "
                 f"{_pct(ev['vanilla']).strip()}% -> {_pct(ev['pruned']).strip()}%; "
                 f"selection: {report['selection']['reason']})")
    return "\n".join(lines)


def print_summary(report: dict[str, Any], files: dict[str, Path]) -> None:
    print(format_summary(report))
    for name, path in files.items():
        print(f"  {name:12s} {path}")
