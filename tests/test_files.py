"""Atomic writes: whole files with the usual permissions, the old file kept when a write fails."""

import json
import os
import stat

import pytest

from vortex.files import write_json, write_text


def test_written_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "table.md", "| a |\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "| a |\n"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "profile.json", {"rc2": 1.0})
    with pytest.raises(ValueError):
        write_json(path, {"rc2": float("nan")})  # NaN is refused (allow_nan=False)
    assert json.loads(path.read_text()) == {"rc2": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]
