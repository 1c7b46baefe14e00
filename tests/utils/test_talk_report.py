"""`moshi.utils.talk_report`: a known text stream and known audio give the rates, fractions and repeated n-grams their
definitions say; thresholds, bins, the last partial bin, the JSON file and the one-line summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moshi.utils.files import check_output_file
from moshi.utils.talk_report import (
    TalkMeter,
    TalkSettings,
    bins_line,
    frames_per_bin,
    silent_frames,
    summary_line,
    write_report,
)

PAD, EPAD = 3, 0
FRAME_SECONDS = 0.08
FRAME = 1920
BIN_FRAMES = 10
STEPS = 25  # two whole bins of 10 frames and a last one of 5
WORDS = [20, 21, 22, 23, 24]  # item 0's five distinct words of the first bin
LOOP = [10, 11]  # item 0's second bin: a loop of two words


def tone(dbfs: float) -> np.ndarray:
    """One frame `[1, FRAME]` of a sine whose RMS is `dbfs` dBFS (a sine's peak is sqrt(2) times its RMS)."""
    t = np.arange(FRAME) / 24000
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 1000 * t))[None]


def known_stream() -> tuple[np.ndarray, np.ndarray]:
    """Text `[2, STEPS]` and audio `[2, 1, STEPS * FRAME]`.
    Item 0: first bin PAD and words alternating (5 each, the PADs both kinds), second bin a two-word loop, last bin PAD;
    silence (zeros) for the first bin, a -10 dBFS tone after. Item 1: PAD only; a -41 dBFS tone (just under the -40
    threshold) for the first two bins, a -39 dBFS one (just over) in the last."""
    text = np.full((2, STEPS), PAD)
    text[0, 0:BIN_FRAMES:2] = [PAD, EPAD, PAD, EPAD, PAD]
    text[0, 1:BIN_FRAMES:2] = WORDS
    text[0, BIN_FRAMES: 2 * BIN_FRAMES] = LOOP * (BIN_FRAMES // 2)
    frames_0 = [np.zeros((1, FRAME))] * BIN_FRAMES + [tone(-10)] * (STEPS - BIN_FRAMES)
    frames_1 = [tone(-41)] * (2 * BIN_FRAMES) + [tone(-39)] * (STEPS - 2 * BIN_FRAMES)
    audio = np.stack([np.concatenate(frames_0, axis=-1), np.concatenate(frames_1, axis=-1)]).astype(np.float32)
    return text, audio


def fed_meter(text: np.ndarray, audio: np.ndarray, **settings) -> TalkMeter:
    meter = TalkMeter(text.shape[0], FRAME_SECONDS, (PAD, EPAD), TalkSettings(**settings))
    for step in range(text.shape[1]):
        meter.update(text[:, step], audio[..., step * FRAME: (step + 1) * FRAME])
    return meter


def test_known_text_and_audio_give_the_defined_rates_and_fractions() -> None:
    meter = fed_meter(*known_stream(), bin_seconds=BIN_FRAMES * FRAME_SECONDS, silence_dbfs=-40.0, ngram=4)
    first, second = meter.figures()
    bin_seconds = BIN_FRAMES * FRAME_SECONDS
    last_frames = STEPS - 2 * BIN_FRAMES
    durations = [bin_seconds, bin_seconds, last_frames * FRAME_SECONDS]
    assert meter.bin_frames == BIN_FRAMES and meter.frames == STEPS
    np.testing.assert_allclose(first.seconds, [0, bin_seconds, 2 * bin_seconds])
    np.testing.assert_allclose(first.duration_seconds, durations)
    # Item 0: 5 words in the first bin, 10 in the second, none in the last (rated over its own 0.4 s).
    np.testing.assert_allclose(first.text_tokens_per_minute,
                               [len(WORDS) * 60 / durations[0], BIN_FRAMES * 60 / durations[1], 0.0])
    np.testing.assert_allclose(first.pad_fraction, [0.5, 0.0, 1.0])
    np.testing.assert_allclose(first.silence_fraction, [1.0, 0.0, 0.0])
    # 4-grams: the first bin's 5 words end 2 distinct ones; the loop's 10 words end 10, the first 3 of which reach
    # back into the first bin's words, then (x y x y) and (y x y x) alternate: 3 + 2 distinct. No word at the end.
    ngrams_2, distinct_2 = BIN_FRAMES, 3 + 2
    assert first.repeated_ngram_fraction == [0.0, pytest.approx(1 - distinct_2 / ngrams_2), None]
    total_words = len(WORDS) + BIN_FRAMES
    assert first.overall == pytest.approx({
        "seconds": STEPS * FRAME_SECONDS, "text_tokens_per_minute": total_words * 60 / (STEPS * FRAME_SECONDS),
        "pad_fraction": (len(WORDS) + last_frames) / STEPS, "silence_fraction": BIN_FRAMES / STEPS,
        "repeated_ngram_fraction": (ngrams_2 - distinct_2) / (2 + ngrams_2)})
    # Item 1: PAD only, silent until the louder tone of the last bin.
    assert second.text_tokens_per_minute == [0.0, 0.0, 0.0] and second.pad_fraction == [1.0, 1.0, 1.0]
    assert second.silence_fraction == [1.0, 1.0, 0.0] and second.repeated_ngram_fraction == [None] * 3
    assert second.overall["repeated_ngram_fraction"] is None


def test_torch_tensors_count_like_numpy_arrays() -> None:
    text, audio = known_stream()
    meter = TalkMeter(2, FRAME_SECONDS, (PAD, EPAD), TalkSettings(bin_seconds=0.8))
    for step in range(STEPS):
        meter.update(torch.from_numpy(text[:, step]), torch.from_numpy(audio[..., step * FRAME: (step + 1) * FRAME]))
    assert meter.figures() == fed_meter(text, audio, bin_seconds=0.8).figures()


def test_the_silence_threshold_is_strictly_below_the_rms_level() -> None:
    level = 10 ** (-40 / 20)
    frames = np.stack([np.full((1, FRAME), level), np.full((1, FRAME), 0.99 * level), np.zeros((1, FRAME)),
                       tone(-3.0)])
    assert silent_frames(frames, -40.0).tolist() == [False, True, True, False]
    assert silent_frames(frames, -2.0).tolist() == [True, True, True, True]


def test_bins_are_whole_frames() -> None:
    assert frames_per_bin(10.0, FRAME_SECONDS) == 125
    assert frames_per_bin(1.0, FRAME_SECONDS) == 12  # 12.5 frames, rounded to even
    assert frames_per_bin(0.01, FRAME_SECONDS) == 1
    meter = TalkMeter(1, FRAME_SECONDS, (PAD,), TalkSettings(bin_seconds=1.0))
    assert meter.bin_seconds == pytest.approx(12 * FRAME_SECONDS)


def test_no_steps_give_no_bins() -> None:
    (figures,) = TalkMeter(1, FRAME_SECONDS, (PAD,)).figures()
    assert figures.seconds == [] and figures.overall["text_tokens_per_minute"] is None
    assert summary_line(figures, 4, 10.0) == "no reply frames"


@pytest.mark.parametrize(("settings", "message"), [
    ({"bin_seconds": 0.0}, "more than 0 seconds"),
    ({"bin_seconds": float("nan")}, "more than 0 seconds"),
    ({"silence_dbfs": 3.0}, "at most 0 dBFS"),
    ({"ngram": 0}, "n >= 1"),
])
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TalkSettings(**settings)


def test_steps_of_the_wrong_shape_are_refused() -> None:
    meter = TalkMeter(2, FRAME_SECONDS, (PAD,))
    expected = r"text tokens \[2\] and audio \[2, C, frame_size\], got \[3\] and \[2, 1920\]"
    with pytest.raises(ValueError, match=expected):
        meter.update(np.zeros(3, dtype=np.int64), np.zeros((2, FRAME)))


def test_summary_and_bins_lines_show_the_figures() -> None:
    meter = fed_meter(*known_stream(), bin_seconds=0.8)
    first = meter.figures()[0]
    line = summary_line(first, 4, meter.bin_seconds)
    assert line.startswith(f"{STEPS * FRAME_SECONDS:.1f} s: {first.overall['text_tokens_per_minute']:.1f} text "
                           "tokens/min, PAD 40 %, silence 40 %, repeated 4-grams 42 %")
    assert line.endswith("first -> last 0.8 s bin: 375.0 -> 0.0 text tokens/min, silence 100 % -> 0 %, repeated "
                         "0 % -> n/a")
    assert bins_line(first, meter.bin_seconds) == ("per 0.8 s bin: text tokens/min 375 750 0; PAD % 50 0 100; "
                                                   "silence % 100 0 0; repeated % 0 50 -")


def test_the_report_file_is_json_written_in_one_piece(tmp_path) -> None:
    meter = fed_meter(*known_stream(), bin_seconds=0.8)
    path = tmp_path / "new" / "report.json"
    write_report(path, meter.figures(), meter.describe())
    data = json.loads(path.read_text())
    assert data["items"][0]["repeated_ngram_fraction"][-1] is None
    assert data["items"][1]["silence_fraction"] == [1.0, 1.0, 0.0]
    assert data["settings"]["silence_threshold_dbfs"] == -40.0 and data["settings"]["bin_frames"] == BIN_FRAMES
    assert [entry.name for entry in path.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_unwritable_report_paths_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="--report .*: is a folder"):
        check_output_file(tmp_path, "--report")
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is a file, so no folder can be created there"):
        check_output_file(a_file / "sub" / "report.json", "--report")
    check_output_file(tmp_path / "missing" / "report.json", "--report")
