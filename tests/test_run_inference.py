"""`python -m moshi.run_inference` end to end on a small local checkpoint with random weights and a sentencepiece
tokenizer trained here; batch 1 and 2, wavs as long as the input, the printed text, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import soundfile
import torch
from finetune_checkpoints import tiny_mimi_config
from safetensors.torch import save_file

from moshi import run_inference
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel

REPO_ROOT = Path(__file__).resolve().parents[1]
MIMI_CONFIG = tiny_mimi_config(bins=32)
LM_CONFIG = {
    "dim": 32, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 32, "num_heads": 2, "num_layers": 1,
    "hidden_scale": 2, "causal": True, "context": 50, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 16, "depformer_num_heads": 1, "depformer_num_layers": 1,
    "depformer_multi_linear": True, "depformer_weights_per_step": True, "depformer_pos_emb": "none",
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}
SENTENCES = ["hello there how are you today", "the cat sat on the mat", "moshi listens and speaks at once",
             "a small model with random weights", "speech and text in parallel streams"]
INPUT_RATE = 16000
INPUT_SECONDS = 0.48  # 7680 samples at 16 kHz, 11520 at 24 kHz: six whole Mimi frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local repository folder: config.json, LM and Mimi weights, Mimi config and a trained tokenizer."""
    folder = tmp_path_factory.mktemp("checkpoint")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_prefix=str(folder / "tokenizer"), vocab_size=40,
        model_type="unigram", hard_vocab_limit=False, minloglevel=2)
    text_card = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size()
    torch.manual_seed(0)
    save_file(MimiModel.from_config(MIMI_CONFIG).state_dict(), folder / "mimi.safetensors")
    lm_config = dict(LM_CONFIG, text_card=text_card)
    save_file(LMModel(**lm_config).state_dict(), folder / "model.safetensors")
    (folder / "mimi_config.json").write_text(json.dumps(MIMI_CONFIG))
    (folder / "config.json").write_text(json.dumps(dict(
        lm_config, moshi_name="model.safetensors", mimi_name="mimi.safetensors", tokenizer_name="tokenizer.model",
        mimi_config_name="mimi_config.json", lm_gen_config={"temp": 0.9, "top_k": 8})))
    return folder


@pytest.fixture(scope="module")
def stereo_flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 kHz stereo FLAC file: the command must take its first channel and resample it."""
    path = tmp_path_factory.mktemp("audio") / "input.flac"
    t = np.arange(int(INPUT_RATE * INPUT_SECONDS)) / INPUT_RATE
    left, right = 0.3 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)
    soundfile.write(path, np.stack([left, right], axis=1), INPUT_RATE)
    return path


def _flags(checkpoint: Path, *extra: str) -> list[str]:
    return ["--hf-repo", str(checkpoint), "--device", "cpu", "--half", *extra]


def test_batch_of_one_writes_the_named_wav_and_prints_the_text(checkpoint, stereo_flac, tmp_path, capsys):
    out = tmp_path / "reply.wav"
    args = run_inference.build_parser().parse_args(_flags(checkpoint, "--batch-size", "1", str(stereo_flac),
                                                          str(out)))
    reply = run_inference.run(args)
    printed = capsys.readouterr().out
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))
    lm = LMModel(**dict(LM_CONFIG, text_card=tokenizer.vocab_size()), device="meta")
    expected_text = "".join(run_inference.text_piece(tokenizer, lm, int(t)) for t in reply.text_tokens[0])
    assert printed == expected_text + "\n" and expected_text.strip()
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == 24000 and samples.ndim == 1
    assert len(samples) == round(INPUT_SECONDS * 24000) == reply.pcm.shape[-1]
    np.testing.assert_allclose(samples, reply.pcm[0, 0].clamp(-1, 1).numpy(), atol=1 / 32768 + 1e-6)
    assert not (tmp_path / "reply-0.wav").exists()


def test_module_command_with_a_batch_of_two_writes_one_wav_per_item(checkpoint, stereo_flac, tmp_path):
    out = tmp_path / "reply.wav"
    result = subprocess.run(
        [sys.executable, "-m", "moshi.run_inference", *_flags(checkpoint, "--batch-size", "2"), str(stereo_flac),
         str(out)], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    lengths = []
    for index in range(2):
        samples, rate = soundfile.read(tmp_path / f"reply-{index}.wav", dtype="float32")
        assert rate == 24000
        lengths.append(len(samples))
    assert lengths == [round(INPUT_SECONDS * 24000)] * 2
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--cfg-coef", "2"], "classifier-free guidance"),
    (["--batch-size", "0"], "--batch-size"),
    (["--moshi-weight", "missing.safetensors"], "missing.safetensors"),
    (["--moshi-weight", "weights.pt"], "pickle"),
])
def test_bad_flags_end_with_one_error_line(checkpoint, stereo_flac, capsys, extra, message):
    assert run_inference.main(_flags(checkpoint, *extra, str(stereo_flac))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


def test_unreadable_or_too_short_input_is_named(checkpoint, tmp_path, capsys):
    missing = tmp_path / "nothing.wav"
    assert run_inference.main(_flags(checkpoint, str(missing))) == 2
    assert str(missing) in capsys.readouterr().err
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(100), 24000)
    assert run_inference.main(_flags(checkpoint, str(short))) == 2
    assert "shorter than one Mimi frame" in capsys.readouterr().err


def _rms_dbfs(frame: torch.Tensor) -> float:
    return 10 * np.log10(float(frame.double().square().mean()))


def test_report_holds_each_items_binned_talk(checkpoint, stereo_flac, tmp_path, capsys):
    """The report's figures, recomputed here from the returned reply: 6 frames in bins of 2 (0.16 s)."""
    path = tmp_path / "report.json"
    args = run_inference.build_parser().parse_args(_flags(
        checkpoint, "--batch-size", "2", "--report", str(path), "--report-bin-seconds", "0.16",
        "--report-silence-dbfs", "-30", str(stereo_flac)))
    reply = run_inference.run(args)
    report = json.loads(path.read_text())
    settings = report["settings"]
    assert settings["bin_frames"] == 2 and settings["silence_threshold_dbfs"] == -30
    assert settings["pad_token_ids"] == [LM_CONFIG["existing_text_padding_id"], 0]
    assert settings["batch_size"] == 2 and settings["model"] == {"hf_repo": str(checkpoint)}
    pad = torch.isin(reply.text_tokens, torch.tensor(settings["pad_token_ids"])).double()
    frames = reply.pcm.unfold(-1, 1920, 1920)  # [B, C, T, 1920]
    silent = torch.tensor([[_rms_dbfs(frames[item, :, step]) < -30 for step in range(frames.shape[2])]
                           for item in range(2)]).double()
    assert len(report["items"]) == 2
    for item, figures in enumerate(report["items"]):
        assert figures["seconds"] == pytest.approx([0, 0.16, 0.32])
        np.testing.assert_allclose(figures["pad_fraction"], pad[item].view(3, 2).mean(-1))
        np.testing.assert_allclose(figures["text_tokens_per_minute"], (1 - pad[item]).view(3, 2).sum(-1) * 60 / 0.16)
        np.testing.assert_allclose(figures["silence_fraction"], silent[item].view(3, 2).mean(-1))
    err = capsys.readouterr().err
    assert err.count("talk of item ") == 2 and f"wrote the talk report {path}" in err


def test_module_command_writes_the_report_and_one_line_per_item(checkpoint, stereo_flac, tmp_path):
    path = tmp_path / "reports" / "talk.json"
    result = subprocess.run(
        [sys.executable, "-m", "moshi.run_inference", *_flags(checkpoint, "--batch-size", "3"), "--report", str(path),
         str(stereo_flac)], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["settings"]["bin_seconds"] == pytest.approx(10.0)
    assert report["settings"]["silence_threshold_dbfs"] == -40.0
    lines = [line for line in result.stderr.splitlines() if "talk of item" in line]
    assert len(lines) == 3 == len(report["items"])
    for index, (line, figures) in enumerate(zip(lines, report["items"])):
        assert figures["seconds"] == [0.0] and figures["duration_seconds"] == [pytest.approx(INPUT_SECONDS)]
        overall = figures["overall"]
        assert line.startswith(f"[info] talk of item {index}: {INPUT_SECONDS:.1f} s: "
                               f"{overall['text_tokens_per_minute']:.1f} text tokens/min, PAD "
                               f"{100 * overall['pad_fraction']:.0f} %")


@pytest.mark.parametrize(("extra", "message"), [
    (["--report", "{tmp}"], "--report {tmp}: is a folder"),
    (["--report", "{tmp}/file.txt/report.json"], "is a file, so no folder can be created there"),
    (["--report", "{tmp}/r.json", "--report-bin-seconds", "0"], "--report-bin-seconds 0: "),
    (["--report", "{tmp}/r.json", "--report-silence-dbfs", "6"], "--report-silence-dbfs 6: "),
    (["--report-bin-seconds", "5"], "--report-bin-seconds needs --report PATH"),
])
def test_report_mistakes_end_with_one_error_line_before_the_model_loads(stereo_flac, tmp_path, capsys, extra,
                                                                        message):
    (tmp_path / "file.txt").write_text("")
    missing_model = tmp_path / "no_such_checkpoint"  # would be the error if the model were looked at first
    argv = ["--hf-repo", str(missing_model), *[flag.format(tmp=tmp_path) for flag in extra], str(stereo_flac)]
    assert run_inference.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(tmp=tmp_path) in err[0]
    assert not (tmp_path / "r.json").exists()
