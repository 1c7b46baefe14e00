"""How evaluation command lines end: one `error:` line for every expected failure, a resume hint on Ctrl-C.

`run_command(body, interrupted)` runs a command's body and turns what a user can cause into one line on stderr instead
of a traceback: bad settings and values (`ValueError`, including `ConfigError` and `DataError`), missing or unreadable
files (`OSError`, unreadable safetensors), unsupported model configurations (`NotImplementedError`) and non-finite
losses (`NonFiniteLossError`) give `error: <message naming the file or value>` and exit code 2. Ctrl-C prints
`interrupted: <what interrupted() says>` (where the partial results are and the command that resumes them) and exits
with 130, the shell's code for SIGINT. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from safetensors import SafetensorError

from .sanity import NonFiniteLossError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, NotImplementedError, NonFiniteLossError,
                                                    SafetensorError)


def error_line(error: BaseException) -> str:
    """The error's message on one line; an `OSError` from the system names its file first."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    line = parts[0] if parts else type(error).__name__
    for part in parts[1:]:
        line += (" " if line.endswith(":") else "; ") + part
    return line


def run_command(body: Callable[[], int], interrupted: Callable[[], str] | None = None) -> int:
    """`body()`'s exit code, 2 after an expected error (one `error:` line), 130 after Ctrl-C (one `interrupted:`
    line)."""
    try:
        return body()
    except KeyboardInterrupt:
        hint = interrupted() if interrupted is not None else ""
        print(f"interrupted{': ' + hint if hint else ''}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except EXPECTED_ERRORS as error:
        print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
