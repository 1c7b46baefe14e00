"""One run per output: a lock file next to the results (`results.json.lock`) naming the process that writes them.

Two runs writing the same results would both compute everything and overwrite each other's files. The lock file holds
the pid, host, process start time and start date of its holder; it is created atomically (a hard link of a complete
file: no reader sees it half-written) and removed when the run ends, also on an error or Ctrl-C. A second run on the
same output stops with `OutputLockedError` naming the holder. A lock whose process is gone (killed, the machine
rebooted: same host, no process with that pid and start time) is taken over with a note. A holder on another host
cannot be checked from here: that lock is honoured, and the message says which file to delete if that run is gone.

A process takes a lock once and may take it again (`OutputLock` counts); under torchrun only the main rank takes it.
Command lines claim the lock before loading the model (`claim_output`) and hold it until the command ends
(`release_claims`); the Python API holds it around each evaluation (`output_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import FileNoteWarning

LOCK_SUFFIX = ".lock"
UNREADABLE = -1  # the pid of a lock file that cannot be read: none of ours (they are written whole), taken over


class OutputLockedError(ValueError):
    """Another run is writing the same output."""


def lock_path_for(output: str | Path) -> Path:
    """`results.json` -> `results.json.lock`."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where that cannot be read: with its pid
    it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The process a lock file names."""

    pid: int
    host: str
    started: str | None
    since: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), process_start(os.getpid()),
                   datetime.datetime.now().astimezone().isoformat(timespec="seconds"), " ".join(sys.argv))

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        """The holder a lock file names; None when it is gone or cannot be read as a lock."""
        try:
            fields = json.loads(path.read_text())
            return cls(int(fields["pid"]), str(fields["host"]), fields.get("started"), str(fields["since"]),
                       str(fields.get("command", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return cls(UNREADABLE, socket.gethostname(), None, "", "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    def describe(self) -> str:
        if self.pid == UNREADABLE:
            return "an unreadable lock file"
        return f"pid {self.pid} on {self.host} since {self.since}"

    def is_running(self) -> bool:
        """Whether the process may still run: always on another host (it cannot be checked from here)."""
        if self.host != socket.gethostname():
            return True
        if self.pid in (UNREADABLE, os.getpid()):  # a lock naming this process that it does not hold: a leftover
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_start(self.pid)
        return self.started is None or started is None or started == self.started


_held: dict[Path, OutputLock] = {}


class OutputLock:
    """The lock of one output file; `acquire` may be called again by the holder (each call needs a `release`)."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path_for(output).absolute()
        self.count = 0

    @classmethod
    def of(cls, output: str | Path) -> OutputLock:
        """This process's lock of `output` (the same object on every call while it is held)."""
        path = lock_path_for(output).absolute()
        return _held.get(path) or cls(output)

    def acquire(self) -> None:
        if self.count == 0:
            self.create()
            _held[self.path] = self
        self.count += 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _held.pop(self.path, None)
        holder = LockHolder.read(self.path)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def create(self) -> None:
        """Write the lock file, taking over a stale one; OutputLockedError when a running process holds it."""
        mine = LockHolder.this_process()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self.link(mine):
            holder = LockHolder.read(self.path)
            if holder is None:
                continue
            if holder.is_running():
                raise OutputLockedError(self.locked_message(holder))
            self.take_over(holder)

    def locked_message(self, holder: LockHolder) -> str:
        elsewhere = holder.host != socket.gethostname()
        return (f"{self.output} is being written by another run ({holder.describe()}); wait for it to end or choose "
                f"another output (lock file {self.path}"
                + ("; that host cannot be checked from here: delete the lock file if that run is gone)" if elsewhere
                   else ")"))

    def link(self, holder: LockHolder) -> bool:
        """Create the lock file with `holder` in it at once; False when a lock file is already there."""
        temporary = self.path.with_name(f".{self.path.name}.{holder.pid}.tmp")
        temporary.write_text(holder.to_json())
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create it exclusively, then fill it in
            return self.create_exclusive(holder)
        finally:
            temporary.unlink(missing_ok=True)

    def create_exclusive(self, holder: LockHolder) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as file:
            file.write(holder.to_json())
        return True

    def take_over(self, stale: LockHolder) -> None:
        """Remove a lock whose process is gone, unless another run replaced it meanwhile."""
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if LockHolder.read(aside) != stale:
            os.rename(aside, self.path)
            return
        aside.unlink()
        warnings.warn(f"{self.path}: taking over the lock of a run that is gone ({stale.describe()})", FileNoteWarning,
                      stacklevel=2)


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def output_lock(output: str | Path | None) -> Iterator[None]:
    """Hold the lock of `output` for the block (nothing when there is no output, or on ranks other than the main)."""
    if output is None or not is_main_process():
        yield
        return
    lock = OutputLock.of(output)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


_claims: list[OutputLock] = []


def claim_output(output: str | Path | None) -> None:
    """Take the lock of `output` until `release_claims` (a command line, before it loads the model); nothing when there
    is no output, or on ranks other than the main."""
    if output is None or not is_main_process():
        return
    lock = OutputLock.of(output)
    lock.acquire()
    _claims.append(lock)


def release_claims() -> None:
    """Release the locks `claim_output` took."""
    while _claims:
        _claims.pop().release()
