"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every state file of the app (listener cursor, outbox, deployment cache, keystore labels and key
files, the demo's state) is written here: a temporary file in the same directory, flushed and
fsynced, renamed over the target (`os.replace`), then the directory fsynced so the rename itself
survives a power cut. The device side (hardware/emulator.py, the emulated meter's key file) has its
own small copy, since hardware/ imports nothing from dapp.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str, *, mode: int | None = None,
               exclusive: bool = False) -> None:
    """Write `text` to `path` atomically.

    `mode` (e.g. 0o600) is set exactly, whatever the umask; without it the file gets the
    umask's usual mode. With `exclusive` an existing `path` is never replaced: FileExistsError.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # 0o666 lets the umask decide, as open(path, "w") would; an explicit mode is set exactly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the name exists
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def write_json(path: Path, data: Any, *, mode: int | None = None, exclusive: bool = False,
               **dump_options: Any) -> None:
    """Write `data` as JSON to `path` atomically (`dump_options` go to json.dumps)."""
    write_text(path, json.dumps(data, **dump_options), mode=mode, exclusive=exclusive)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
