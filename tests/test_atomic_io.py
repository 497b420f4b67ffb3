"""write_atomic: the one way scancc writes its disk caches."""

from __future__ import annotations

from pathlib import Path

import pytest

from scancc.atomic_io import write_atomic


@pytest.mark.parametrize("fsync", [False, True])
def test_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "deep" / "folder" / "record.json"
    write_atomic(path, "first ✓", fsync=fsync)
    assert path.read_text(encoding="utf-8") == "first ✓"
    write_atomic(path, b"\x00second", fsync=fsync)
    assert path.read_bytes() == b"\x00second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
