"""How the command line ends on expected failures: one `error:` line and exit code 2; Ctrl-C: one line saying what is
kept and how to resume, exit code 130. No traceback for either.

Kept apart from the rest of the command line so that the shared error handling of `moshi_eval` can replace it whole.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..scoring.sanity import NonFiniteLossError

EXPECTED_ERRORS = (ValueError, OSError, NonFiniteLossError)
INTERRUPTED = 130
USAGE_ERROR = 2


def with_one_line_errors(command: Callable[[], int], when_interrupted: str) -> int:
    """`command()`'s exit code; expected errors and Ctrl-C as one line on stderr."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"interrupted: {when_interrupted}", file=sys.stderr)
        return INTERRUPTED
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
