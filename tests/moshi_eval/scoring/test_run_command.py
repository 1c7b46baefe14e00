"""The shared ending of evaluation command lines: expected errors as one `error:` line (exit 2), Ctrl-C as one
`interrupted:` line (exit 130), anything else unchanged."""

from __future__ import annotations

import pytest

from moshi.models.model_flags import error_line
from moshi_eval.scoring.cli import run_command
from moshi_eval.scoring.errors import ConfigError, NonFiniteLossError


def raising(error):
    def body() -> int:
        raise error
    return body


@pytest.mark.parametrize("error", [
    ConfigError("f.yaml: bad"), FileNotFoundError(2, "No such file or directory", "w.safetensors"),
    NotImplementedError("conditioned models"), NonFiniteLossError("seq", 3, 1), PermissionError("denied"),
])
def test_expected_errors_are_one_line(capsys, error):
    assert run_command(raising(error)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_error_line_names_the_file_and_joins_lines():
    assert error_line(FileNotFoundError(2, "No such file or directory", "w.safetensors")) == (
        "w.safetensors: No such file or directory")
    assert error_line(ValueError("weights in x do not match the model:\n  missing keys (1): a\n  unexpected keys "
                                 "(2): b, c")) == ("weights in x do not match the model: missing keys (1): a; "
                                                   "unexpected keys (2): b, c")


def test_interrupt_and_unexpected_errors(capsys):
    assert run_command(raising(KeyboardInterrupt()), lambda: "resume with: x") == 130
    assert capsys.readouterr().err == "interrupted: resume with: x\n"
    assert run_command(lambda: 0) == 0
    with pytest.raises(KeyError):
        run_command(raising(KeyError("a bug")))
