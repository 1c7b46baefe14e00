"""Upstream features this fork leaves out, refused with one sentence at the first use.

`refused_command(sentence)` is the `main` of a left-out console script: it prints `error: <sentence>` and returns 2.
`refused_names(sentence)` is the module `__getattr__` of a left-out module: any name looked up raises
`NotImplementedError(sentence)`, so `from moshi.models.tts import TTSModel` fails with that sentence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


def refused_command(sentence: str) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        print(f"error: {sentence}", file=sys.stderr)
        return 2

    return main


def refused_names(sentence: str) -> Callable[[str], NoReturn]:
    def refuse(name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotImplementedError(f"{name}: {sentence}")

    return refuse
