"""What the evaluation reliability tests share: the evaluation tests' helpers (tests/moshi_eval: models, data, a small
checkpoint saved as a user has it), runs in child processes, and runs that see file permissions as an ordinary
user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "moshi_eval"))

from librilight_helpers import REPO_ROOT, subprocess_env
from paper_metrics_helpers import demo_mimi, save_small_checkpoint, small_lm

__all__ = ["as_ordinary_user", "demo_mimi", "error_lines", "run_module", "save_small_checkpoint", "small_lm",
           "warning_lines"]

# Root reads and writes through any permission bits; dropping these capabilities makes it an ordinary user again.
DROP_ROOT_BYPASS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def as_ordinary_user() -> list[str]:
    """The prefix that runs a command with permission bits enforced (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    return DROP_ROOT_BYPASS


def run_module(module: str, argv: list[str], prefix: list[str] | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    """`python -m module argv` in a child process (this checkout importable, one thread)."""
    return subprocess.run([*(prefix or []), sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, check=False, **kwargs)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]
