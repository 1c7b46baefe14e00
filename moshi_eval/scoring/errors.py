"""Notes a person must see, one line each: about settings (keys ignored, mapped or deprecated) and about the files of
a run (a cache entry or resume record recomputed, a read-only cache, a stale lock taken over).

Command lines print settings notes on stderr with `print_notes`; the Python API emits them with `warn_notes` as
`SettingsNoteWarning`, a `UserWarning`: Python shows those by default, unlike `DeprecationWarning`s raised inside a
library, which it hides. Notes about files are `FileNoteWarning`s wherever they arise (command lines show warnings on
one line).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable


class SettingsNoteWarning(UserWarning):
    """A setting that was ignored, mapped onto another or is deprecated."""


class FileNoteWarning(UserWarning):
    """A file of a run not used as found: a cache entry or record that fails its checks (computed again), a cache that
    cannot be written (codes not stored), a stale lock (taken over)."""


def warn_notes(notes: Iterable[str], stacklevel: int = 3) -> None:
    """Emit each note as a `SettingsNoteWarning` (attributed to the caller's caller by default)."""
    for note in notes:
        warnings.warn(note, SettingsNoteWarning, stacklevel=stacklevel)


def print_notes(notes: Iterable[str]) -> None:
    """Print each note on stderr as one `note: ...` line."""
    for note in notes:
        print(f"note: {' '.join(note.split())}", file=sys.stderr, flush=True)
