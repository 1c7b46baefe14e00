"""An evaluation command as it was invoked: the command line that reruns it, and what Ctrl-C says about the work kept.

`Invocation(program, argv, unit)` runs the command's body through `run_command` (one `error:` line per expected
failure) and shuts the torchrun process group down afterwards. Once the command has read its settings it sets
`config` (what it writes to `output`, and whether it keeps finished records for resuming); on Ctrl-C the message then
says how many finished records the store holds and the command that resumes them (`--no-resume` dropped; under
torchrun, the same torchrun command).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .cli_errors import run_command
from .distributed import shutdown_distributed
from .output_lock import release_claims
from .store import store_dir_for


class ResumableSettings(Protocol):
    output: str | None
    resume: bool


@dataclasses.dataclass
class Invocation:
    """What this command was asked to do, for the message printed when it is interrupted.

    `unit` names a finished record (`sequence`, `utterance`); `partial_results`: the output file is rewritten as each
    record finishes, so an interrupted run leaves the records finished so far there.
    """

    program: str
    argv: list[str]
    unit: str
    partial_results: bool = False
    config: ResumableSettings | None = None

    def resume_command(self) -> str:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return "the same torchrun command" + (" without --no-resume" if "--no-resume" in self.argv else "")
        return shlex.join([*self.program.split(), *[arg for arg in self.argv if arg != "--no-resume"]])

    def interrupted(self) -> str:
        config = self.config
        if config is None or not config.output:
            return f"nothing was computed yet; rerun with: {self.resume_command()}"
        if not config.resume:
            return f"{self.not_kept(config.output)}; rerun with: {self.resume_command()}"
        store = store_dir_for(config.output)
        kept = len(list(store.glob("*.safetensors"))) if store.is_dir() else 0
        partial = ""
        if self.partial_results and Path(config.output).is_file():
            partial = f" (partial results in {config.output})"
        return f"{kept} finished {self.unit}(s) kept in {store}/{partial}; resume with: {self.resume_command()}"

    def not_kept(self, output: str) -> str:
        """What became of the finished records of a run that does not keep them for resuming."""
        if self.partial_results:
            return f"finished {self.unit}s are in {output} but were not kept for resuming (--no-resume)"
        return f"finished {self.unit}s were not kept (--no-resume)"

    def run(self, body: Callable[[], int]) -> int:
        """`body()`'s exit code through `run_command` (this interruption message on Ctrl-C); afterwards the outputs it
        claimed are released and the torchrun process group is shut down."""
        try:
            return run_command(body, self.interrupted)
        finally:
            release_claims()
            shutdown_distributed()
