"""What every evaluation command line shares: its flags beyond the model's, checks before any work, and how it ends.

- Flags: the codes cache (`--cache-dir`, `--no-cache`) next to `moshi.models.model_flags`' model flags; the model
  request carries the `context` and `rope_max_period` of the evaluation's settings. The parsers use
  `argument_default=argparse.SUPPRESS`: a flag that was not given is absent from the namespace, so the settings of a
  config file are only replaced by the flags actually given.
- Checks before any work, so that a mistyped path fails in a second, not after an evaluation: each raises
  `ConfigError` naming the flag and the path (output files that could not be written, a plot format matplotlib cannot
  write, input files and folders that do not exist). The model's files are checked by `ModelRequest.check_files`.
- How a command ends: `run_command(body, interrupted)` turns what a user can cause into one line on stderr instead of
  a traceback: what naming and loading a model can raise (`moshi.models.model_flags.EXPECTED_ERRORS`: bad settings
  and values, including `ConfigError` and `DataError`, missing or unreadable files, unsupported model configurations)
  and non-finite losses give `error: <message naming the file or value>` and exit code 2, printed as
  `moshi.models.model_flags.report_error` prints it. Ctrl-C prints `interrupted: <what interrupted() says>` and exits
  with 130, the shell's code for SIGINT. Anything else is a bug and keeps its traceback.
- `Command`: a command's parser and body, run the same way by every command (`Command.main`). `Invocation`: the
  command as it was invoked. Once the command has read its settings it sets `config` (what it writes
  to `output`, and whether it keeps finished records for resuming); on Ctrl-C the message then says how many finished
  records the store holds and the command that resumes them (`--no-resume` dropped; under torchrun, the same torchrun
  command).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moshi.models import model_flags
from moshi.models.model_flags import EXPECTED_ERRORS as MODEL_ERRORS
from moshi.models.model_flags import ModelRequest, report_error
from moshi.utils import files
from moshi.utils.files import folder_problem

from .errors import ConfigError, NonFiniteLossError
from .run import check_records_folder, claim_output, release_claims, shutdown_distributed, store_dir_for
from .settings import EvaluationSettings, parse_float_list

if TYPE_CHECKING:
    import torch

    from moshi.models.lm import LMModel
    from moshi.models.model_flags import ResolvedModel

    from .run import DistributedContext

EXIT_INTERRUPTED = 130
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (*MODEL_ERRORS, NonFiniteLossError)


def add_codes_cache_arguments(group: Any) -> None:
    """`--cache-dir` and `--no-cache` in `group` (an argument group of the command's data)."""
    group.add_argument("--cache-dir", help="codes cache folder (default $MOSHI_EVAL_CACHE, else "
                                           "~/.cache/moshi_eval/codes)")
    group.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache")


def number_list(text: str) -> list[float]:
    """A comma-separated list of numbers on a command line (`--codebook-weights 100,1,1`); anything else is an
    argparse error quoting it."""
    try:
        return parse_float_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def model_request(args: argparse.Namespace, config: EvaluationSettings) -> ModelRequest:
    """The model the flags name, with the `context` and `rope_max_period` of the evaluation's settings (a flag or a
    config file's key; the results' `config` records them)."""
    request = ModelRequest.from_args(args, model_flags.OURS)
    return dataclasses.replace(request, context=config.context, rope_max_period=config.rope_max_period)


def open_lm(request: ModelRequest, args: argparse.Namespace, context: DistributedContext
            ) -> tuple[ResolvedModel, torch.device, LMModel]:
    """The model the flags name, on the device they choose (this rank's under torchrun), with its LM loaded in the
    dtype they choose."""
    resolved, device = model_flags.open_model(request, getattr(args, "device", None), context.local_rank,
                                              context.is_main)
    return resolved, device, resolved.load_lm(device, model_flags.resolve_dtype(getattr(args, "dtype", None), device))


def setting_label(name: str, config_file: str | None) -> str:
    """How errors name a setting: its flag (`--cache-dir`), or the field and the file it came from
    (`cache_dir (from eval.yaml)`)."""
    return f"{name} (from {config_file})" if config_file else f"--{name.replace('_', '-')}"


def check_output_file(path: str | Path, flag: str) -> None:
    """`path` can be created or replaced as a file: not a directory, under a writable directory (created later)."""
    files.check_output_file(path, flag, ConfigError)


def plot_formats() -> dict[str, str]:
    """File extensions matplotlib can write, with their descriptions; ConfigError without matplotlib."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as error:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib (part of the 'eval' extra)") from error
    return FigureCanvasBase.get_supported_filetypes()


def check_plot_file(path: str | Path, flag: str = "--plot") -> None:
    """An output file whose extension matplotlib can write."""
    check_output_file(path, flag)
    extension = Path(path).suffix.lower().lstrip(".")
    formats = plot_formats()
    if extension not in formats:
        kind = f".{extension}" if extension else "a file without extension"
        raise ConfigError(f"{flag} {path}: cannot write a plot as {kind}; use one of "
                          f"{', '.join('.' + name for name in sorted(formats))}")


def check_output_folder(path: str | Path, flag: str) -> None:
    """`path` is, or can be created as, a writable directory."""
    problem = folder_problem(Path(path))
    if problem is not None:
        raise ConfigError(f"{flag} {path}: {problem}")


def claim_outputs(config: EvaluationSettings, flag: str) -> None:
    """The resume records folder writable (when resuming), then the output claimed for this command
    (`output_lock.claim_output`): a second run on the same output stops here, before loading a model."""
    if config.output is None:
        return
    if config.resume:
        check_records_folder(config.output, flag)
    claim_output(config.output)


def check_cache_folder(path: str | Path, flag: str) -> None:
    """A codes cache: an existing folder that can be read (a shared, read-only cache is read without storing new
    codes), or one that can be created."""
    path = Path(path)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: cannot be read (permission denied)")
        return
    check_output_folder(path, flag)


def check_input_path(path: str | Path, flag: str, folder: bool = False) -> None:
    """`path` exists (as a folder when `folder`, else as anything) and can be read."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such {'folder' if folder else 'file or folder'}")
    if folder and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: cannot be read (permission denied)")


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


@dataclasses.dataclass
class Invocation:
    """What this command was asked to do, for the message printed when it is interrupted.

    `unit` names a finished record (`sequence`, `utterance`; None for a command that keeps none); `partial_results`:
    the output file is rewritten as each record finishes, so an interrupted run leaves the records finished so far
    there.
    """

    program: str
    argv: list[str]
    unit: str | None
    partial_results: bool = False
    config: EvaluationSettings | None = None

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
        """`body()`'s exit code through `run_command` (this interruption message on Ctrl-C, for a command that keeps
        records); afterwards the outputs it claimed are released and the torchrun process group is shut down."""
        try:
            return run_command(body, self.interrupted if self.unit else None)
        finally:
            release_claims()
            shutdown_distributed()


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line of moshi_eval: `main(argv)` parses `argv` (`sys.argv[1:]` by default) with `parser()` and runs
    `body(args, invocation)` through `Invocation.run`; warnings print on one line. `unit` and `partial_results` are
    the `Invocation`'s (None: the command keeps no records, Ctrl-C says `interrupted` alone)."""

    program: str
    parser: Callable[[], argparse.ArgumentParser]
    body: Callable[[argparse.Namespace, Invocation], int]
    unit: str | None = None
    partial_results: bool = False

    def main(self, argv: Sequence[str] | None = None) -> int:
        model_flags.warnings_on_one_line()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = self.parser().parse_args(argv)
        invocation = Invocation(self.program, argv, self.unit, self.partial_results)
        return invocation.run(lambda: self.body(args, invocation))
