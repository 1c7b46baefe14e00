"""What Ctrl-C says, for every state a command can be interrupted in: nothing set up yet, results not kept for
resuming, records kept (with partial results in the output file for a command that writes them), under torchrun."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from moshi_eval.scoring.cli import Invocation

ARGV = ["--codes", "a b.safetensors", "--no-resume"]


def invocation(partial_results: bool, output=None, resume: bool = True) -> Invocation:
    command = Invocation("python -m moshi_eval.x", ARGV, "sequence", partial_results)
    if output is not None:
        command.config = SimpleNamespace(output=str(output), resume=resume)
    return command


def test_the_resume_command_drops_no_resume(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rerun = f"python -m moshi_eval.x {shlex.join(ARGV[:2])}"
    assert invocation(False).interrupted() == f"nothing was computed yet; rerun with: {rerun}"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert invocation(False).resume_command() == "the same torchrun command without --no-resume"


@pytest.mark.parametrize("partial_results", [False, True])
def test_records_not_kept(tmp_path, monkeypatch, partial_results):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    message = invocation(partial_results, tmp_path / "r.json", resume=False).interrupted()
    where = f"are in {tmp_path / 'r.json'} but were not kept for resuming" if partial_results else "were not kept"
    assert message.startswith(f"finished sequences {where} (--no-resume); rerun with: python -m moshi_eval.x ")


@pytest.mark.parametrize("partial_results", [False, True])
def test_records_kept(tmp_path, monkeypatch, partial_results):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    store = tmp_path / "r.sequences"
    store.mkdir()
    for name in ("a", "b"):
        (store / f"{name}.safetensors").write_bytes(b"")
    (tmp_path / "r.json").write_text("{}")
    message = invocation(partial_results, tmp_path / "r.json").interrupted()
    partial = f" (partial results in {tmp_path / 'r.json'})" if partial_results else ""
    assert message.startswith(f"2 finished sequence(s) kept in {store}/{partial}; resume with: ")
