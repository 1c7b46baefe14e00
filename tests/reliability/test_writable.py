"""What a run writes is checked writable before any work (the resume records folder included), and a codes cache that
is read-only, as a colleague's shared cache is, is read: complete, it serves the whole run; incomplete, the run goes on
with one note. Run in child processes with permission bits enforced (root otherwise writes through them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evaluation_helpers import as_ordinary_user, error_lines, run_module, save_small_checkpoint, warning_lines
from librilight_helpers import write_tree_for_cli

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The small checkpoint, two one-chapter books, and a first run that filled a codes cache."""
    root = tmp_path_factory.mktemp("writable")
    argv = ["--audio-dir", str(write_tree_for_cli(root / "tree")), "--max-chapters", "1", "--positions", "20",
            "--window", "10", "--batch-size", "2", "--quiet", *save_small_checkpoint(root / "checkpoint")]
    done = run_module("moshi_eval.librilight", [*argv, "--cache-dir", str(root / "cache"), "--output",
                                                str(root / "first.json")])
    assert done.returncode == 0, done.stderr
    return root, argv, numbers(root / "first.json")


def numbers(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {key: value for key, value in data.items() if key not in ("timing", "config")}


def read_only(folder: Path) -> None:
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)


def lines_about_files(stderr: str) -> list[str]:
    return [line for line in warning_lines(stderr) if "worse than uniform" not in line]


def test_read_only_records_folder_is_an_error_before_any_work(scored, tmp_path):
    _, argv, _ = scored
    output = tmp_path / "run.json"
    records = tmp_path / "run.sequences"
    records.mkdir()
    read_only(records)
    done = run_module("moshi_eval.librilight", [*argv, "--no-cache", "--output", str(output)], as_ordinary_user())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == error_lines(done.stderr) == [
        (f"error: --output {output}: its resume records folder {records}: cannot write in {records} (permission "
        "denied); make it writable or turn resuming off (--no-resume)")]
    assert not output.exists() and not list(records.iterdir())


def test_read_only_complete_cache_serves_the_run(scored, tmp_path):
    root, argv, expected = scored
    cache = tmp_path / "shared_cache"
    shutil.copytree(root / "cache", cache)
    read_only(cache)
    output = tmp_path / "run.json"
    done = run_module("moshi_eval.librilight", [*argv, "--cache-dir", str(cache), "--output", str(output)],
                      as_ordinary_user())
    assert done.returncode == 0, done.stderr
    assert lines_about_files(done.stderr) == []
    timing = json.loads(output.read_text())["timing"]
    assert timing["codes_cache_hits"] == 3 and timing["codes_cache_misses"] == 0
    assert numbers(output) == expected


def test_read_only_incomplete_cache_is_read_and_noted(scored, tmp_path):
    root, argv, expected = scored
    cache = tmp_path / "shared_cache"
    shutil.copytree(root / "cache", cache)
    entries = sorted(cache.glob("*.safetensors"))
    entries[0].unlink()
    read_only(cache)
    output = tmp_path / "run.json"
    done = run_module("moshi_eval.librilight", [*argv, "--cache-dir", str(cache), "--output", str(output)],
                      as_ordinary_user())
    assert done.returncode == 0, done.stderr
    note = (f"warning: {cache}: the codes cache cannot be written (Permission denied); it is still read, but codes "
            "encoded by this run are not stored")
    assert lines_about_files(done.stderr) == [note]
    timing = json.loads(output.read_text())["timing"]
    assert timing["codes_cache_hits"] == 2 and timing["codes_cache_misses"] == 1
    assert numbers(output) == expected
    assert sorted(cache.glob("*.safetensors")) == entries[1:]
