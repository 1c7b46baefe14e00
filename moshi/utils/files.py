"""Files a command writes for people and for other runs: written atomically, and checked writable before any work.

A file is written to a temporary name in its own folder and renamed into place, so a concurrent reader sees the old
file or the new one, never half of one. `tempfile` creates files readable by their owner only; the final file gets
the mode an ordinary `open` would give (0644 under the usual umask 022), so colleagues can read results and share a
cache. `output_file_problem` and `folder_problem` say why a path could not be written, before anything is computed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, then give the file the umask's mode and rename it to `path` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text_atomic(path: str | Path, text: str) -> None:
    """A text file, atomically."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Indented JSON (no NaN allowed), atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def existing_ancestor(path: Path) -> Path:
    """The closest ancestor of `path` (itself excluded) that exists."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def output_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be created or replaced as a file (a folder there, no writable folder above it), or None."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; give the name of a file (in it, or elsewhere)"
    return writable_folder_problem(existing_ancestor(path))


def folder_problem(path: str | Path) -> str | None:
    """Why no file can be written in the folder `path` (existing, or to be created), or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    return writable_folder_problem(path if path.exists() else existing_ancestor(path))


def writable_folder_problem(folder: Path) -> str | None:
    """Why nothing can be written in (or created under) the existing path `folder`, or None."""
    if not folder.is_dir():
        return f"{folder} is a file, so no folder can be created there"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in {folder} (permission denied)"
    return None


def check_output_file(path: str | Path, flag: str, error: type[Exception] = ValueError) -> None:
    """`path` can be created or replaced as a file (missing folders are created later); otherwise `error` naming
    `flag`, the path and why."""
    problem = output_file_problem(path)
    if problem is not None:
        raise error(f"{flag} {path}: {problem}")
