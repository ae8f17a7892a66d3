"""dapp.atomic: the one way state files are written."""

from __future__ import annotations

import json
import stat

import pytest

from dapp import atomic


def test_a_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state" / "outbox.json"  # the directory is made too
    atomic.write_json(path, {"n": 1})
    atomic.write_json(path, {"n": 2}, indent=1)
    assert json.loads(path.read_text()) == {"n": 2}
    assert [p.name for p in path.parent.iterdir()] == ["outbox.json"]


def test_an_explicit_mode_is_exact(tmp_path):
    path = tmp_path / "labels.json"
    atomic.write_text(path, "{}\n", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exclusive_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "key"
    atomic.write_text(path, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic.write_text(path, "second", exclusive=True)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_a_write_that_fails_at_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic.write_json(path, {"kept": True})

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic.write_json(path, {"kept": False})
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
