"""``python -m service.demo``: the main job end to end on the embedded service (README's first command).

Trains a small plain CNN on built-in coloured digits (its shortcut is the colour), starts
the API and a worker on SQLite and a local folder (service/embedded.py), then does what a
user does over HTTP with the SDK: upload the model, register the dataset, create a job,
follow its event stream with a progress bar, print the before/after table, download the
pruned checkpoint(s), the mask and the report page, and shut the service down. Exit code
0 when the job succeeded, 3 when it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from bise_client.sdk import BiseClient

DEFAULT_DATA = "builtin:biased-digits?rho=0.95&n=3000&seed=0"


def train_vanilla(data: str, out: Path, epochs: int, arch: str) -> Path:
    from bise_core.cli import main as local_main

    code = local_main(["train-vanilla", "--data", data, "--arch", arch, "--epochs", str(epochs), "--out", str(out)])
    if code != 0:
        raise SystemExit(code)
    return out


def run(args: argparse.Namespace) -> int:
    from bise_client.cli import compare_table, follow
    from bise_client.sdk import BiseClient, BiseError
    from service.embedded import EmbeddedService

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "vanilla.pt"
    if not model_path.exists() or args.retrain:
        print(f"[demo] training a plain {args.arch} on {args.data} ({args.epochs} epochs)", file=sys.stderr)
        train_vanilla(args.data, model_path, args.epochs, args.arch)
    print(f"[demo] starting the embedded service (SQLite + local folder, no Redis) in {args.home}", file=sys.stderr)
    with EmbeddedService(args.home) as service, BiseClient(service.url, service.api_key) as client:
        print(f"[demo] API on {service.url}; logs in {args.home / 'logs'}", file=sys.stderr)
        try:
            model = client.models.wait(client.models.upload(model_path, name="demo-vanilla")["id"],
                                       until={"ready", "invalid"})
            dataset = client.datasets.wait(client.datasets.create("demo-digits", args.data)["id"],
                                           until={"ready", "invalid"})
            for obj in (model, dataset):
                if obj["status"] != "ready":
                    print(f"[demo] {obj['id']} is {obj['status']}: {json.dumps(obj.get('error'))}", file=sys.stderr)
                    return 3
            job = client.jobs.create(model["id"], dataset["id"], hyperparameters=json.loads(args.hyperparameters))
            print(f"[demo] job {job['id']} created over HTTP; following its event stream", file=sys.stderr)
            follow(client, job["id"], quiet=False)
            job = client.jobs.get(job["id"])
            if job["status"] != "succeeded":
                print(f"[demo] job {job['status']}: {json.dumps(job.get('error'))}", file=sys.stderr)
                return 3
            report = client.jobs.report(job["id"])
            paths = _download(client, job, out)
        except BiseError as exc:
            print(f"[demo] API error: {exc}", file=sys.stderr)
            return 2
    print(compare_table(report))
    print()
    for label, path in paths.items():
        print(f"{label:18s} {path}")
    print("[demo] service stopped", file=sys.stderr)
    return 0


def _download(client: "BiseClient", job: dict[str, Any], out: Path) -> dict[str, Path]:
    """Everything the job produced, into ``out`` (the service is about to stop)."""
    paths: dict[str, Path] = {}
    artifacts = job.get("artifacts") or {}
    for variant in ("masked", "slim"):  # slim exists where the architecture allows it
        if variant not in artifacts:
            continue
        info = artifacts[variant]
        dest = out / f"pruned{'' if variant == 'masked' else '_' + variant}.{info.get('ext', 'pt')}"
        paths[f"{variant} checkpoint"] = client.jobs.download(job["id"], dest, variant=variant)
    (out / "report.json").write_text(json.dumps(client.jobs.report(job["id"]), indent=2))
    (out / "mask.json").write_text(json.dumps(client.jobs.mask(job["id"]), indent=2))
    (out / "report.html").write_text(client.jobs.report_html(job["id"]))
    paths.update({"report page": out / "report.html", "report (JSON)": out / "report.json", "mask": out / "mask.json"})
    return {label: path.resolve() for label, path in paths.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="dataset URI for training and pruning")
    parser.add_argument("--arch", default="cnn-wide", help="bise_core.zoo architecture of the plain model")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of plain training")
    parser.add_argument("--hyperparameters", default="{}", help="job hyperparameters as JSON")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where results are written")
    parser.add_argument("--home", type=Path, default=Path(".bise/demo"),
                        help="the embedded service's database, broker, storage and logs")
    parser.add_argument("--retrain", action="store_true", help="train the plain model even if out/vanilla.pt exists")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
