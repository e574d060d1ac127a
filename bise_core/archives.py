"""Refuse zip bombs before anything decompresses them.

Model archives (TorchScript, torch.export) and ``.pt``/``.npz`` dataset bundles are zip
files. torch writes its archives uncompressed, and real ``.npz`` files compress image data
a few times at most, so a member that claims to expand a thousand-fold past a size that
matters is a bomb. The zip directory is read without inflating anything; the sandbox's
memory and file-size caps stay as the second line of defence.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from bise_core.errors import BiseInputError

#: Expansion (uncompressed / size on disk) above which an archive is refused ...
MAX_RATIO = 200
#: ... once it would expand beyond this many bytes (small files may compress as they like).
FLOOR_BYTES = 256 * 1024**2


def check_expansion(path: Path, error: type[BiseInputError]) -> None:
    """Raise ``error`` when the zip at ``path`` would inflate implausibly; no-op for other files."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise error(f"{path.name} is a corrupt archive: {exc}") from None
    on_disk = max(path.stat().st_size, 1)
    if expanded > FLOOR_BYTES and expanded > MAX_RATIO * on_disk:
        raise error(f"{path.name} would expand from {on_disk:,} to {expanded:,} bytes "
                    f"({expanded // on_disk}x); refused as a zip bomb")
