"""Shared fixtures: small builtin datasets and vanilla models saved the way users save them.

Everything is generated here (no download); sizes are chosen so the whole suite stays well
under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bise_core import zoo
from bise_core.data import open_dataset
from bise_core.data.splits import Dataset
from bise_core.vanilla import save_archive, train_vanilla

TINY_URI = "builtin:biased-digits?rho=0.9&n=400&size=16&seed=1"


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return open_dataset(TINY_URI)


def make_archive(tmp: Path, arch: str, data: Dataset, fmt: str = "torchscript", epochs: int = 1) -> Path:
    """Train ``arch`` briefly on ``data`` and save it in ``fmt``."""
    torch.manual_seed(0)
    model = zoo.build(arch, data.input_shape, data.num_classes)
    train_vanilla(model, data.splits["train"], epochs=epochs)
    return save_archive(model, data.splits["train"].x[:2], tmp / f"{arch}-{fmt}.pt", fmt)


@pytest.fixture(scope="session")
def archive_factory(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset):
    """Cached trained archives keyed by (arch, fmt)."""
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("archives")

    def get(arch: str, fmt: str = "torchscript") -> Path:
        if (arch, fmt) not in cache:
            cache[(arch, fmt)] = make_archive(root, arch, tiny_data, fmt)
        return cache[(arch, fmt)]

    return get


# -- the service: real PostgreSQL and Redis, a private database and namespace per run -----
@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory):
    import os

    from service.migrate import upgrade
    from service.settings import get_settings
    from tests.service_env import apply_environment, scratch_database, service_environment

    saved = dict(os.environ)
    with scratch_database() as url:
        env = service_environment(tmp_path_factory.mktemp("service"), url)
        apply_environment(env)
        upgrade()
        yield env
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def client(service_env):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def _new_key(project: str) -> str:
    from service.db import session_scope
    from service.keys import create_key

    with session_scope() as session:
        return create_key(session, project)[1]


@pytest.fixture(scope="session")
def auth(service_env) -> dict[str, str]:
    """Headers of a key of project 'alpha'."""
    return {"Authorization": f"Bearer {_new_key('alpha')}"}


@pytest.fixture(scope="session")
def other_auth(service_env) -> dict[str, str]:
    """Headers of a key of another project, 'beta'."""
    return {"Authorization": f"Bearer {_new_key('beta')}"}


@pytest.fixture(scope="session")
def worker_proc(service_env, tmp_path_factory: pytest.TempPathFactory):
    from tests.service_env import start_worker

    proc = start_worker(service_env, tmp_path_factory.mktemp("logs") / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def live_api(service_env, worker_proc, tmp_path_factory: pytest.TempPathFactory):
    """A ``python -m api`` process (and the session's worker): its base URL."""
    from tests.service_env import start_api

    proc, url = start_api(service_env, tmp_path_factory.mktemp("logs") / "api.log")
    yield url
    proc.stop()
    assert "bise_sk_" not in proc.output().replace("bise_sk_[redacted]", ""), "an API key reached the log"
