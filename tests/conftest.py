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
