"""Terminal output for command-line clients: coloured log lines and a boxed, wrapping transcript of streamed text.

The names and the output are upstream moshi's (`moshi.client_utils`), so scripts written against it run unchanged:
`log(level, msg)` prints one tagged line; a `Printer` draws streamed text tokens inside a box `max_cols` wide, rewriting
the current terminal line in place (carriage return, then the kept pieces, then spaces over what is left of a longer
earlier version); a `RawPrinter` writes the tokens as they come. One difference: when a word made of several tokens
has to move to the next row, all of its pieces move (upstream keeps only the first piece and the new token).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TextIO

RESET = "\033[0m"
LEVEL_TAGS = {"warning": ("[Warn]", "1;31"), "info": ("[Info]", "1;34"), "error": ("[Err ]", "1;31")}
"""Tag and colour of each log level."""
SPINNER_FRAMES = ("|", "/", "-", "\\")
SPINNER_COLORS = ("32", "33", "31")
SPINNER_CALLS_PER_FRAME = 5
LAG_MARK, LAG_COLOR = " [LAG]", "31"


def colorize(text: str, color: str) -> str:
    """`text` between the ANSI escape of SGR code `color` (such as "1;31": bold red) and a reset."""
    return f"\033[{color}m{text}{RESET}"


def make_log(level: str, msg: str) -> str:
    """`msg` behind the coloured tag of `level` ("warning", "info" or "error")."""
    if level not in LEVEL_TAGS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVEL_TAGS)}")
    tag, color = LEVEL_TAGS[level]
    return f"{colorize(tag, color)} {msg}"


def log(level: str, msg: str) -> None:
    """Print `msg` with the tag of `level` on standard output."""
    print(make_log(level, msg))


class RawPrinter:
    """Tokens straight to `stream`, plain `Level: msg` lines and lag marks to `err_stream`; no box, no spinner."""

    def __init__(self, stream: TextIO = sys.stdout, err_stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.err_stream = err_stream

    def print_header(self) -> None:
        """Nothing to draw without a box."""

    def print_token(self, token: str) -> None:
        self.stream.write(token)
        self.stream.flush()

    def log(self, level: str, msg: str) -> None:
        print(f"{level.capitalize()}: {msg}", file=self.err_stream)

    def print_lag(self) -> None:
        self.err_stream.write(colorize(LAG_MARK, LAG_COLOR))
        self.err_stream.flush()

    def print_pending(self) -> None:
        """No spinner without a box."""


@dataclasses.dataclass
class LineEntry:
    """One piece of a terminal line, optionally coloured; its length is that of the visible text."""

    msg: str
    color: str | None = None

    def render(self) -> str:
        return self.msg if self.color is None else colorize(self.msg, self.color)

    def __len__(self) -> int:
        return len(self.msg)


class Line:
    """The pieces on the terminal's current line, kept so that the line can be rewritten without its last pieces.

    The terminal may still show characters of a longer earlier version of the line: `flush` covers them with spaces,
    and the next `add` first moves back over those spaces.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._entries: list[LineEntry] = []
        self._widest = 0
        self._padded = False

    @property
    def entries(self) -> tuple[LineEntry, ...]:
        return tuple(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return sum(len(entry) for entry in self._entries)

    def add(self, msg: str, color: str | None = None) -> int:
        """Write a piece at the end of the line; returns its visible length."""
        if self._padded:
            self.erase(count=0)
        entry = LineEntry(msg, color)
        self._entries.append(entry)
        self.stream.write(entry.render())
        self._widest = max(self._widest, len(self))
        return len(entry)

    def erase(self, count: int = 1) -> None:
        """Rewrite the line from its start without its last `count` pieces (0: all of them kept)."""
        if count:
            del self._entries[-count:]
        self.stream.write("\r" + "".join(entry.render() for entry in self._entries))
        self._padded = False

    def _blank_tail(self) -> str:
        return " " * max(0, self._widest - len(self))

    def newline(self) -> None:
        """End the line (covering leftovers of a longer version) and start an empty one."""
        self.stream.write(self._blank_tail() + "\n")
        self._entries.clear()
        self._widest = 0
        self._padded = False

    def flush(self) -> None:
        """Cover leftovers of a longer version of the line with spaces, then flush the stream."""
        tail = self._blank_tail()
        if tail:
            self.stream.write(tail)
            self._padded = True
        self.stream.flush()


class Printer:
    """Streamed text inside a box `max_cols` characters wide, words kept whole across rows where possible, with a
    spinner while waiting (`print_pending`) and log lines on `err_stream`."""

    def __init__(self, max_cols: int = 80, stream: TextIO = sys.stdout, err_stream: TextIO = sys.stderr) -> None:
        self.max_cols = max_cols
        self.line = Line(stream)
        self.stream = stream
        self.err_stream = err_stream
        self._spinner_calls = 0
        self._spinner_shown = False

    def print_header(self) -> None:
        self.line.add(f" {'-' * self.max_cols} ")
        self.line.newline()
        self.line.flush()
        self.line.add("| ")

    def _hide_spinner(self) -> None:
        if self._spinner_shown:
            self._spinner_shown = False
            self.line.erase(1)

    def _next_row(self) -> None:
        """Close the box's current row at its right border and open the next one."""
        self.line.add(" " * (self.max_cols - len(self.line)) + " |")
        self.line.newline()
        self.line.add("| ")

    def _word_tail(self) -> int | None:
        """How many trailing pieces form the start of the word a space-less token continues: up to the last piece
        that starts with a space (included) or is coloured (excluded); None when the word fills the whole row."""
        entries = self.line.entries
        for count, entry in enumerate(reversed(entries)):
            if entry.color is not None:
                return count
            if entry.msg.startswith(" "):
                return count + 1
        return None

    def print_token(self, token: str, color: str | None = None) -> None:
        """Add a text token; a token that does not fit moves to the next row (with the start of its word when it
        continues one), a word longer than a row is cut at the border."""
        self._hide_spinner()
        room = self.max_cols - len(self.line)
        if len(token) <= room:
            self.line.add(token, color)
        elif token.startswith(" ") or color is not None:
            self._next_row()
            self.line.add(token.lstrip(), color)
        else:
            moved = self._word_tail()
            if moved is None:
                self.line.add(token[:room])
                self._next_row()
                self.line.add(token[room:])
            else:
                word_start = "".join(entry.msg for entry in self.line.entries[len(self.line.entries) - moved:])
                if moved:
                    self.line.erase(moved)
                self._next_row()
                self.line.add(word_start.lstrip() + token)
        self.line.flush()

    def log(self, level: str, msg: str) -> None:
        """A tagged line on `err_stream`, after ending the current row."""
        tagged = make_log(level, msg)
        self._hide_spinner()
        if self.line:
            self.line.newline()
        self.line.flush()
        print(tagged, file=self.err_stream)
        self.err_stream.flush()

    def print_lag(self) -> None:
        self.print_token(LAG_MARK, LAG_COLOR)

    def print_pending(self) -> None:
        """Show the next spinner frame in place of the previous one."""
        frame = self._spinner_calls // SPINNER_CALLS_PER_FRAME
        self._hide_spinner()
        self.line.add(SPINNER_FRAMES[frame % len(SPINNER_FRAMES)], SPINNER_COLORS[frame % len(SPINNER_COLORS)])
        self._spinner_shown = True
        self._spinner_calls += 1


AnyPrinter = Printer | RawPrinter

__all__ = ["AnyPrinter", "Line", "LineEntry", "Printer", "RawPrinter", "colorize", "log", "make_log"]
