"""Atomic writes keep the user's file modes; unusable output folders are one-line errors."""

from __future__ import annotations

import os
import stat

import pytest

from nasbnn.errors import OutputError
from nasbnn.utils.io import atomic_write_bytes, atomic_write_text, ensure_dir, missing_file, umask


@pytest.fixture
def restore_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, restore_umask, mask, mode):
    os.umask(mask)
    assert umask() == mask
    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"\x01\x02")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_bytes() == b"\x01\x02"
    atomic_write_text(target, "replaced")  # replacing an existing file also takes the umask's mode
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_text() == "replaced"
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]  # no temporary left behind


def test_a_file_where_a_folder_belongs(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("keep me")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        ensure_dir(blocker / "run")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_text(blocker / "x.json", "{}")
    assert blocker.read_text() == "keep me"


def test_a_folder_where_a_file_belongs(tmp_path):
    (tmp_path / "model.bin").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write_bytes(tmp_path / "model.bin", b"x")
    assert list(tmp_path.iterdir()) == [tmp_path / "model.bin"]


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")
def test_a_folder_on_a_virtual_file_system():
    with pytest.raises(OutputError, match="cannot be created"):
        ensure_dir("/sys/nasbnn-out/run")


def test_a_folder_or_nothing_where_a_file_is_read(tmp_path):
    assert missing_file(tmp_path, "packed model") == f"packed model {str(tmp_path)!r} is a folder, not a file"
    gone = tmp_path / "gone.nbp"
    assert missing_file(gone) == f"file {str(gone)!r} does not exist"
    assert missing_file(tmp_path) == f"{str(tmp_path)!r} is a folder, not a file"
    assert missing_file(gone, "") == f"{str(gone)!r} does not exist"
