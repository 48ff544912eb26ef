"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Used for every file the package writes next to data a reader may be loading at the same
time (descriptor files, summaries, the trainer's ``descriptor_agreement.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nnunet_shape.descriptor_files.model import PathLike

__all__ = ["write_text_atomic", "write_json_atomic"]


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: PathLike, write: Callable[[TextIO], None]) -> None:
    """Run ``write`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    Readers see either the old file or the complete new one. If ``write`` or the rename
    fails -- or the process is interrupted by an exception such as KeyboardInterrupt -- the
    temporary file is removed and ``path`` is untouched. The temporary name starts with '.'
    and ends with '.tmp', so folder readers globbing ``*.json`` never see it (a hard kill can
    leave such a file behind, never a partial ``path``).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would have
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable (POSIX; skipped where a directory cannot be opened)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    _write_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Serialise ``obj`` as JSON (indent 2, NaN refused) to ``path`` atomically.

    Serialisation streams into the temporary file, so a failure while dumping (e.g. a NaN
    or an object that is not JSON-serialisable) leaves no partial ``path`` either.
    """

    def dump(handle: TextIO) -> None:
        json.dump(obj, handle, indent=2, allow_nan=False)
        handle.write("\n")

    _write_atomic(path, dump)
