"""The README's API tour runs as written, from a local checkpoint folder on this machine (no Hub, no GPU needed)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

from moshi.server.demo_checkpoint import write_demo_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"
LOADING_FOLDER = "/tmp/demo"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.usefixtures("single_thread")
def test_loading_then_scoring_runs_as_written(tmp_path: Path) -> None:
    loading, scoring = python_blocks()[:2]
    assert f'from_hf_repo("{LOADING_FOLDER}")' in loading
    write_demo_checkpoint(tmp_path / "demo")
    script = tmp_path / "readme_api_tour.py"
    script.write_text(loading.replace(LOADING_FOLDER, str(tmp_path / "demo")) + scoring)
    namespace = runpy.run_path(str(script))
    losses = namespace["losses"]
    assert losses.shape == (1, 25, namespace["lm"].dep_q)   # two seconds of audio: 25 frames
    assert torch.isfinite(losses[:, :-1]).all()             # the last frame of the delayed codebooks is undefined
