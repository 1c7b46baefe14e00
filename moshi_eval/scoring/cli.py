"""Checks a command line runs before any work, so that a mistyped path fails in a second, not after an evaluation.

Each check raises `ConfigError` naming the flag and the path: output files that could not be written (a directory, a
parent that is a file or not writable, a plot format matplotlib cannot write) and input files and folders that do not
exist. The model's files are checked by `moshi.models.model_flags.ModelRequest.check_files`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .output_lock import claim_output
from .settings import ConfigError
from .store import store_dir_for


def setting_label(name: str, config_file: str | None) -> str:
    """How errors name a setting: its flag (`--cache-dir`), or the field and the file it came from
    (`cache_dir (from eval.yaml)`)."""
    return f"{name} (from {config_file})" if config_file else f"--{name.replace('_', '-')}"


def existing_ancestor(path: Path) -> Path:
    """The closest ancestor of `path` (itself excluded) that exists."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def check_output_file(path: str | Path, flag: str) -> None:
    """`path` can be created or replaced as a file: not a directory, under a writable directory (created later)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name (e.g. {path / 'results.json'})")
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {path}: {ancestor} is a file, so no folder can be created there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {ancestor} (permission denied)")


def plot_formats() -> dict[str, str]:
    """File extensions matplotlib can write, with their descriptions; ConfigError without matplotlib."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as error:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib (part of the 'eval' extra)") from error
    return FigureCanvasBase.get_supported_filetypes()


def check_plot_file(path: str | Path, flag: str = "--plot") -> None:
    """An output file whose extension matplotlib can write."""
    check_output_file(path, flag)
    extension = Path(path).suffix.lower().lstrip(".")
    formats = plot_formats()
    if extension not in formats:
        kind = f".{extension}" if extension else "a file without extension"
        raise ConfigError(f"{flag} {path}: cannot write a plot as {kind}; use one of "
                          f"{', '.join('.' + name for name in sorted(formats))}")


def folder_problem(path: Path) -> str | None:
    """Why no file can be written in the folder `path` (existing, or to be created), or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    target = path if path.exists() else existing_ancestor(path)
    if not target.is_dir():
        return f"{target} is a file, so no folder can be created there"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"cannot write in {target} (permission denied)"
    return None


def check_output_folder(path: str | Path, flag: str) -> None:
    """`path` is, or can be created as, a writable directory."""
    problem = folder_problem(Path(path))
    if problem is not None:
        raise ConfigError(f"{flag} {path}: {problem}")


def check_records_folder(output: str | Path, flag: str) -> None:
    """The folder of resume records next to `output` (`<stem>.sequences/`) is, or can be created as, a writable
    directory: found before the first record is scored, not after."""
    records = store_dir_for(output)
    problem = folder_problem(records)
    if problem is not None:
        raise ConfigError(f"{flag} {output}: its resume records folder {records}: {problem}; make it writable or turn "
                          "resuming off (--no-resume)")


class RunOutputs(Protocol):
    output: str | None
    resume: bool


def claim_outputs(config: RunOutputs, flag: str) -> None:
    """The resume records folder writable (when resuming), then the output claimed for this command
    (`output_lock.claim_output`): a second run on the same output stops here, before loading a model."""
    if config.output is None:
        return
    if config.resume:
        check_records_folder(config.output, flag)
    claim_output(config.output)


def check_cache_folder(path: str | Path, flag: str) -> None:
    """A codes cache: an existing folder that can be read (a shared, read-only cache is read without storing new
    codes), or one that can be created."""
    path = Path(path)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: cannot be read (permission denied)")
        return
    check_output_folder(path, flag)


def check_input_path(path: str | Path, flag: str, folder: bool = False) -> None:
    """`path` exists (as a folder when `folder`, else as anything) and can be read."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such {'folder' if folder else 'file or folder'}")
    if folder and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: cannot be read (permission denied)")
