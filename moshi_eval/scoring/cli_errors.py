"""How evaluation command lines end: one `error:` line for every expected failure, a resume hint on Ctrl-C.

`run_command(body, interrupted)` runs a command's body and turns what a user can cause into one line on stderr instead
of a traceback: what naming and loading a model can raise (`moshi.models.model_flags.EXPECTED_ERRORS`: bad settings and
values, including `ConfigError` and `DataError`, missing or unreadable files, unsupported model configurations) and
non-finite losses (`NonFiniteLossError`) give `error: <message naming the file or value>` and exit code 2, printed as
`moshi.models.model_flags.report_error` prints it. Ctrl-C prints `interrupted: <what interrupted() says>` (where the
partial results are and the command that resumes them) and exits with 130, the shell's code for SIGINT. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from moshi.models.model_flags import EXPECTED_ERRORS as MODEL_ERRORS
from moshi.models.model_flags import report_error

from .sanity import NonFiniteLossError

EXIT_INTERRUPTED = 130
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (*MODEL_ERRORS, NonFiniteLossError)


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
        return report_error(error)
