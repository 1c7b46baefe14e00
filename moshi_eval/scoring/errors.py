"""What an evaluation tells a person: its errors, its warnings, and notes one line each.

Errors a user can cause are `ValueError`s or `RuntimeError`s whose message names the file, setting or value
(`ConfigError`, `DataError`, `OutputLockedError`, `NonFiniteLossError`); command lines print each as one `error:`
line (`cli.run_command`). Warnings are `UserWarning`s, which Python shows by default (unlike `DeprecationWarning`s
raised inside a library):

- `SettingsNoteWarning`: a setting ignored, mapped onto another or deprecated. Command lines print these notes on stderr
  with `print_notes`; the Python API emits them with `warn_notes`.
- `FileNoteWarning`: a file of a run not used as found (a cache entry or resume record recomputed, a read-only cache,
  a stale lock taken over), wherever it arises.
- `WorseThanUniformWarning`: a window loss above ln(card).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from moshi.models.model_flags import print_note


class ConfigError(ValueError):
    """A settings file or value that cannot be used; the message names it."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or directory."""


class OutputLockedError(ValueError):
    """Another run is writing the same output."""


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss, with the sequence and the first frame (and codebook) where it appeared."""

    def __init__(self, sequence_id: str, frame: int, codebook: int) -> None:
        self.sequence_id = sequence_id
        self.frame = frame
        self.codebook = codebook
        where = f"frame {frame}, codebook {codebook}" if frame >= 0 else "an unknown frame"
        super().__init__(f"non-finite loss (NaN or inf) in sequence {sequence_id!r} at {where}: the model produced "
                         "invalid logits there; stopping instead of averaging it away")


class SettingsNoteWarning(UserWarning):
    """A setting that was ignored, mapped onto another or is deprecated."""


class FileNoteWarning(UserWarning):
    """A file of a run not used as found: a cache entry or record that fails its checks (computed again), a cache that
    cannot be written (codes not stored), a stale lock (taken over)."""


class WorseThanUniformWarning(UserWarning):
    """A window loss above ln(card): the model does worse than guessing uniformly there."""


def warn_notes(notes: Iterable[str], stacklevel: int = 3) -> None:
    """Emit each note as a `SettingsNoteWarning` (attributed to the caller's caller by default)."""
    for note in notes:
        warnings.warn(note, SettingsNoteWarning, stacklevel=stacklevel)


def print_notes(notes: Iterable[str]) -> None:
    """Print each note on stderr as one `note: ...` line."""
    for note in notes:
        print_note(note)
