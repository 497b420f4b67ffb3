"""Atomic file writes: every cache scancc keeps on disk (generated sources, cubins, tuned
schedules) is written through :func:`write_atomic`, so a reader sees the old file or the new
one, never a torn one, also with several processes writing the same path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, Path], data: Union[str, bytes], *, fsync: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to a temporary file beside ``path`` and rename it over ``path``.

    ``fsync=True`` flushes the file to the disk before the rename (for records that must
    survive a crash, not only a concurrent reader). Creates missing parent folders.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
