"""The pipeline around the scores: resuming, the ZeroSpeech submission files, eval mode given back to a training loop,
bad audio, and the users' `PaperMetricsEvaluator` on a section shaped like theirs."""

from __future__ import annotations

import shutil

import pytest
import torch
from paper_metrics_helpers import DATA, SMALL_LM_CONFIG, codes_cache_dir, copy_sets, demo_mimi, set_dirs, small_lm

from moshi.models.lm import LMModel
from moshi_eval.paper_metrics import evaluate_paper_metrics
from moshi_eval.paper_metrics.section import read_user_section
from moshi_eval.scoring.errors import DataError

lm = pytest.fixture(small_lm, scope="module", name="lm")
cache_dir = pytest.fixture(codes_cache_dir, scope="module", name="cache_dir")


def settings(cache_dir, **extra):
    return set_dirs() | {"cache_dir": str(cache_dir), "batch_size": 8} | extra


def without_timing(data):
    return {key: value for key, value in data.items() if key != "timing"}


def test_resume_keeps_finished_utterances(lm, cache_dir, tmp_path, monkeypatch):
    output = tmp_path / "run" / "results.json"
    first = evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, output=str(output)), progress=False)
    assert output.is_file() and len(list((tmp_path / "run" / "results.sequences").iterdir())) == 36
    from moshi_eval.scoring import scorer

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run scored again")

    monkeypatch.setattr(scorer.ChunkedScorer, "run", refuse)
    again = evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, output=str(output)), progress=False)
    assert again["timing"]["resumed_utterances"] == 36 and again["timing"]["scored_utterances"] == 0
    assert without_timing(again) == without_timing(first)
    reweighted = evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, output=str(output), normalization="sum",
                                                                  codebook_weights=[2.0] * 8), progress=False)
    assert reweighted["utterances"][0]["sum_logprob"] == pytest.approx(2 * first["utterances"][0]["sum_logprob"])
    with pytest.raises(AssertionError, match="scored again"):
        evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, output=str(output), text_policy="pad"),
                               progress=False)


def test_another_ttt_config_on_the_same_weights_is_scored_again(cache_dir, tmp_path):
    """A TTT config changes the losses without changing a weight (here the inner learning rate): records made under
    one config must not resume a run under another."""
    torch.manual_seed(0)
    learning = LMModel(**SMALL_LM_CONFIG, ttt={"layers": "1", "mini_batch_size": 4, "base_lr": 1.0}).eval()
    slower = LMModel(**SMALL_LM_CONFIG, ttt={"layers": "1", "mini_batch_size": 4, "base_lr": 0.01}).eval()
    slower.load_state_dict(learning.state_dict())
    output = str(tmp_path / "results.json")
    first = evaluate_paper_metrics(learning, demo_mimi(), settings(cache_dir, output=output), progress=False)
    again = evaluate_paper_metrics(slower, demo_mimi(), settings(cache_dir, output=output), progress=False)
    assert first["model"]["fingerprint"] == again["model"]["fingerprint"]
    assert again["timing"]["resumed_utterances"] == 0 and again["timing"]["scored_utterances"] == 36
    assert again["utterances"][0]["sum_logprob"] != pytest.approx(first["utterances"][0]["sum_logprob"], abs=1e-6)


def test_zerospeech_submission_files(lm, cache_dir, tmp_path):
    data = evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, zerospeech_submission=str(tmp_path / "sub")),
                                  progress=False)
    for bench, folder in (("swuggy", "lexical"), ("sblimp", "syntactic")):
        lines = (tmp_path / "sub" / folder / "dev.txt").read_text().splitlines()
        expected = [f"{u['file'].removesuffix('.wav')} {u['mean_logprob']!r}" for u in data["utterances"]
                    if u["benchmark"] == bench]
        assert lines == expected
    with pytest.raises(ValueError, match="split folder itself"):
        evaluate_paper_metrics(lm, demo_mimi(), settings(cache_dir, swuggy_dir=str(DATA / "lexical"),
                                                         swuggy_gold=str(DATA / "lexical" / "dev" / "gold.csv"),
                                                         zerospeech_submission=str(tmp_path / "sub2")),
                               progress=False)


def test_modes_are_given_back_to_a_training_loop(cache_dir):
    lm, mimi = small_lm(), demo_mimi()
    lm.train()
    data = evaluate_paper_metrics(lm, mimi, settings(cache_dir, sblimp_dir=None, swuggy_dir=None, sstory_dir=None),
                                  progress=False)
    assert lm.training and not mimi.training and data["tstory_samples"] == 2
    assert all(module.training for module in lm.modules())


def test_unreadable_audio_is_an_error_naming_the_file(lm, cache_dir, tmp_path):
    root = copy_sets(tmp_path / "sets")
    broken = root / "sstory" / "2_0a1b2c3d-0002_incorrect.wav"
    broken.write_bytes(b"RIFF not really a wave")
    with pytest.raises(DataError, match="2_0a1b2c3d-0002_incorrect.wav: not a readable audio file"):
        evaluate_paper_metrics(lm, demo_mimi(), {"sstory_dir": str(root / "sstory"), "cache_dir": str(cache_dir)},
                               progress=False)


def test_users_section_keys_map_onto_settings():
    section = {
        "paper_metrics_eval": True, "paper_metrics_freq": 100, "paper_metrics_use_silence": True,
        "paper_metrics_use_user_stream": False, "sblimp_audio_dir": "/s", "sblimp_gold_csv": "/s/gold.csv",
        "sblimp_max_pairs": 2000, "sblimp_stream_config": "moshi_silence", "tstory_audio_dir": "/t",
        "librilight_audio_dir": "/l", "librilight_max_chapters": 3,
    }
    user = read_user_section(section)
    assert user.paper_metrics == {"other_stream": "silence", "stream": "own", "sblimp_dir": "/s",
                                  "sblimp_gold": "/s/gold.csv", "sblimp_max_pairs": 2000, "tstory_dir": "/t"}
    assert user.librilight == {"librilight_audio_dir": "/l", "librilight_max_chapters": 3}
    assert user.ignored == ["paper_metrics_eval", "paper_metrics_freq", "sblimp_stream_config"]
    with pytest.raises(ValueError, match="unknown key.s. 'swugy_audio_dir' .did you mean 'swuggy_audio_dir'"):
        read_user_section({"swugy_audio_dir": "/x"})


def test_evaluator_class_of_the_users_scripts(lm, tmp_path, cache_dir):
    from moshi_eval import PaperMetricsEvaluator

    root = copy_sets(tmp_path / "sets")
    shutil.move(root / "lexical" / "dev" / "gold.csv", tmp_path / "lexical_gold.csv")
    section = {
        "paper_metrics_eval": True, "paper_metrics_freq": 10, "paper_metrics_use_silence": True,
        "swuggy_audio_dir": str(root / "lexical" / "dev"), "swuggy_gold_csv": str(tmp_path / "lexical_gold.csv"),
        "swuggy_max_pairs": 5, "sblimp_audio_dir": str(root / "syntactic" / "dev"),
        "sblimp_gold_csv": str(root / "syntactic" / "dev" / "gold.csv"), "sstory_audio_dir": str(root / "sstory"),
        "tstory_audio_dir": str(root / "tstory"), "sstory_max_pairs": 10, "tstory_stream_config": "moshi_silence",
        "cache_dir": str(cache_dir),
    }
    with pytest.warns(UserWarning, match="paper_metrics_eval, paper_metrics_freq, tstory_stream_config"):
        evaluator = PaperMetricsEvaluator(mimi_encoder=demo_mimi(), interleaved_tokenizer=None, device="cpu",
                                          config=section)
    metrics = evaluator.evaluate_all(lm)
    assert {f"{b}_samples": metrics[f"{b}_samples"] for b in ("swuggy", "sblimp", "sstory", "tstory")} == {
        "swuggy_samples": 5, "sblimp_samples": 6, "sstory_samples": 3, "tstory_samples": 2}
    assert all(isinstance(value, int | float) for value in metrics.values())
    expected = evaluate_paper_metrics(lm, demo_mimi(), evaluator.base, progress=False)
    assert metrics["paper_metrics_avg"] == expected["paper_metrics_avg"]
    alone = evaluator.evaluate_swuggy(lm, max_samples=3)
    assert set(alone) == {"swuggy_accuracy", "swuggy_accuracy_sum", "swuggy_accuracy_mean", "swuggy_samples",
                          "swuggy_correct", "paper_metrics_avg"} and alone["swuggy_samples"] == 3
    assert evaluator.evaluate_story_cloze(lm, "tstory")["tstory_accuracy"] == metrics["tstory_accuracy"]
    assert evaluator.evaluate_sblimp(lm)["sblimp_accuracy"] == metrics["sblimp_accuracy"]
    no_swuggy = PaperMetricsEvaluator(demo_mimi(), None, "cpu", {"tstory_audio_dir": str(root / "tstory")})
    with pytest.raises(ValueError, match="swuggy not configured: set swuggy_audio_dir"):
        no_swuggy.evaluate_swuggy(lm)
    with pytest.raises(ValueError, match="LibriLight is not configured: set librilight_audio_dir"):
        no_swuggy.evaluate_librilight_long_context(lm)


def test_a_nan_loss_stops_the_run_naming_the_utterance(cache_dir):
    from moshi_eval.scoring.errors import NonFiniteLossError

    broken = small_lm()
    with torch.no_grad():
        broken.linears[3].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"tstory/\d_9f8e7d6c-000\d_(in)?correct.wav' at frame 0, codebook 3"):
        evaluate_paper_metrics(broken, demo_mimi(), {"tstory_dir": str(DATA / "tstory"), "cache_dir": str(cache_dir)},
                               progress=False)
