"""Run a ``bise_core`` inspection command on untrusted input in a limited child process.

The child gets a scrubbed environment (no database URL, no keys, no cloud credentials),
a private scratch folder as HOME and cwd, the limits of :mod:`worker.sandbox_exec`, and a
wall-clock timeout after which its whole process group is killed. It answers with one
JSON object on stdout; anything else is reported as a failure, never trusted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.settings import Settings

PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class SandboxResult:
    ok: bool
    data: dict[str, Any]


def _failure(code: str, message: str, param: str) -> SandboxResult:
    return SandboxResult(False, {"error": {"code": code, "message": message, "param": param}})


def run_bise(args: list[str], settings: Settings, *, param: str) -> SandboxResult:
    """``python -m bise_core ARGS --json`` under limits; the parsed JSON answer."""
    with tempfile.TemporaryDirectory(prefix="bise-sandbox-") as scratch:
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(HOME=scratch, TMPDIR=scratch, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-m", "worker.sandbox_exec", "--memory", str(settings.sandbox_memory_bytes),
               "--cpu", str(settings.sandbox_cpu_seconds)]
        if settings.sandbox_isolate_network:
            cmd.append("--no-network")
        cmd += ["--", sys.executable, "-m", "bise_core", *args, "--json"]
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=settings.sandbox_timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return _failure("validation_timeout", f"inspection took longer than {settings.sandbox_timeout_seconds:.0f} s",
                            param)
    text = out.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(text[-1]) if text else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and (proc.returncode == 0) != ("error" in answer):
        return SandboxResult(proc.returncode == 0, answer)
    if proc.returncode and proc.returncode < 0:
        why = {signal.SIGKILL: "was killed (memory or CPU limit)", signal.SIGXCPU: "ran out of CPU time",
               signal.SIGSEGV: "crashed"}.get(-proc.returncode, f"died of signal {-proc.returncode}")
        return _failure("validation_crashed", f"the inspection process {why}", param)
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    if "MemoryError" in "".join(tail) or "std::bad_alloc" in "".join(tail):
        return _failure("validation_out_of_memory",
                        f"inspection needed more than {settings.sandbox_memory_bytes} bytes of memory", param)
    return _failure("validation_failed", f"inspection failed: {tail[0][:500]}", param)


def inspect_model(path: Path, settings: Settings) -> SandboxResult:
    return run_bise(["inspect", str(path)], settings, param="file")


def inspect_dataset(uri: str, roots: list[Path], bias_columns: list[str] | None, settings: Settings) -> SandboxResult:
    args = ["dataset-info", uri]
    for root in roots:
        args += ["--data-root", str(root)]
    if bias_columns:
        args += ["--bias-columns", ",".join(bias_columns)]
    return run_bise(args, settings, param="uri")
