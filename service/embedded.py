"""The whole service on one machine with nothing to install: SQLite, a local folder, no Redis.

``EmbeddedService`` migrates the database, creates an API key, starts ``python -m api`` and
``python -m worker`` as child processes (their logs go to files under the home folder),
waits until the API answers ``/readyz``, and stops both on exit, even after an error or
Ctrl-C. Without ``BISE_REDIS_URL`` the Celery broker is kombu's SQLAlchemy transport on a
SQLite file and live events are polled from the database (service/settings.py), so the
same API and worker code runs here as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def embedded_environment(home: Path, port: int) -> dict[str, str]:
    """BISE_* settings of a self-contained deployment under ``home`` (existing BISE_* are dropped).

    Dropping the caller's BISE_* settings is deliberate: the embedded service must not
    write into a production database or bucket because a shell happened to export one.
    """
    home = home.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BISE_")}
    env.update({
        "BISE_DATABASE_URL": f"sqlite:///{home}/bise.db",
        "BISE_EMBEDDED_BROKER_URL": f"sqla+sqlite:///{home}/broker.db",
        "BISE_STORAGE_URL": f"file://{home}/storage",
        "BISE_WORK_DIR": str(home / "work"),
        "BISE_HOST": "127.0.0.1",
        "BISE_PORT": str(port),
        "BISE_LOG_LEVEL": "warning",
        "BISE_CPU_CONCURRENCY": "1",
        "BISE_HEARTBEAT_SECONDS": "2",
    })
    return env


@dataclass
class EmbeddedService:
    """API + worker child processes over one home folder; a context manager."""

    home: Path
    port: int = 0
    startup_timeout: float = 120.0
    #: BISE_* settings applied over the embedded ones (a benchmark points it at PostgreSQL and Redis)
    overrides: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(init=False, default_factory=dict)
    api_key: str = field(init=False, default="")
    _children: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, *args: str) -> str:
        done = subprocess.run([sys.executable, *args], env=self.env, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.home / "logs" / f"{name}.log", "ab")
        # A process group of its own: Ctrl-C in the terminal reaches us, and we stop the children in order.
        self._children.append(subprocess.Popen([sys.executable, *args], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> "EmbeddedService":
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self.port = self.port or free_port()
        self.env = {**embedded_environment(self.home, self.port), **self.overrides}
        self._run("-m", "api.admin", "migrate")
        self.api_key = self._run("-m", "api.admin", "create-key", "--project", "embedded")
        self._spawn("api", "-m", "api")
        self._spawn("worker", "-m", "worker")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for child in self._children:
                if child.poll() is not None:
                    raise RuntimeError(f"{child.args[2]} exited with {child.returncode}; see {self.home / 'logs'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API did not become ready in {self.startup_timeout:.0f} s; see {self.home / 'logs'}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown: a running job stops at its next step), then SIGKILL."""
        for child in self._children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self._children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self._children.clear()

    def __enter__(self) -> "EmbeddedService":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
