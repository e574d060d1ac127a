"""Per-epoch checkpoints: a run stopped after any epoch and resumed ends exactly where an
uninterrupted run with the same seed ends (same mask, same history)."""

from __future__ import annotations

import json

import pytest

from bise_core.checkpoint import FileCheckpointer
from bise_core.config import BiseConfig
from bise_core.loop import Cancelled
from bise_core.pipeline import prune
from tests.conftest import TINY_URI

CONFIG = dict(tau_decay=0.3, tau_min=0.02, aux_epochs=2, aux_pretrain_epochs=2, seed=3)


def stop_after_epochs(n: int):
    """A should_stop that fires at the first step of epoch ``n`` (after n full epochs)."""
    seen: dict[str, int] = {"epoch": -1}

    def on_progress(event: dict) -> None:
        if event.get("type") == "step":
            seen["epoch"] = event["epoch"]

    return on_progress, lambda: seen["epoch"] >= n


def interrupted_then_resumed(model, tmp_path, config: dict, stop_epoch: int) -> list[dict]:
    """Prune into tmp_path/b, stopped after ``stop_epoch`` epochs, then resumed from the
    checkpoint; returns the resumed run's progress events."""
    ckpt = FileCheckpointer(tmp_path / "resume.ckpt")
    progress, stop = stop_after_epochs(stop_epoch)
    with pytest.raises(Cancelled):
        prune(model, TINY_URI, tmp_path / "b", BiseConfig(**config), on_progress=progress, should_stop=stop,
              checkpoint=ckpt)
    assert ckpt.path.is_file()
    events: list[dict] = []
    prune(model, TINY_URI, tmp_path / "b", BiseConfig(**config), on_progress=events.append, checkpoint=ckpt)
    return events


def outcome(out) -> tuple[dict, list]:
    report = json.loads((out / "report.json").read_text())
    return json.loads((out / "mask.json").read_text()), report["history"]


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_interrupted_then_resumed_equals_uninterrupted(archive_factory, tmp_path, arch):
    model = archive_factory(arch)
    prune(model, TINY_URI, tmp_path / "a", BiseConfig(**CONFIG))
    events = interrupted_then_resumed(model, tmp_path, CONFIG, stop_epoch=2)
    resumed = [e for e in events if e["type"] == "resumed"]
    assert resumed and resumed[0]["epoch"] == 2
    assert outcome(tmp_path / "b") == outcome(tmp_path / "a")


def test_unreadable_checkpoint_starts_over(archive_factory, tmp_path):
    model = archive_factory("mlp")
    prune(model, TINY_URI, tmp_path / "a", BiseConfig(**CONFIG))
    bad = tmp_path / "resume.ckpt"
    bad.write_bytes(b"PK\x03\x04truncated")
    events: list[dict] = []
    prune(model, TINY_URI, tmp_path / "b", BiseConfig(**CONFIG), on_progress=events.append,
          checkpoint=FileCheckpointer(bad))
    assert any(e["type"] == "checkpoint_unreadable" for e in events)
    assert outcome(tmp_path / "b") == outcome(tmp_path / "a")


def test_resume_in_the_middle_of_a_tau_period(archive_factory, tmp_path):
    """tau_period=2: the checkpoint after an odd epoch carries no period record yet."""
    config = dict(CONFIG, tau_period=2, tau_decay=0.5, tau_min=0.2, group_balance="sampling")
    model = archive_factory("mlp")
    prune(model, TINY_URI, tmp_path / "a", BiseConfig(**config))
    events = interrupted_then_resumed(model, tmp_path, config, stop_epoch=3)
    assert [e["epoch"] for e in events if e["type"] == "resumed"] == [3]
    assert outcome(tmp_path / "b") == outcome(tmp_path / "a")


def test_truncated_or_foreign_checkpoint_starts_over(archive_factory, tmp_path):
    model = archive_factory("mlp")
    prune(model, TINY_URI, tmp_path / "a", BiseConfig(**CONFIG))
    ckpt = FileCheckpointer(tmp_path / "resume.ckpt")
    other = BiseConfig(**dict(CONFIG, seed=4))  # another job's checkpoint: must not be resumed
    prune(model, TINY_URI, tmp_path / "other", other, checkpoint=ckpt)
    events: list[dict] = []
    prune(model, TINY_URI, tmp_path / "b", BiseConfig(**CONFIG), on_progress=events.append, checkpoint=ckpt)
    unreadable = [e for e in events if e["type"] == "checkpoint_unreadable"]
    assert unreadable and "another job" in unreadable[0]["reason"]
    assert outcome(tmp_path / "b") == outcome(tmp_path / "a")

    data = ckpt.path.read_bytes()  # now this job's own, complete checkpoint
    ckpt.path.write_bytes(data[: len(data) // 2])
    events.clear()
    prune(model, TINY_URI, tmp_path / "c", BiseConfig(**CONFIG), on_progress=events.append, checkpoint=ckpt)
    assert any(e["type"] == "checkpoint_unreadable" for e in events)
    assert not any(e["type"] == "resumed" for e in events)
    assert outcome(tmp_path / "c") == outcome(tmp_path / "a")


def test_a_failing_checkpoint_store_does_not_fail_the_job(archive_factory, tmp_path):
    class Broken:
        def load(self):
            return None

        def save(self, state):
            raise OSError("disk full")

    events: list[dict] = []
    prune(archive_factory("mlp"), TINY_URI, tmp_path, BiseConfig(**CONFIG), on_progress=events.append,
          checkpoint=Broken())
    failed = [e for e in events if e["type"] == "checkpoint_failed"]
    assert failed and "disk full" in failed[0]["reason"]
    assert (tmp_path / "mask.json").is_file()


def test_file_checkpointer_is_atomic_and_weights_only(tmp_path):
    import torch

    from bise_core.checkpoint import CheckpointUnreadable

    ckpt = FileCheckpointer(tmp_path / "sub" / "state.ckpt")
    assert ckpt.load() is None
    state = {"epoch": 3, "tau": 0.25, "history": [{"ce": 1.5, "val": None}], "m": [torch.arange(4.0)],
             "rng": torch.get_rng_state()}
    ckpt.save(state)
    ckpt.save({**state, "epoch": 4})
    loaded = ckpt.load()
    assert loaded["epoch"] == 4 and loaded["history"] == state["history"]
    assert torch.equal(loaded["m"][0], state["m"][0]) and torch.equal(loaded["rng"], state["rng"])
    assert [p.name for p in ckpt.path.parent.iterdir()] == ["state.ckpt"]  # no temporary file left

    torch.save({"object": FileCheckpointer("x")}, ckpt.path)  # not plain data: refused, never unpickled
    with pytest.raises(CheckpointUnreadable):
        ckpt.load()
    ckpt.path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointUnreadable):
        ckpt.load()
    ckpt.clear()
    assert ckpt.load() is None
