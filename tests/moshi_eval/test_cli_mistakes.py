"""Acceptance 4: every expected mistake on the command line is one `error:` line naming the file or value (exit code
2, no traceback), paths are checked before any model is loaded, and Ctrl-C says how to resume, which then works."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from librilight_helpers import random_codes, save_demo_checkpoint, write_codes, write_tree_for_cli
from safetensors.torch import save_file

from moshi.models import loaders
from moshi.models.model_flags import ResolvedModel
from moshi_eval.librilight.cli import main
from moshi_eval.librilight.demo import DEMO_LM_CONFIG
from moshi_eval.scoring.run import SequenceStore

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")

CARD = DEMO_LM_CONFIG["card"]
SHAPE_MISMATCH = (r"shape mismatch \(\d+; is the config the one these weights were trained with\?\): \S+ "
                  r"\[\d+(, \d+)*\] in the file, \[\d+(, \d+)*\] in the model")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved demo checkpoint, broken variants of it, three short codes files and a small audio tree."""
    root = tmp_path_factory.mktemp("cli_mistakes")
    lm, _, model_flags = save_demo_checkpoint(root / "checkpoint")
    generator = torch.Generator().manual_seed(0)
    for name, frames in (("a", 12), ("b", 10), ("c", 9)):
        write_codes(root / "codes", name, random_codes(generator, 8, frames, CARD - 1))
    state = lm.state_dict()
    (root / "corrupt.safetensors").write_bytes((root / "checkpoint" / "lm.safetensors").read_bytes()[:200])
    dropped = dict(state)
    del dropped["out_norm.alpha"]
    save_file(dropped, str(root / "dropped.safetensors"))
    poisoned = dict(state)
    poisoned["emb.0.weight"] = poisoned["emb.0.weight"].clone()
    poisoned["emb.0.weight"][CARD - 1] = float("nan")
    save_file(poisoned, str(root / "poisoned.safetensors"))
    codes = random_codes(generator, 8, 12, CARD - 1)
    codes[0, 2] = CARD - 1
    write_codes(root / "poisoned_codes", "p", codes)
    (root / "wide.json").write_text(json.dumps(DEMO_LM_CONFIG | {"dim": 96}))
    (root / "conditioned.json").write_text(json.dumps(DEMO_LM_CONFIG | {"conditioners": {"description": {}}}))
    (root / "a_file.txt").write_text("x")
    (root / "out_dir").mkdir()
    (root / "invalid.yaml").write_text("positions: [1, 2\n")
    (root / "typo.yaml").write_text("librilight_num_sequence: 2\n")
    write_tree_for_cli(root / "tree")
    return root, model_flags


def base_argv(root: Path, model_flags: list[str]) -> list[str]:
    return ["--codes", str(root / "codes"), "--user-stream", "zero", *model_flags[:4], "--device", "cpu",
            "--positions", "8", "--window", "4", "--quiet", "--cache-dir", str(root / "cache")]


def replaced(argv: list[str], flag: str, value: str | None) -> list[str]:
    """`argv` with `flag`'s value replaced (or the flag and its value removed when `value` is None)."""
    index = argv.index(flag)
    return argv[:index] + ([flag, value] if value is not None else []) + argv[index + 2:]


MISTAKES = {
    "missing weights file": (lambda r, a: replaced(a, "--moshi-weights", str(r / "nowhere.safetensors")),
                             r"--moshi-weights \S+nowhere.safetensors: file not found", True),
    "unreadable weights file": (lambda r, a: replaced(a, "--moshi-weights", str(r / "corrupt.safetensors")),
                                r"LM weights \S+corrupt.safetensors is not a readable safetensors file", False),
    "weights missing a key": (lambda r, a: replaced(a, "--moshi-weights", str(r / "dropped.safetensors")),
                              r"weights in \S+dropped.safetensors do not match the model: missing keys \(1\): out_norm",
                              False),
    "shapes that do not match the config": (lambda r, a: replaced(a, "--lm-config", str(r / "wide.json")),
                                            SHAPE_MISMATCH, False),
    "unsupported config": (lambda r, a: replaced(a, "--lm-config", str(r / "conditioned.json")),
                           r"\S+conditioned.json: conditioners: conditioned Moshi models", True),
    "local folder given as --hf-repo": (
        lambda r, a: replaced(replaced(a, "--moshi-weights", None), "--lm-config", None) + [
            "--hf-repo", "./checkpoints/no_such_run"],
        r"--hf-repo ./checkpoints/no_such_run: no such local folder", True),
    "non-finite loss": (lambda r, a: replaced(replaced(a, "--moshi-weights", str(r / "poisoned.safetensors")),
                                              "--codes", str(r / "poisoned_codes")),
                        r"non-finite loss \(NaN or inf\) in sequence 'p' at frame 2, codebook 1", False),
    "output naming a folder": (lambda r, a: a + ["--output", str(r / "out_dir")],
                               r"--output \S+out_dir: is a folder", True),
    "plot format": (lambda r, a: a + ["--plot", str(r / "curve.xyz")],
                    r"--plot \S+curve.xyz: cannot write a plot as .xyz; use one of .*\.png", True),
    "plot under a file": (lambda r, a: a + ["--plot", str(r / "a_file.txt" / "curve.png")],
                          r"--plot \S+curve.png: \S+a_file.txt is a file", True),
    "missing config file": (lambda r, a: a + ["--config", str(r / "none.yaml")],
                            r"cannot read config file \S+none.yaml", True),
    "invalid config file": (lambda r, a: a + ["--config", str(r / "invalid.yaml")],
                            r"config file \S+invalid.yaml is not valid YAML", True),
    "unknown key": (lambda r, a: a + ["--config", str(r / "typo.yaml")],
                    r"typo.yaml: unknown key\(s\) 'librilight_num_sequence' \(did you mean 'librilight_num_sequences'",
                    True),
    "missing data": (lambda r, a: replaced(a, "--codes", str(r / "no_codes")),
                     r"--codes \S+no_codes: no such file or folder", True),
    "bad value": (lambda r, a: replaced(a, "--window", "0"), r"window must be at least 1, got 0", True),
    "bad device": (lambda r, a: replaced(a, "--device", "gpu"), r"--device 'gpu' is not a device", True),
    "missing book": (lambda r, a: [*replaced(replaced(a, "--codes", None), "--user-stream", None), "--audio-dir",
                                   str(r / "tree"), "--book", "7/frist", "--mimi-weights",
                                   str(r / "checkpoint" / "mimi.safetensors"), "--mimi-config",
                                   str(r / "checkpoint" / "mimi_config.json")],
                     r"book\(s\) not found in \S+tree: 7/frist \(close matches: 7/first\)", False),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_is_one_error_line(files, tmp_path, capsys, monkeypatch, mistake):
    root, model_flags = files
    build_argv, pattern, before_any_work = MISTAKES[mistake]
    argv = build_argv(root, base_argv(root, model_flags))
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "results.json")]
    if before_any_work:
        monkeypatch.setattr(ResolvedModel, "load_lm", lambda *args: pytest.fail("a model was loaded before the check"))
    monkeypatch.setattr(loaders, "hf_hub_download", lambda *args, **kwargs: pytest.fail("the Hub was contacted"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == errors[0]
    assert re.search(pattern, errors[0]), errors[0]


def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(files, tmp_path, capsys, monkeypatch):
    root, model_flags = files
    argv = [*base_argv(root, model_flags), "--output", str(tmp_path / "run.json")]
    original = SequenceStore.save
    saves = []

    def interrupt_second_save(self, key, sequence):
        saves.append(sequence.sequence_id)
        if len(saves) == 2:
            raise KeyboardInterrupt
        original(self, key, sequence)

    monkeypatch.setattr(SequenceStore, "save", interrupt_second_save)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    resume = f"python -m moshi_eval.librilight {shlex.join(argv)}"
    assert err[-1] == (f"interrupted: 1 finished sequence(s) kept in {tmp_path / 'run.sequences'}/ (partial results "
                       f"in {tmp_path / 'run.json'}); resume with: {resume}")
    partial = json.loads((tmp_path / "run.json").read_text())
    assert partial["complete"] is False and [s["id"] for s in partial["sequences"]] == saves[:1]
    monkeypatch.setattr(SequenceStore, "save", original)
    assert main(shlex.split(resume)[3:]) == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["complete"] is True and data["timing"]["resumed_sequences"] == 1 and data["num_sequences"] == 3
    assert "sequences: 3 scored (1 resumed), 0 skipped" in capsys.readouterr().out
