"""Acceptance 2: the removed `teacher_forcing_tokens` keyword says what replaces it, and the loops of the docs'
migration section and of the README, run as written, reproduce the per-frame losses of `moshi_eval.librilight`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_fixtures import load_case
from safetensors.torch import save_file

from moshi.models.lm import LMGen
from moshi_eval.librilight import evaluate_librilight

pytestmark = [pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning"),
              pytest.mark.usefixtures("single_thread")]

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATION_HEADING = "## Migrating from `teacher_forcing_tokens`"


def python_block(path: Path, heading: str) -> str:
    """The first ```python block after `heading` in a Markdown file."""
    text = path.read_text()
    assert heading in text, f"{heading!r} not in {path}"
    match = re.search(r"```python\n(.*?)```", text[text.index(heading):], flags=re.DOTALL)
    assert match is not None
    return match.group(1)


def moshi_eval_losses(lm, codes: torch.Tensor, user: torch.Tensor | None, folder: Path) -> np.ndarray:
    """`[B, T, dep_q]` per-frame, per-codebook losses from `moshi_eval.librilight` (one codes file per item)."""
    for b in range(codes.shape[0]):
        stored = codes[b] if user is None else torch.cat([codes[b], user[b]])
        save_file({"codes": stored.contiguous()}, str(folder / f"item{b}.safetensors"))
    result = evaluate_librilight(lm, None, codes=[str(folder)], user_stream="zero", positions=[4], window=2,
                                 progress=False)
    by_id = {sequence.sequence_id: sequence.codebook_losses for sequence in result.sequences}
    return np.stack([by_id[f"item{b}"] for b in range(codes.shape[0])])


def test_teacher_forcing_tokens_says_what_replaces_it(lm_case):
    lm = lm_case.model()
    lm_gen = LMGen(lm, use_sampling=False)
    user = torch.zeros(lm_case.batch_size, lm.n_q - lm.dep_q, 1, dtype=torch.long)
    own = torch.zeros(lm_case.batch_size, lm.dep_q, 1, dtype=torch.long)
    with lm_gen.streaming(lm_case.batch_size):
        with pytest.raises(TypeError) as error:
            lm_gen.step_with_logits(user, depformer_replace_tokens=own, teacher_forcing_tokens=own[:, :, 0])
        with pytest.raises(TypeError, match="unexpected keyword argument 'other'"):
            lm_gen.step_with_logits(user, other=own)
    message = str(error.value)
    for part in ("teacher_forcing_tokens", "depformer_replace_tokens", "delayed layout", "teacher_forced_step_inputs",
                 "out.tokens", "moshi_eval.librilight", "docs/step_with_logits.md", "Migrating from"):
        assert part in message, part
    assert MIGRATION_HEADING in (REPO_ROOT / "docs" / "step_with_logits.md").read_text()


@pytest.mark.parametrize("with_user", [False, True])
def test_docs_migration_loop_reproduces_moshi_eval(parity_dir, tmp_path, with_user):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model()
    codes, user = case.io["own_audio"], case.io["user_audio"] if with_user else None
    namespace = {"lm": lm, "codes": codes, "user": user}
    exec(python_block(REPO_ROOT / "docs" / "step_with_logits.md", MIGRATION_HEADING), namespace)  # noqa: S102
    got = namespace["losses"].numpy()
    expected = moshi_eval_losses(lm, codes, user, tmp_path)
    assert got.shape == expected.shape == (case.batch_size, case.num_frames, lm.dep_q)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.isnan(expected).any()


def test_readme_loop_reproduces_moshi_eval(tmp_path):
    from moshi_eval.librilight.demo import build_demo_lm, build_demo_mimi

    lm, mimi = build_demo_lm(), build_demo_mimi()
    namespace = {"lm": lm, "mimi": mimi}
    exec(python_block(REPO_ROOT / "README.md", "### Logits from the streaming state"), namespace)  # noqa: S102
    got = namespace["losses"].numpy()
    expected = moshi_eval_losses(lm, namespace["codes"], None, tmp_path)
    defined = ~np.isnan(expected)
    assert got.shape == expected.shape and (~defined).any()
    np.testing.assert_allclose(got[defined], expected[defined], rtol=0, atol=1e-5)
