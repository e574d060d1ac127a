"""The report as a self-contained HTML page (no external assets).

Vanilla vs pruned per split, the verdict and selection evidence, and three plots rendered
to inline SVG (learning curves, units kept per layer, accuracy per (label, bias) group).
Everything from the report is escaped: layer names come from user models.
"""

from __future__ import annotations

from html import escape
from typing import Any

from bise_core import report_plots as plots

METRICS = [("accuracy", "accuracy"), ("unbiased_accuracy", "unbiased"), ("aligned_accuracy", "bias-aligned"),
           ("conflicting_accuracy", "bias-conflicting"), ("worst_group_accuracy", "worst group"),
           ("bias_leakage", "bias leakage")]
STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.improved{color:#0a7d32}.no_improvement{color:#a15c00}.up{color:#0a7d32}.down{color:#b00020}"""


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _delta(before: Any, after: Any) -> str:
    if before is None or after is None:
        return ""
    diff = 100 * (float(after) - float(before))
    return f'<span class="{"up" if diff >= 0 else "down"}">{diff:+.1f}</span>'


def _metrics_table(report: dict[str, Any]) -> str:
    rows = []
    for split in ("train", "val", "test"):
        before, after = report.get("vanilla", {}).get(split), report.get("pruned", {}).get(split)
        if not before or not after:
            continue
        for key, label in METRICS:
            rows.append(f"<tr><td>{split}</td><td>{label}</td><td>{_pct(before.get(key))}</td>"
                        f"<td>{_pct(after.get(key))}</td><td>{_delta(before.get(key), after.get(key))}</td></tr>")
    return ("<table><tr><th>split</th><th>metric</th><th>vanilla</th><th>pruned</th><th>change (points)</th></tr>"
            + "".join(rows) + "</table>")


def _layers_table(report: dict[str, Any]) -> str:
    layers = report.get("sparsity", {}).get("layers", [])
    rows = "".join(f"<tr><td>{escape(str(l['name']))}</td><td>{l['kept']}</td><td>{l['total']}</td>"
                   f"<td>{_pct(l['kept'] / l['total'] if l['total'] else None)}</td></tr>" for l in layers)
    return f"<table><tr><th>layer</th><th>kept</th><th>total</th><th>fraction</th></tr>{rows}</table>"


def render_report_html(report: dict[str, Any], title: str = "BISE report") -> str:
    verdict = str(report.get("verdict", "unknown"))
    sparsity = report.get("sparsity", {})
    selection = report.get("selection", {})
    params, flops = report.get("params", {}), report.get("flops", {})
    split = next((s for s in ("test", "val", "train") if s in report.get("pruned", {})), None)
    curves = plots.learning_curves(report.get("history") or [])
    layers = plots.layer_sparsity(sparsity.get("layers") or [])
    heatmap = plots.group_heatmap(report["vanilla"][split]["groups"], report["pruned"][split]["groups"], split) \
        if split and split in report.get("vanilla", {}) else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p>Verdict: <strong class="{escape(verdict)}">{escape(verdict)}</strong> &middot; units kept
{sparsity.get('units_kept', '-')} / {sparsity.get('units_total', '-')} ({_pct(sparsity.get('fraction_kept'))})
&middot; bias supervision: {escape(str(report.get('bias_supervision', '-')))}</p>
<p>Selection: {escape(str(selection.get('reason', '-')))}</p>
<h2>Vanilla vs pruned</h2>{_metrics_table(report)}
<h2>Size</h2><table><tr><th></th><th>dense</th><th>slim</th></tr>
<tr><td>parameters</td><td>{params.get('dense', '-')}</td><td>{params.get('slim', '-')}</td></tr>
<tr><td>FLOPs</td><td>{flops.get('dense', '-')}</td><td>{flops.get('slim', '-')}</td></tr></table>
<h2>Learning curves</h2><figure id="learning-curves">{curves}</figure>
<h2>Accuracy per group</h2><figure id="group-accuracy">{heatmap}</figure>
<h2>Units kept per layer</h2><figure id="layer-sparsity">{layers}</figure>{_layers_table(report)}
</body></html>"""
