"""`--ttt-config train.yaml` evaluates our users' moshi-finetune TTT checkpoints: their section read from the training
YAML, the causal form streamed, and the results' `flags` saying so."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from librilight_helpers import write_codes
from user_ttt_fixtures import load_user_case

from moshi.models.model_flags import ModelRequest
from moshi.modules.ttt import CAUSAL_STREAMING_NOTE
from moshi_eval.librilight import evaluate_librilight
from moshi_eval.librilight.cli import main
from moshi_eval.scoring.model import TTT_CAUSAL_FORM_FLAG

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")

FRAMES = 30


@pytest.fixture
def case(parity_dir):
    return load_user_case(parity_dir, "mlp2_rope")


@pytest.fixture
def codes_dir(tmp_path):
    folder = tmp_path / "codes"
    folder.mkdir()
    generator = torch.Generator().manual_seed(3)
    for name in ("a", "b"):
        write_codes(folder, name, torch.randint(0, 40, (8, FRAMES), generator=generator))
    return folder


def cli_arguments(case, codes_dir, output) -> list[str]:
    return ["--moshi-weights", str(case.consolidated), "--lm-config", str(case.folder / "config.json"),
            "--ttt-config", str(case.folder / "train.yaml"), "--codes", str(codes_dir), "--user-stream", "zero",
            "--positions", "20,30", "--window", "10", "--dtype", "float32", "--device", "cpu", "--output", str(output),
            "--no-resume", "--quiet"]


def test_cli_reads_their_yaml_streams_the_causal_form_and_flags_it(case, codes_dir, tmp_path):
    output = tmp_path / "results.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(cli_arguments(case, codes_dir, output)) == 0
    assert sum(str(w.message) == CAUSAL_STREAMING_NOTE for w in caught) == 1
    assert not [w for w in caught if str(w.message) == TTT_CAUSAL_FORM_FLAG], "the flag is no loss warning"
    data = json.loads(output.read_text())
    assert data["flags"][0] == TTT_CAUSAL_FORM_FLAG and all("ln(card)" in flag for flag in data["flags"][1:])
    assert data["model"]["ttt_config"] == case.ttt_config().to_dict()

    causal = case.model(case.ttt_config(minibatch_causal=True))
    expected = evaluate_librilight(causal, None, codes=[str(codes_dir)], user_stream="zero", positions=[20, 30],
                                   window=10, progress=False).to_dict()
    assert TTT_CAUSAL_FORM_FLAG not in expected["flags"]
    for key in ("librilight_loss_20", "librilight_loss_30"):
        assert data[key] == pytest.approx(expected[key], abs=1e-5)


def test_the_ttt_config_is_part_of_the_resume_key(case, codes_dir, tmp_path):
    """The same weights under another TTT config score differently: records of one must not resume the other."""
    output = tmp_path / "results.json"
    causal_yaml = tmp_path / "causal.json"
    causal_yaml.write_text(json.dumps({"ttt": case.ttt_config(minibatch_causal=True, qk_l2_norm=False).to_dict()}))
    resuming = [argument for argument in cli_arguments(case, codes_dir, output) if argument != "--no-resume"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(resuming) == 0
        theirs = json.loads(output.read_text())
        resuming[resuming.index(str(case.folder / "train.yaml"))] = str(causal_yaml)
        assert main(resuming) == 0
    other = json.loads(output.read_text())
    assert TTT_CAUSAL_FORM_FLAG not in other["flags"] and other["model"]["ttt_config"]["qk_l2_norm"] is False
    assert other["librilight_loss_30"] != pytest.approx(theirs["librilight_loss_30"], abs=1e-3)


@pytest.mark.parametrize("content, message", [
    ("data: {}\n", "no `ttt:` section"),
    ("ttt: [1, 2]\n", "no `ttt:` section"),
    ("ttt:\n  enable: true\n  use_ropes: true\n", "use_ropes"),
    ("ttt: {enable: true\n", "not valid YAML"),
])
def test_bad_ttt_config_files_are_one_error_line(case, codes_dir, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    arguments = cli_arguments(case, codes_dir, tmp_path / "results.json")
    arguments[arguments.index(str(case.folder / "train.yaml"))] = str(bad)
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0] and str(bad) in error[0]


def test_the_request_applies_the_section_over_the_lm_config(case):
    request = ModelRequest(moshi_weights=str(case.consolidated), lm_config=str(case.folder / "config.json"),
                           ttt_config=str(case.folder / "train.yaml"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = request.resolve().load_lm("cpu", torch.float32)
    assert lm.ttt_config == case.ttt_config()
