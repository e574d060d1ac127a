"""CI gates over a report: ``pruned.test.unbiased_accuracy>=0.8``, ``sparsity.fraction_kept<=0.7``.

A bare metric name (``unbiased_accuracy>=0.8``) means the pruned model's metric on the
test split (val, then train, when there is no test split).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_EXPR = re.compile(r"^\s*([A-Za-z0-9_.\[\]-]+)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")


@dataclass
class Requirement:
    text: str
    path: str
    op: str
    threshold: float


@dataclass
class Outcome:
    requirement: Requirement
    value: float | None
    passed: bool


def parse(text: str) -> Requirement:
    match = _EXPR.match(text)
    if not match:
        raise ValueError(f"bad requirement {text!r}: use PATH OP NUMBER, e.g. 'pruned.test.unbiased_accuracy>=0.8'")
    path, op, number = match.groups()
    return Requirement(text=text.strip(), path=path, op=op, threshold=float(number))


def _lookup(report: dict[str, Any], path: str) -> Any:
    node: Any = report
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def resolve(report: dict[str, Any], path: str) -> tuple[str, Any]:
    """(full path, value); bare names are looked up on the pruned model's main split."""
    if "." not in path and path not in report:
        split = next((s for s in ("test", "val", "train") if s in report.get("pruned", {})), "test")
        path = f"pruned.{split}.{path}"
    return path, _lookup(report, path)


def evaluate(report: dict[str, Any], requirements: list[Requirement]) -> list[Outcome]:
    outcomes = []
    for req in requirements:
        req.path, value = resolve(report, req.path)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        outcomes.append(Outcome(req, number, number is not None and OPS[req.op](number, req.threshold)))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = [("requirement", "value", "result")]
    for o in outcomes:
        value = "missing" if o.value is None else f"{o.value:.4g}"
        rows.append((f"{o.requirement.path} {o.requirement.op} {o.requirement.threshold:g}", value,
                     "pass" if o.passed else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
