"""`contrib/upstream_pr`: the pull request builder refuses what it was not written for; the full check (network: it
installs moshi==0.2.13 from PyPI) runs when MOSHI_CHECK_UPSTREAM_PR=1, which `.ci/run` sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "contrib" / "upstream_pr"


def _build(upstream: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FOLDER / "build.py"), "--upstream", str(upstream), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=60)


def test_build_refuses_another_lm_py_in_one_line_and_writes_nothing(tmp_path):
    lm = tmp_path / "upstream" / "moshi" / "models" / "lm.py"
    lm.parent.mkdir(parents=True)
    lm.write_text("class LMGen:\n    def step(self, input_tokens):\n        return None\n")
    result = _build(tmp_path / "upstream", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "class _LMGenState(" in result.stderr and "0.2.13" in result.stderr
    assert not (tmp_path / "out").exists()


def test_build_names_a_folder_without_lm_py(tmp_path):
    result = _build(tmp_path, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {tmp_path / 'moshi/models/lm.py'} ")


@pytest.mark.skipif(os.environ.get("MOSHI_CHECK_UPSTREAM_PR") != "1",
                    reason="installs moshi==0.2.13 from PyPI: set MOSHI_CHECK_UPSTREAM_PR=1 to run")
def test_check_script_passes(tmp_path):
    out = tmp_path / "patched"
    result = subprocess.run(["bash", str(FOLDER / "check.sh"), "--out", str(out)], check=False, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all equal" in result.stdout
    patch = (out / "step_with_logits.patch").read_text().splitlines()
    added = sum(line.startswith("+") and not line.startswith("+++") for line in patch)
    changed = sum(line.startswith("-") and not line.startswith("---") for line in patch)
    assert added <= 100 and changed <= 15, (added, changed)
