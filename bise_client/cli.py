"""``bise``: the service from a terminal or a CI job, plus the local commands of bise_core.

``bise models|datasets|jobs ...`` talk to the API (``BISE_API_URL``, ``BISE_API_KEY``);
``bise prune|train-vanilla|units|inspect|dataset-info`` run bise_core on this machine.
Every remote command takes ``--json`` for machine-readable output. Exit codes: 0 ok, 1 a
``--require`` gate failed, 2 bad input or an API error, 3 the job failed or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from bise_client import gate
from bise_client.sdk import TERMINAL, BiseClient, BiseError

REMOTE = ("login", "models", "datasets", "jobs")
EXIT_GATE, EXIT_ERROR, EXIT_JOB = 1, 2, 3
METRICS = ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy",
           "bias_leakage")


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bise: error: {what} {item!r}: use KEY=VALUE")
        out[key] = value
    return out


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print(obj: Any, as_json: bool, columns: Sequence[str] = ("id", "status", "name")) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    rows = obj if isinstance(obj, list) else [obj]
    if not isinstance(obj, list):
        for key, value in obj.items():
            if value not in (None, {}, []):
                print(f"{key:18s} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        return
    table = [list(columns)] + [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def compare_table(report: dict[str, Any]) -> str:
    lines = [f"{'split':6s} {'metric':22s} {'vanilla':>8s} {'pruned':>8s} {'change':>8s}"]
    for split in ("train", "val", "test"):
        before, after = report.get("vanilla", {}).get(split), report.get("pruned", {}).get(split)
        if not before or not after:
            continue
        for key in METRICS:
            a, b = before.get(key), after.get(key)
            if a is None or b is None:
                continue
            lines.append(f"{split:6s} {key:22s} {100 * a:7.1f}% {100 * b:7.1f}% {100 * (b - a):+7.1f}")
    sp = report.get("sparsity", {})
    lines.append(f"units kept: {sp.get('units_kept')}/{sp.get('units_total')} ({100 * sp.get('fraction_kept', 0):.1f}%)"
                 f"   verdict: {report.get('verdict')}")
    return "\n".join(lines)


# -- commands ---------------------------------------------------------------------------
def _login(client: BiseClient, args: argparse.Namespace) -> int:
    """Check the key against the server, then save URL and key for later commands."""
    from bise_client.sdk import save_config

    if not client.api_key:
        import getpass

        client.api_key = getpass.getpass("API key: ").strip()
    project = client.request("GET", "/v1/project")
    path = save_config(client.base_url, client.api_key)
    if args.json:
        print(json.dumps({"project": project["name"], "project_id": project["id"], "config": str(path)}))
    else:
        print(f"logged in to {client.base_url} as project {project['name']}; saved to {path}")
    return 0


def _models(client: BiseClient, args: argparse.Namespace) -> int:
    if args.action == "upload":
        obj = client.models.upload(args.path, name=args.name, metadata=_pairs(args.metadata, "--metadata"))
        if args.wait:
            obj = client.models.wait(obj["id"], until={"ready", "invalid"})
        _print(obj, args.json)
        return EXIT_ERROR if obj["status"] == "invalid" else 0
    if args.action == "list":
        _print(list(client.models.list(status=args.status, limit=args.limit)), args.json)
        return 0
    if args.action == "delete":
        _print(client.models.delete(args.id), args.json)
        return 0
    _print(client.models.get(args.id), args.json)
    return 0


def _datasets(client: BiseClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        columns = [c.strip() for c in args.bias_columns.split(",")] if args.bias_columns else None
        obj = client.datasets.create(args.name, args.uri, bias_columns=columns,
                                     metadata=_pairs(args.metadata, "--metadata"))
        if args.wait:
            obj = client.datasets.wait(obj["id"], until={"ready", "invalid"})
        _print(obj, args.json)
        return EXIT_ERROR if obj["status"] == "invalid" else 0
    if args.action == "list":
        _print(list(client.datasets.list(status=args.status, limit=args.limit)), args.json, ("id", "status", "name", "uri"))
        return 0
    _print(client.datasets.get(args.id), args.json)
    return 0


def follow(client: BiseClient, job_id: str, quiet: bool) -> None:
    """Live progress from the SSE stream (on stderr), reconnecting after drops."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=job_id, unit="‰", file=sys.stderr, disable=quiet, leave=True,
               bar_format="{desc} {bar} {n_fmt}‰ {postfix}")
    def reconnect(last: int | None, exc: Exception) -> None:
        bar.write(f"connection lost ({type(exc).__name__}); resuming after event {last}", file=sys.stderr)
    try:
        for event in client.jobs.stream(job_id, on_reconnect=reconnect):
            data = event.get("data") or {}
            if event["type"] == "progress" and data.get("progress") is not None:
                bar.n = int(1000 * data["progress"])
                bar.set_postfix_str(f"epoch {data.get('epoch')} tau {data.get('tau', 0):.3g} "
                                    f"kept {data.get('units_kept')}/{data.get('units_total')}")
            elif event["type"] == "phase":
                bar.set_postfix_str(str(data.get("phase")))
            elif event["type"].startswith("job.") and event["type"][4:] in TERMINAL:
                bar.n = 1000
            bar.refresh()
    finally:
        bar.close()


def _jobs(client: BiseClient, args: argparse.Namespace) -> int:
    action = args.action
    if action == "create":
        requirements = [gate.parse(r) for r in args.require or []]
        hyper = json.loads(args.hyperparameters) if args.hyperparameters else {}
        hyper.update({k.replace("-", "_"): _value(v) for k, v in _pairs(args.set, "--set").items()})
        job = client.jobs.create(args.model, args.dataset, hyperparameters=hyper,
                                 metadata=_pairs(args.metadata, "--metadata"), webhook_url=args.webhook_url,
                                 idempotency_key=args.idempotency_key)
        if not args.wait:
            _print(job, args.json)
            return 0
        if job["status"] not in TERMINAL:
            follow(client, job["id"], args.json)
        return _finish(client, client.jobs.get(job["id"]), requirements, args.json)
    if action == "list":
        _print(list(client.jobs.list(status=args.status, limit=args.limit)), args.json,
               ("id", "status", "progress", "model_id", "dataset_id", "created_at"))
    elif action == "get":
        _print(client.jobs.get(args.id), args.json)
    elif action == "cancel":
        _print(client.jobs.cancel(args.id), args.json)
    elif action == "events":
        events = list(client.jobs.events(args.id))
        if args.json:
            _print(events, True)
        for e in [] if args.json else events:
            print(f"{e['id']:5d} {e['created_at']} {e['level']:7s} {e['type']:22s} {e['message']}")
    elif action == "report":
        report = client.jobs.report(args.id)
        print(json.dumps(report, indent=2) if args.json else compare_table(report))
    elif action == "download":
        path = client.jobs.download(args.id, args.out or f"{args.id}-{args.variant}.pt", variant=args.variant)
        print(json.dumps({"path": str(path)}) if args.json else path)
    return 0


def _finish(client: BiseClient, job: dict[str, Any], requirements: list[gate.Requirement], as_json: bool) -> int:
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        if as_json:
            print(json.dumps({"job": job, "passed": False}, indent=2, default=str))
        else:
            print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
        return EXIT_JOB
    report = client.jobs.report(job["id"])
    outcomes = gate.evaluate(report, requirements)
    passed = all(o.passed for o in outcomes)
    if as_json:
        print(json.dumps({"job": job, "report": report, "passed": passed,
                          "requirements": [{"requirement": o.requirement.text, "path": o.requirement.path,
                                            "value": o.value, "passed": o.passed} for o in outcomes]},
                         indent=2, default=str))
    else:
        print(compare_table(report))
        if outcomes:
            print()
            print(gate.table(outcomes))
        print(f"\nreport: {client.base_url}/v1/jobs/{job['id']}/report.html")
    return 0 if passed else EXIT_GATE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="default: $BISE_API_URL or http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="default: $BISE_API_KEY")
    sub = parser.add_subparsers(dest="resource", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    def listing(actions: Any) -> None:
        p = common(actions.add_parser("list", help="newest first"))
        p.add_argument("--status")
        p.add_argument("--limit", type=int, default=50)

    def labelled(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
        p.add_argument("--wait", action="store_true", help="wait until it is validated")

    login = sub.add_parser("login", help="check and save the API URL and key (~/.config/bise/config.json)")
    login.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="upload and inspect models").add_subparsers(dest="action", required=True)
    p = common(models.add_parser("upload", help="upload a TorchScript or torch.export archive"))
    p.add_argument("path", type=Path)
    p.add_argument("--name")
    labelled(p)
    listing(models)
    for action in ("get", "delete"):
        common(models.add_parser(action)).add_argument("id")

    datasets = sub.add_parser("datasets", help="register and inspect datasets").add_subparsers(dest="action", required=True)
    p = common(datasets.add_parser("create", help="register a dataset URI (file://, s3://, builtin:)"))
    p.add_argument("--name", required=True)
    p.add_argument("--uri", required=True)
    p.add_argument("--bias-columns")
    labelled(p)
    listing(datasets)
    common(datasets.add_parser("get")).add_argument("id")

    jobs = sub.add_parser("jobs", help="create, follow and gate BISE jobs").add_subparsers(dest="action", required=True)
    p = common(jobs.add_parser("create", help="create a job (with --wait: follow it and apply --require gates)"))
    p.add_argument("--model", required=True, help="model id (mdl_...)")
    p.add_argument("--dataset", required=True, help="dataset id (dst_...)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a hyperparameter, e.g. --set gamma=0.1")
    p.add_argument("--hyperparameters", help="all hyperparameters as a JSON object")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("--webhook-url")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="stream progress until the job ends")
    p.add_argument("--require", action="append", metavar="EXPR",
                   help="gate, e.g. 'pruned.test.unbiased_accuracy>=0.8' (repeatable; needs --wait)")
    listing(jobs)
    for action in ("get", "cancel", "events", "report"):
        common(jobs.add_parser(action)).add_argument("id")
    p = common(jobs.add_parser("download", help="download the pruned checkpoint (resumes dropped transfers)"))
    p.add_argument("id")
    p.add_argument("--variant", choices=["masked", "slim"], default="masked")
    p.add_argument("--out", type=Path)
    return parser


def _command(argv: list[str]) -> str | None:
    """The first word that is not a global option (or an option's value)."""
    words = iter(argv)
    for word in words:
        if word in ("--api-url", "--api-key"):
            next(words, None)
        elif not word.startswith("--api-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        print("\nlocal commands (no server): prune, train-vanilla, units, inspect, dataset-info "
              "(e.g. bise prune --help)")
        return 0
    if _command(argv) not in REMOTE:
        from bise_core.cli import main as local_main  # prune, train-vanilla, units, inspect, dataset-info

        return local_main(argv)
    args = build_parser().parse_args(argv)
    if args.resource == "jobs" and args.action == "create" and args.require and not args.wait:
        print("bise: error: --require needs --wait", file=sys.stderr)
        return EXIT_ERROR
    try:
        with BiseClient(args.api_url, args.api_key) as client:
            return {"login": _login, "models": _models, "datasets": _datasets, "jobs": _jobs}[args.resource](client, args)
    except BiseError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"status": exc.status, **exc.problem}}, indent=2))
        print(f"bise: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # a bad --require or --hyperparameters
        print(f"bise: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
