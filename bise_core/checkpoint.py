"""Resume checkpoints of the BISE loop: where they are kept is the caller's business.

The loop hands a plain ``dict`` (tensors, numbers, strings, lists, dicts, ``None``) to a
:class:`Checkpointer` at the end of every mask epoch, and asks it for the last one when a run
starts. :class:`FileCheckpointer` keeps it in one local file; a service wraps it to upload the
file to its artifact store (see ``worker/checkpoints.py``).

Because the state holds only such plain types, it is read back with
``torch.load(weights_only=True)``: loading a checkpoint never unpickles arbitrary objects,
even if the file was tampered with.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


class CheckpointUnreadable(Exception):
    """The stored checkpoint cannot be used (truncated, corrupt, or from another job/version).

    Not a :class:`~bise_core.errors.BiseInputError`: a checkpoint is the engine's own file,
    never user input. The loop answers it by starting over (see ``BiseLoop``).
    """


@runtime_checkable
class Checkpointer(Protocol):
    """Where the loop keeps its per-epoch resume state."""

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or ``None`` when there is none.

        Raise :class:`CheckpointUnreadable` when one exists but cannot be read.
        """
        ...

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state by ``state``; a crash midway must leave the old one intact."""
        ...


class FileCheckpointer:
    """A checkpoint in one local file, replaced atomically.

    ``save`` writes a temporary file in the same folder, syncs it to disk, then
    ``os.replace``-s it over ``path``: a reader (or a worker that died midway) sees either the
    previous checkpoint or the new one, never half of one.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileCheckpointer({str(self.path)!r})"

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, garbage, forbidden pickle global, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointUnreadable(
                f"{self.path.name} is not a readable checkpoint ({type(exc).__name__}: {reason[:300]})"
            ) from exc
        if not isinstance(state, dict):
            raise CheckpointUnreadable(f"{self.path.name} holds a {type(state).__name__}, not a checkpoint")
        return state

    def save(self, state: dict[str, Any]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(folder)

    def clear(self) -> None:
        """Forget the checkpoint (e.g. once the job's results are stored)."""
        self.path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort (not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
