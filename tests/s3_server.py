"""A real S3-compatible HTTP endpoint for tests: moto's standalone server in its own process.

Running moto as a separate process (instead of ``moto.mock_aws`` patching botocore in the
test process) means the code under test talks HTTP to an endpoint exactly as it would to
MinIO or AWS, and other processes started by a test (API server, workers) can share it
through ``BISE_S3_ENDPOINT_URL``.

Usage::

    with moto_s3_server() as endpoint:          # also sets dummy AWS_* credentials
        create_bucket(endpoint, "artifacts")
        storage = S3Storage("artifacts", "prefix", endpoint_url=endpoint)

Child processes that should reach the server need :data:`DUMMY_AWS_ENV` in their
environment too (the context manager only changes ``os.environ`` of this process, which
children started inside the block inherit).
"""

from __future__ import annotations

import contextlib
import os
from service.embedded import free_port
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DUMMY_AWS_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # keep a developer's ~/.aws and the EC2 metadata endpoint out of the tests
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# set in a developer's shell, these would override or break the dummy credentials above
_CLEARED_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                     "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

HOST = "127.0.0.1"


@contextlib.contextmanager
def aws_test_env() -> Iterator[None]:
    """Set dummy AWS credentials in ``os.environ`` for the block, then restore it."""
    saved = {name: os.environ.get(name) for name in (*DUMMY_AWS_ENV, *_CLEARED_AWS_VARS)}
    try:
        for name in _CLEARED_AWS_VARS:
            os.environ.pop(name, None)
        os.environ.update(DUMMY_AWS_ENV)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


def _start(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **DUMMY_AWS_ENV, "MOTO_PORT": str(port)}
    with open(log, "ab") as out:  # a file, not a pipe: werkzeug logs every request
        return subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, timeout: float) -> bool:
    """True once the server answers HTTP; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _answers(endpoint + "/"):
            return True
        time.sleep(0.1)
    raise TimeoutError(f"moto server at {endpoint} did not answer within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # moto.server exits cleanly on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def moto_s3_server(timeout: float = 30.0, attempts: int = 3) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port of 127.0.0.1, wait until it answers,
    yield its endpoint URL (``http://127.0.0.1:PORT``) with dummy AWS credentials set in
    ``os.environ``, and stop the process (and restore the environment) on exit."""
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp, aws_test_env():
        log = Path(tmp) / "moto.log"
        for _ in range(attempts):
            port = free_port()
            endpoint = f"http://{HOST}:{port}"
            proc = _start(port, log)
            try:
                if _wait_ready(proc, endpoint, timeout):
                    yield endpoint
                    return
            finally:
                _stop(proc)
        raise RuntimeError(f"moto server did not start; its output:\n{log.read_text(errors='replace')[-4000:]}")


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client for the test server (path-style, like the service uses)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_AWS_ENV["AWS_DEFAULT_REGION"],
                        aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


def create_bucket(endpoint: str, name: str) -> None:
    """Create ``name`` on the test server (the service itself never creates buckets)."""
    s3_client(endpoint).create_bucket(Bucket=name)
