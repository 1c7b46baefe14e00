"""Acceptance 6: `torchrun` with two CPU processes gives the same results as one process.

The ranks exchange their results through torchrun's store (no gloo process group: see `distributed.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from librilight_helpers import REPO_ROOT, assert_results_close, comparable, random_codes, subprocess_env, write_codes


def test_two_torchrun_cpu_ranks_equal_one_process(parity_dir, tmp_path):
    case_dir = parity_dir / "lm_moshiko_tiny"
    card = json.loads((case_dir / "config.json").read_text())["card"]
    generator = torch.Generator().manual_seed(11)
    for index, length in enumerate((21, 34, 27, 15, 30)):
        write_codes(tmp_path / "codes", f"seq{index}", random_codes(generator, 16 if index % 2 else 8, length, card))
    common = ["-m", "moshi_eval.librilight", "--codes", str(tmp_path / "codes"), "--moshi-weights",
              str(case_dir / "model.safetensors"), "--lm-config", str(case_dir / "config.json"), "--user-stream",
              "zero", "--positions", "20", "--window", "10", "--batch-size", "2", "--device", "cpu", "--quiet"]
    single = subprocess.run([sys.executable, *common, "--output", str(tmp_path / "one.json")], cwd=REPO_ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ranks = subprocess.run([*launcher, *common, "--output", str(tmp_path / "two.json")], cwd=REPO_ROOT,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert ranks.returncode == 0, ranks.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["timing"]["world_size"] == 2 and one["timing"]["world_size"] == 1
    assert [s["id"] for s in two["sequences"]] == [f"seq{i}" for i in range(5)]
    assert_results_close(comparable(two), comparable(one))
    assert ranks.stdout.count("librilight_samples") == 1
