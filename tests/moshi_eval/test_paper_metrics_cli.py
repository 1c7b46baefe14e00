"""The command line: flags and a training YAML's `paper_metrics:` section, one `error:` line for bad input, and two
torchrun ranks giving the results of one process."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from librilight_helpers import REPO_ROOT, subprocess_env
from paper_metrics_helpers import DATA, copy_sets, demo_mimi, save_small_checkpoint, set_dirs, small_lm

from moshi_eval.paper_metrics import evaluate_paper_metrics
from moshi_eval.paper_metrics.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The small LM and the demo Mimi as local weights and configs, and the model flags naming them."""
    return save_small_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def comparable(data):
    data = {key: value for key, value in data.items() if key != "timing"}
    data["model"] = {key: value for key, value in data["model"].items() if key != "source"}
    return data


def test_flags_end_to_end(tmp_path, checkpoint, capsys):
    output = tmp_path / "out" / "results.json"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in set_dirs().items()]
    status = main([*flags, *checkpoint, "--batch-size", "8", "--swuggy-max-pairs", "5", "--seed", "2", "--output",
                   str(output), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "swuggy_accuracy" in printed and "paper_metrics_avg" in printed
    data = json.loads(output.read_text())
    assert data["swuggy_samples"] == 5 and data["settings"]["max_pairs"]["swuggy"] == 5
    expected = evaluate_paper_metrics(small_lm(), demo_mimi(), set_dirs(), swuggy_max_pairs=5, seed=2,
                                      batch_size=8, cache_dir=str(tmp_path / "cache"), progress=False)
    assert comparable(data) == comparable(expected)


def test_training_yaml_section(tmp_path, checkpoint, capsys):
    """A training YAML shaped like our users': its paper_metrics: section names the four benchmarks."""
    root = copy_sets(tmp_path / "sets")
    (tmp_path / "train.yaml").write_text(f"""
run_dir: /tmp/run
lr: 0.0001
paper_metrics:
  paper_metrics_eval: true
  paper_metrics_freq: 100
  paper_metrics_use_silence: true
  sblimp_audio_dir: {root}/syntactic/dev/
  sblimp_gold_csv: {root}/syntactic/dev/gold.csv
  sblimp_max_pairs: 2000
  sblimp_stream_config: moshi_silence
  sstory_audio_dir: {root}/sstory/
  sstory_max_pairs: 1000
  swuggy_audio_dir: {root}/lexical/dev/
  swuggy_gold_csv: {root}/lexical/dev/gold.csv
  swuggy_max_pairs: 4
  tstory_audio_dir: {root}/tstory/
  tstory_max_pairs: 1000
  librilight_audio_dir: /data/librilight
""")
    output = tmp_path / "results.json"
    assert main(["--config", str(tmp_path / "train.yaml"), *checkpoint, "--output", str(output), "--cache-dir",
                 str(tmp_path / "cache"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ignoring paper_metrics_eval, paper_metrics_freq, sblimp_stream_config" in err
    assert "librilight_audio_dir" in err
    data = json.loads(output.read_text())
    assert data["settings"]["other_stream"] == "silence"
    assert [data[f"{b}_samples"] for b in ("swuggy", "sblimp", "sstory", "tstory")] == [4, 6, 3, 2]


def test_mistakes_are_one_error_line(tmp_path, checkpoint, capsys):
    assert main([*checkpoint, "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no benchmark to run: give at least one of --swuggy-dir, "
                                               "--sblimp-dir, --sstory-dir, --tstory-dir (or a --config naming them)")
    root = copy_sets(tmp_path / "sets")
    gold = root / "lexical" / "dev" / "gold.csv"
    gold.write_text(gold.read_text().replace("voice", "speaker"))
    assert main([f"--swuggy-dir={root / 'lexical' / 'dev'}", *checkpoint, "--quiet", "--output",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "lacks the column(s) voice" in err[0]
    (tmp_path / "bad.yaml").write_text("paper_metrics:\n  swugy_audio_dir: /x\n")
    assert main(["--config", str(tmp_path / "bad.yaml"), *checkpoint]) == 2
    assert ("unknown key(s) 'swugy_audio_dir' (did you mean 'swuggy_audio_dir', which sets swuggy_dir?)"
            in capsys.readouterr().err)
    assert main([f"--tstory-dir={tmp_path / 'nowhere'}", *checkpoint]) == 2
    assert capsys.readouterr().err.strip() == f"error: --tstory-dir {tmp_path / 'nowhere'}: no such folder"


def test_two_torchrun_ranks_equal_one_process(tmp_path, checkpoint):
    dirs = {"sblimp_dir": str(DATA / "syntactic" / "dev"), "tstory_dir": str(DATA / "tstory")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "moshi_eval.paper_metrics", *[f"--{k.replace('_', '-')}={v}" for k, v in dirs.items()],
               *checkpoint, "--batch-size", "3", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--output",
               str(tmp_path / "two.json")]
    ranks = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                           check=False)
    assert ranks.returncode == 0, ranks.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    one = evaluate_paper_metrics(small_lm(), demo_mimi(), dirs, batch_size=3, cache_dir=str(tmp_path / "cache"),
                                 progress=False)
    assert (one["timing"]["world_size"], two["timing"]["world_size"]) == (1, 2)
    assert two["timing"]["scored_utterances"] == len(two["utterances"]) == 16
    for a, b in zip(one["utterances"], two["utterances"], strict=True):
        assert (a["file"], a["tokens"]) == (b["file"], b["tokens"])
        assert a["sum_logprob"] == pytest.approx(b["sum_logprob"], rel=1e-5)
    assert {k: v for k, v in one.items() if k.endswith(("_accuracy", "_samples"))} == {
        k: v for k, v in two.items() if k.endswith(("_accuracy", "_samples"))}
    assert ranks.stdout.count("paper_metrics_avg") == 1


def test_ctrl_c_says_what_is_kept(tmp_path, checkpoint, capsys, monkeypatch):
    from moshi_eval.paper_metrics import evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_paper_metrics", interrupted)
    argv = [f"--tstory-dir={DATA / 'tstory'}", *checkpoint, "--output", str(tmp_path / "run.json"), "--quiet"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    kept = f"interrupted: 0 finished utterance(s) kept in {tmp_path / 'run.sequences'}/"
    assert len(err) == 1 and err[0].startswith(kept)
    assert err[0].endswith(f"resume with: python -m moshi_eval.paper_metrics {shlex.join(argv)}")
