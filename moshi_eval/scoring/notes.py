"""Notes about settings (keys ignored, mapped or deprecated) that a person must see, one line each.

Command lines print them on stderr with `print_notes`; the Python API emits them with `warn_notes` as
`SettingsNoteWarning`, a `UserWarning`: Python shows those by default, unlike `DeprecationWarning`s raised inside a
library, which it hides.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable


class SettingsNoteWarning(UserWarning):
    """A setting that was ignored, mapped onto another or is deprecated."""


def warn_notes(notes: Iterable[str], stacklevel: int = 3) -> None:
    """Emit each note as a `SettingsNoteWarning` (attributed to the caller's caller by default)."""
    for note in notes:
        warnings.warn(note, SettingsNoteWarning, stacklevel=stacklevel)


def print_notes(notes: Iterable[str]) -> None:
    """Print each note on stderr as one `note: ...` line."""
    for note in notes:
        print(f"note: {' '.join(note.split())}", file=sys.stderr, flush=True)
