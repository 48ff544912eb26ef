"""Errors the user can fix, and the one way our console scripts report them.

:class:`UserError` is raised by every check of the user's input (a file, a folder, a field of
``dataset.json``, a descriptor file that disagrees with its image, ...). Its message names what
the user gave and what was expected. It subclasses :class:`ValueError`, so the Python API keeps
raising the exception type callers already catch.

:func:`run_console` is the error path of every console script (``nnunet-shape ...`` and
``nnUNetv2_export_descriptors``): a :class:`UserError` or an :class:`OSError` (a missing file, a
folder that cannot be written) is printed as ONE line ``<prog>: error: <message>`` on stderr and
the script exits with code 2 (argparse's code for bad arguments); any other exception is a bug
and keeps its traceback.

This module sits outside the layers (like ``nnunet_shape.__version__``): every layer may import
it, and it imports nothing of the package.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["UserError", "USER_ERROR_EXIT_CODE", "one_line", "describe_error", "run_console", "load_json_file",
           "load_dataset_json", "prepare_output_folder", "check_image_file_complete"]

#: exit code of a console script that refused its input (argparse uses 2 for bad arguments too)
USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """Input the user can fix; the message names the file, case, class or field and what was expected."""


def one_line(text: object) -> str:
    """``text`` with its lines joined by spaces (messages of readers such as SimpleITK span lines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_error(error: BaseException) -> str:
    """One-line description: ``path: reason`` for an OSError with a file name, else the message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return one_line(f"{error.filename}{target}: {error.strerror}")
    return one_line(error) or type(error).__name__


def run_console(prog: str, function: Callable[[], int | None]) -> int:
    """Run a console script's body; user errors become one stderr line and exit code 2.

    ``UserError`` and ``OSError`` are the user's (bad or missing input, unwritable output);
    every other exception propagates with its traceback.
    """
    try:
        return int(function() or 0)
    except (UserError, OSError) as error:
        print(f"{prog}: error: {describe_error(error)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def load_json_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse a JSON file; a missing file stays FileNotFoundError, broken JSON is a UserError naming
    the file, line and column. ``what`` (e.g. ``"dataset.json"``) starts the message when given."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    with open(path, encoding="utf-8") as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError:
            raise UserError(f"{label}: not a JSON text file (not UTF-8)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{label}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None


def prepare_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written into it.

    Raises UserError when ``path`` is an existing file, when a parent is a file, or when the
    folder is not writable -- before any work starts, so nothing is computed for nothing.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{what} {folder}: a parent of it is a file, not a folder") from None
    except OSError as error:
        raise UserError(f"{what} {folder} cannot be created: {error.strerror or error}") from None
    # a real probe, not os.access: it also answers for read-only mounts and for root
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{what} {folder} is not writable: {error.strerror or error}") from None
    return folder


def _nifti_total_bytes(header: bytes) -> int | None:
    """Header + voxel bytes a NIfTI-1/2 file holds (``vox_offset + prod(dim) * bitpix / 8``), or
    None when ``header`` is not a NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
            vox_offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540:
            dims = struct.unpack(f"{endian}8q", header[16:80])
            bitpix = struct.unpack(f"{endian}h", header[14:16])[0]
            vox_offset = struct.unpack(f"{endian}q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    voxels = 1
    for n in dims[1:dims[0] + 1]:
        voxels *= max(int(n), 1)
    return max(vox_offset, 0) + voxels * bitpix // 8


def check_image_file_complete(path: str | os.PathLike) -> None:
    """UserError when a NIfTI file (``.nii`` / ``.nii.gz``) holds fewer bytes than its header says.

    SimpleITK (ITK 5.4) reads a truncated ``.nii.gz`` -- a half-finished copy or download --
    WITHOUT an error and returns the missing voxels as 0: a label map would silently lose
    classes. The check costs O(1): the header (first 540 bytes) and, for gzip, the stream's
    trailer (uncompressed size mod 2**32, RFC 1952), which a cut file almost surely gets wrong.
    Other formats are not checked here (their readers report truncation themselves, or not).
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                header = handle.read(540)
        else:
            with open(path, "rb") as handle:
                header = handle.read(540)
    except (EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"{path}: truncated or corrupt: not a readable NIfTI file ({one_line(error)}); "
                        f"is it a complete copy?") from None
    expected = _nifti_total_bytes(header)
    if expected is None:
        raise UserError(f"{path}: not a NIfTI file (no NIfTI-1/2 header); is it a complete copy?")
    if name.endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            stored = struct.unpack("<I", handle.read(4))[0]
        if stored != expected % 2**32:
            raise UserError(f"{path}: truncated or corrupt: its gzip stream does not end with the "
                            f"{expected} bytes its NIfTI header describes (a half-written copy?); "
                            f"SimpleITK would read the missing voxels as 0")
    elif path.stat().st_size < expected:
        raise UserError(f"{path}: truncated: {path.stat().st_size} bytes, its NIfTI header describes {expected}")


def load_dataset_json(path: str | os.PathLike, required: tuple[str, ...] = ("labels", "file_ending")) -> dict:
    """An nnU-Net ``dataset.json``: a JSON object with the ``required`` fields, else a UserError
    naming the file (broken JSON, another type, a missing field)."""
    content = load_json_file(path, "dataset.json")
    if not isinstance(content, dict):
        raise UserError(f"dataset.json {path} must hold a JSON object, got {type(content).__name__}")
    missing = [key for key in required if key not in content]
    if missing:
        raise UserError(f"dataset.json {path} has no {missing[0]!r} field")
    return content
