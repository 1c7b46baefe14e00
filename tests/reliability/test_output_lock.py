"""One run per output: a second run on an output being written stops with one line naming the running one; the lock is
released however a run ends; a lock left by a process that is gone is taken over with a note."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from evaluation_helpers import error_lines, run_module, save_small_checkpoint, small_lm, warning_lines
from librilight_helpers import REPO_ROOT, random_codes, subprocess_env, write_codes

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.librilight.cli import main as librilight_main
from moshi_eval.paper_metrics.cli import main as paper_metrics_main
from moshi_eval.scoring.errors import FileNoteWarning, OutputLockedError
from moshi_eval.scoring.run import SequenceStore, claim_output, lock_path_for, process_start, release_claims

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")]

HOLD = """
import sys
from moshi_eval.scoring.run import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three short codes files and the small checkpoint's flags: a LibriLight command line that needs no Mimi."""
    root = tmp_path_factory.mktemp("lock")
    generator = torch.Generator().manual_seed(0)
    for name, frames in (("a", 12), ("b", 10), ("c", 9)):
        write_codes(root / "codes", name, random_codes(generator, 8, frames, 64))
    flags = save_small_checkpoint(root / "checkpoint")
    return ["--codes", str(root / "codes"), "--user-stream", "zero", *flags[:4], "--device", "cpu", "--positions", "8",
            "--window", "4", "--quiet", "--no-cache"]


class Holder:
    """Another process holding the lock of `output` until `stop()` (or killed)."""

    def __init__(self, output) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], cwd=REPO_ROOT, env=subprocess_env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.process.communicate("", timeout=60)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)


def test_second_run_on_a_running_output_exits_2_naming_the_running_one(setup, tmp_path, capsys):
    output = tmp_path / "run.json"
    holder = Holder(output)
    try:
        assert librilight_main([*setup, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert error_lines(err) == err.strip().splitlines(), err
        (line,) = error_lines(err)
        assert line.startswith(f"error: {output} is being written by another run (pid {holder.process.pid} on "
                               f"{socket.gethostname()} since ")
        assert line.endswith(f"); wait for it to end or choose another output (lock file {output}.lock)")
        assert not output.exists() and not (tmp_path / "run.sequences").exists()
        with pytest.raises(OutputLockedError, match=f"pid {holder.process.pid}"):
            evaluate_librilight(small_lm(), None, codes=setup[1:2], output=str(output))
    finally:
        holder.stop()
    assert not lock_path_for(output).exists()
    assert librilight_main([*setup, "--output", str(output)]) == 0
    assert not lock_path_for(output).exists()


def test_paper_metrics_refuses_a_running_output(tmp_path, capsys):
    from paper_metrics_helpers import DATA

    output = tmp_path / "pm.json"
    holder = Holder(output)
    try:
        flags = save_small_checkpoint(tmp_path / "checkpoint")
        status = paper_metrics_main(["--swuggy-dir", str(DATA / "lexical" / "dev"), *flags, "--output", str(output)])
        assert status == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {output} is being written by another run (pid {holder.process.pid} ")
    finally:
        holder.stop()


def test_lock_released_after_an_error_and_after_ctrl_c(setup, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run.json"
    weights = setup.index("--moshi-weights") + 1
    missing = [*setup[:weights], str(tmp_path / "nowhere.safetensors"), *setup[weights + 1:]]
    assert librilight_main([*missing, "--output", str(output)]) == 2
    assert "nowhere.safetensors: file not found" in capsys.readouterr().err
    assert not lock_path_for(output).exists()

    def interrupt(self, *args):
        assert lock_path_for(output).exists()  # held while the run works
        raise KeyboardInterrupt

    monkeypatch.setattr(SequenceStore, "save", interrupt)
    assert librilight_main([*setup, "--output", str(output)]) == 130
    assert not lock_path_for(output).exists()


def test_stale_lock_of_a_killed_run_is_taken_over_with_a_note(setup, tmp_path):
    output = tmp_path / "run.json"
    holder = Holder(output)
    holder.kill()
    stale = json.loads(lock_path_for(output).read_text())
    assert stale["pid"] == holder.process.pid
    done = run_module("moshi_eval.librilight", [*setup, "--output", str(output)])
    assert done.returncode == 0, done.stderr
    note = (f"warning: {lock_path_for(output)}: taking over the lock of a run that is gone (pid {stale['pid']} on "
            f"{stale['host']} since {stale['since']})")
    assert [line for line in warning_lines(done.stderr) if "worse than uniform" not in line] == [note]
    assert json.loads(output.read_text())["complete"] is True
    assert not lock_path_for(output).exists()


def write_lock(output, **fields) -> None:
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
            "since": "2025-01-01T00:00:00+00:00", "command": "x"} | fields
    lock_path_for(output).write_text(json.dumps(lock))


def test_lock_of_another_host_is_honoured(setup, tmp_path, capsys):
    output = tmp_path / "run.json"
    write_lock(output, pid=4242, host="gpu-node-7")
    assert librilight_main([*setup, "--output", str(output)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: {output} is being written by another run (pid 4242 on gpu-node-7 since "
                    f"2025-01-01T00:00:00+00:00); wait for it to end or choose another output (lock file "
                    f"{output}.lock; that host cannot be checked from here: delete the lock file if that run is gone)")
    assert lock_path_for(output).exists()


def test_reused_pid_and_unreadable_lock_are_stale(setup, tmp_path):
    """A lock naming a live pid that another process now has (its start time differs) is stale, as is a lock file
    that is not one of ours (ours are written whole)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        output = tmp_path / "run.json"
        write_lock(output, pid=sleeper.pid, started="1")
        with pytest.warns(FileNoteWarning, match=f"taking over the lock of a run that is gone .pid {sleeper.pid} "):
            assert librilight_main([*setup, "--output", str(output)]) == 0
        lock_path_for(output).write_text("{not json")
        with pytest.warns(FileNoteWarning, match="taking over the lock of a run that is gone .an unreadable lock file"):
            assert librilight_main([*setup, "--output", str(output)]) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_only_the_main_rank_takes_the_lock(tmp_path, monkeypatch):
    output = tmp_path / "run.json"
    monkeypatch.setenv("RANK", "1")
    claim_output(output)
    assert not lock_path_for(output).exists()
    monkeypatch.setenv("RANK", "0")
    claim_output(output)
    claim_output(output)  # taken again by its holder: counted
    assert json.loads(lock_path_for(output).read_text())["pid"] == os.getpid()
    release_claims()
    assert not lock_path_for(output).exists()
