"""Private Redis and PostgreSQL servers that a fault test may crash and restart.

The machine's own servers are shared by the whole suite (and by CI on the same machine), so
the fault tests never touch them: they start their own ``redis-server`` and their own
PostgreSQL cluster (``initdb`` + ``pg_ctl``) on free ports, from the same Debian packages,
and kill or restart those. As root, PostgreSQL runs as the ``postgres`` user, which it
insists on.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from service.embedded import free_port


def _wait(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


class PrivateRedis:
    """``redis-server`` on a free port, nothing kept on disk (a restart loses every key)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), "redis-server")

    def crash(self) -> None:
        """SIGKILL: clients see their connections reset, queued messages are gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, down_seconds: float = 2.0) -> None:
        self.crash()
        time.sleep(down_seconds)
        self.start()


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temporary folder, trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bise-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        _wait(lambda: psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres").close() is None,
              "postgres")

    def crash(self) -> None:
        """Immediate shutdown: every connection dropped mid-transaction, as in a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self, down_seconds: float = 3.0) -> None:
        self.crash()
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        try:
            self.crash()
        except subprocess.CalledProcessError:
            pass  # already down
        shutil.rmtree(self.root, ignore_errors=True)
