"""Load on the API while a job runs: status polls per second with latency percentiles, then
concurrent uploads with the API process's peak memory (it must not grow with the file size).

Usage: .venv/bin/python benchmarks/load.py [--seconds 20] [--concurrency 32] [--uploads 50]
           [--sizes 8,64] [--api-workers 1]

It starts its own service (``python -m api`` + ``python -m worker``) against this machine's
PostgreSQL (a scratch database, dropped at the end) and Redis (a private key prefix), as
production runs it; ``BISE_BENCH_PG`` and ``BISE_BENCH_REDIS`` point elsewhere. A BISE job
with a long schedule runs on the worker during the whole poll phase. The load generator is
httpx's asyncio client in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from service.embedded import EmbeddedService  # noqa: E402
from tests.service_env import scratch_database  # noqa: E402  (the suite's throw-away database)

PG = os.environ.get("BISE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BISE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
DATA = "builtin:biased-digits?rho=0.9&n=2000&size=28&seed=0"


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its children (uvicorn with several workers forks them)."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _poll_connection(host: str, port: int, requests: list[bytes], schedule: list[float],
                           samples: list[tuple[float, float, int]]) -> None:
    """One keep-alive connection sending GETs at the times in ``schedule`` (open loop).

    Latency counts from the scheduled send time, so a server that falls behind shows it
    (no coordinated omission). A minimal HTTP/1.1 client: httpx costs milliseconds of CPU
    per request, which on two cores would measure the load generator instead of the API.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for n, due in enumerate(schedule):
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(requests[n % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
            await reader.readexactly(length)
            samples.append((due, time.perf_counter() - due, int(lines[0].split()[1])))
    finally:
        writer.close()


async def _loop_lag(until: float, lags: list[float]) -> None:
    """How late this process's own event loop wakes up: a stalled generator would be
    reported as server latency, so the figure is printed next to the percentiles."""
    while time.perf_counter() < until:
        asked = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - asked - 0.005)


async def poll(url: str, headers: dict[str, str], paths: list[str], seconds: float, concurrency: int,
               rate: float, warmup: float) -> dict[str, Any]:
    """``rate`` requests per second for ``seconds`` over ``concurrency`` connections, each
    connection going round ``paths`` (from a different start, so all are polled at once)."""
    host, port = url.split("//", 1)[1].split(":")
    requests = [(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() for path in paths]
    samples: list[tuple[float, float, int]] = []  # (scheduled time, latency, HTTP status)
    lags: list[float] = []
    start = time.perf_counter() + 0.1
    total = int(rate * seconds)
    times = [start + i / rate for i in range(total)]
    watcher = asyncio.ensure_future(_loop_lag(start + seconds, lags))
    await asyncio.gather(*(_poll_connection(host, int(port), requests[c % len(requests):] + requests[:c % len(requests)],
                                            times[c::concurrency], samples)
                           for c in range(concurrency)))
    elapsed = time.perf_counter() - start
    await watcher
    counted = [(due - start, latency, status) for due, latency, status in samples if due >= start + warmup]
    latencies = [latency for _, latency, _ in counted]
    worst: dict[int, float] = {}
    for offset, latency, _ in counted:
        worst[int(offset)] = max(worst.get(int(offset), 0.0), latency)
    return {"requests": len(latencies), "rps": len(samples) / elapsed,
            "errors": sum(status != 200 for _, _, status in counted),
            "generator_lag_ms": 1000 * max(lags, default=0.0),
            "slowest_seconds": sorted(worst.items(), key=lambda kv: -kv[1])[:3],
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 0.95),
            "p99_ms": 1000 * percentile(latencies, 0.99), "max_ms": 1000 * max(latencies)}


async def uploads(url: str, headers: dict[str, str], path: Path, count: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        async def one(i: int) -> float:
            start = time.perf_counter()
            with path.open("rb") as handle:
                res = await client.post("/v1/models", files={"file": (f"m{i}.pt", handle)}, data={"name": f"load-{i}"})
            res.raise_for_status()
            return time.perf_counter() - start
        started = time.perf_counter()
        times = await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - started
    size = path.stat().st_size
    return {"seconds": elapsed, "MB/s": count * size / 1e6 / elapsed, "p50_s": statistics.median(times),
            "max_s": max(times)}


def train_model(out: Path) -> Path:
    """In a child process: torch in this one would make its garbage collections long enough
    to show up as the API's latency (measured: 200 ms pauses of the generator's loop)."""
    subprocess.run([sys.executable, "-m", "bise_core", "train-vanilla", "--data", DATA, "--arch", "cnn",
                    "--epochs", "2", "--out", str(out)], check=True, cwd=ROOT)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0, help="status polls per second to offer")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections the polls spread over")
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--sizes", default="8,64", help="upload sizes in MB, comma-separated")
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--worker-nice", type=int, default=None,
                        help="BISE_WORKER_NICE for the worker (default: the setting's default)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of polls sent but left out of the figures (connections, first reads)")
    parser.add_argument("--jobs", type=int, default=8,
                        help="jobs polled: one running the whole time, the others finished (cancelled)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bise-load-") as tmp, scratch_database(PG, prefix="bise_bench") as database:
        root = Path(tmp)
        tag = uuid.uuid4().hex[:6]
        overrides = {"BISE_DATABASE_URL": database, "BISE_REDIS_URL": REDIS, "BISE_REDIS_PREFIX": f"bench-{tag}:",
                     "BISE_QUEUE_GPU": f"gpu-{tag}", "BISE_QUEUE_CPU": f"cpu-{tag}", "BISE_DEVICE": "cpu",
                     "BISE_API_WORKERS": str(args.api_workers), "BISE_RATE_LIMIT_PER_MINUTE": "0",
                     "BISE_MAX_UPLOAD_BYTES": str(2 * 1024**3)}
        if args.worker_nice is not None:
            overrides["BISE_WORKER_NICE"] = str(args.worker_nice)
        model_path = train_model(root / "vanilla.pt")
        with EmbeddedService(root / "home", overrides=overrides) as service:
            headers = {"Authorization": f"Bearer {service.api_key}"}
            http = httpx.Client(base_url=service.url, headers=headers, timeout=60)
            with model_path.open("rb") as handle:
                model = http.post("/v1/models", files={"file": ("vanilla.pt", handle)}).json()
            dataset = http.post("/v1/datasets", json={"name": "digits", "uri": DATA}).json()
            for kind, obj in (("models", model), ("datasets", dataset)):
                while http.get(f"/v1/{kind}/{obj['id']}").json()["status"] == "validating":
                    time.sleep(0.5)
            long = {"tau_decay": 0.999, "tau_min": 0.001, "max_epochs": 5000, "early_stop_periods": 0}
            job = http.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                              "hyperparameters": long}).json()
            while http.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
                time.sleep(0.5)
            finished = []
            for _ in range(args.jobs - 1):
                other = http.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                                    "hyperparameters": long}).json()
                http.post(f"/v1/jobs/{other['id']}/cancel")
                finished.append(other["id"])
            api_pid = service._children[0].pid
            paths = [f"/v1/jobs/{job_id}" for job_id in [job["id"], *finished]]
            gc.collect()
            gc.freeze()  # the set-up's objects are not scanned again by collections during the run
            polls = asyncio.run(poll(service.url, headers, paths, args.seconds + args.warmup, args.concurrency,
                                     args.rate, args.warmup))
            still = http.get(f"/v1/jobs/{job['id']}").json()["status"]
            rows = []
            for size_mb in (int(s) for s in args.sizes.split(",") if s.strip()):
                blob = root / f"upload-{size_mb}.bin"
                with blob.open("wb") as handle:
                    for _ in range(size_mb):
                        handle.write(os.urandom(1024**2))
                before = peak_rss_mb(api_pid)
                result = asyncio.run(uploads(service.url, headers, blob, args.uploads))
                rows.append((size_mb, result, before, peak_rss_mb(api_pid)))
                blob.unlink()
            http.post(f"/v1/jobs/{job['id']}/cancel")
            http.close()
    print(f"status polls: GET /v1/jobs/{{id}} of {args.jobs} jobs offered at {args.rate:.0f}/s over "
          f"{args.concurrency} connections for {args.seconds:.0f} s after {args.warmup:.0f} s of warm-up, "
          f"{args.api_workers} API worker process(es), a BISE job {still} on the worker meanwhile")
    print(f"{'requests':>9s} {'req/s':>8s} {'errors':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")
    print(f"{polls['requests']:9d} {polls['rps']:8.0f} {polls['errors']:7d} {polls['p50_ms']:7.1f} "
          f"{polls['p95_ms']:7.1f} {polls['p99_ms']:7.1f} {polls['max_ms']:7.1f}")
    print(f"load generator's worst event-loop lag: {polls['generator_lag_ms']:.0f} ms")
    print("slowest one-second windows (second from the start, warm-up included: worst latency): "
          + ", ".join(f"{second}: {1000 * worst:.0f} ms" for second, worst in polls["slowest_seconds"]))
    print(f"\n{args.uploads} concurrent model uploads per size; API peak RSS (VmHWM) before and after")
    print(f"{'size MB':>8s} {'total MB':>9s} {'seconds':>8s} {'MB/s':>7s} {'p50 s':>7s} {'max s':>7s} "
          f"{'RSS before':>11s} {'RSS after':>10s}")
    for size_mb, r, before, after in rows:
        print(f"{size_mb:8d} {size_mb * args.uploads:9d} {r['seconds']:8.1f} {r['MB/s']:7.0f} {r['p50_s']:7.2f} "
              f"{r['max_s']:7.2f} {before:10.0f}M {after:9.0f}M")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
