"""`python -m moshi_eval.librilight ...`: evaluate (`cli.py`); `python -m moshi_eval.librilight compare a.json b.json
--output cmp.png` draws the runs' curves in one figure, as `python -m moshi_eval.compare` draws them
(`moshi_eval.compare.cli.OVERLAY`). This program entry is the one module of the package that may use the packages
above it."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from ..compare.cli import OVERLAY

        return OVERLAY.main(argv[1:])
    from .cli import main as evaluate

    return evaluate(argv)


if __name__ == "__main__":
    sys.exit(main())
