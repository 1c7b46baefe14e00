"""Acceptance 5: the audio path on a generated LibriLight-style tree (joining, exact resampling, codes cache, bad
inputs listed as skips or raised in strict mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import soxr
import torch
from librilight_helpers import chapter_metadata, tone, write_chapter
from safetensors.torch import load_file

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.librilight.data import discover_sequences
from moshi_eval.librilight.demo import build_demo_lm
from moshi_eval.scoring.data import CodesCache, MimiSequenceEncoder, read_resampled
from moshi_eval.scoring.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


@pytest.fixture(scope="module")
def mimi(parity_dir):
    from moshi.models.compression import MimiModel

    folder = parity_dir / "mimi_tiny"
    model = MimiModel.from_config(json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def reference_resample(path, target_rate: int) -> np.ndarray:
    """Whole-file resampling with soxr's one-shot call, cut or padded to round(n * target / sr)."""
    audio, rate = soundfile.read(str(path), dtype="float32")
    expected = round(len(audio) * target_rate / rate)
    out = soxr.resample(audio, rate, target_rate, quality="HQ") if rate != target_rate else audio
    return np.pad(out[:expected], (0, max(0, expected - len(out))))


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100])
def test_resampling_has_exact_length(tmp_path, rate):
    samples = int(3.3 * rate) + 7
    path = write_chapter(tmp_path, "x", tone(samples / rate, rate, 220.0, 0)[:samples], rate, None)
    out = read_resampled(path, 24000)
    assert out.shape == (round(samples * 24000 / rate),)
    np.testing.assert_allclose(out, reference_resample(path, 24000), atol=1e-6)


def test_chapters_are_joined_in_order(tmp_path, mimi):
    book = tmp_path / "tree" / "10" / "book"
    durations = {"c2": 1.37, "c0": 0.91, "c1": 1.13}
    for name, seconds in durations.items():
        write_chapter(book, name, tone(seconds, 16000, 150.0 + 100 * int(name[1]), 1), 16000, chapter_metadata())
    discovery = discover_sequences(audio_dir=str(tmp_path / "tree"), max_chapters=2)
    (source,) = discovery.sequences
    assert source.sequence_id == "10/book"
    assert [c.path.name for c in source.chapters] == ["c0.flac", "c1.flac"]
    encoder = MimiSequenceEncoder(mimi, 8, cache=None, chunk_frames=3)
    codes = encoder.encode_source(source, max_frames=10_000)
    joined = np.concatenate([reference_resample(c.path, 24000) for c in source.chapters])
    frame = mimi.frame_size
    padded = np.pad(joined, (0, -len(joined) % frame))
    with torch.no_grad():
        expected = mimi.encode(torch.from_numpy(padded)[None, None])[0]
    assert codes.shape == (8, len(padded) // frame)
    assert torch.equal(codes, expected)
    assert torch.equal(encoder.encode_source(source, max_frames=5), expected[:, :5])


def write_tree(root):
    for speaker, book, seconds in (("1", "a", 2.0), ("1", "b", 1.5), ("2", "c", 2.5)):
        for chapter in range(2):
            audio = tone(seconds, 16000, 120.0 + 40 * chapter, chapter)
            write_chapter(root / speaker / book, f"ch{chapter}", audio, 16000, chapter_metadata())


def test_second_run_hits_the_cache(tmp_path, mimi):
    write_tree(tmp_path / "tree")
    lm = build_demo_lm()
    settings = {"audio_dir": str(tmp_path / "tree"), "cache_dir": str(tmp_path / "cache"), "positions": [20],
                "window": 10, "batch_size": 3, "progress": False}
    first = evaluate_librilight(lm, mimi, **settings)
    second = evaluate_librilight(lm, mimi, **settings)
    assert first.timing["codes_cache_misses"] == 4 and first.timing["codes_cache_hits"] == 0
    assert second.timing["codes_cache_hits"] == 4 and second.timing["codes_cache_misses"] == 0
    for a, b in zip(first.sequences, second.sequences):
        np.testing.assert_array_equal(a.codebook_losses, b.codebook_losses)
    assert [s.sequence_id for s in first.sequences] == ["1/a", "1/b", "2/c"]
    assert first.sequences[0].num_frames == -(-2 * round(2.0 * 24000) // mimi.frame_size)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    assert CodesCache(tmp_path / "cache").get({"kind": "missing"}, 1, 8, mimi.cardinality, "missing") is None


def write_broken_tree(root):
    write_tree(root)
    good = root / "1" / "a" / "ch0.flac"
    data = good.read_bytes()
    truncated = root / "3" / "truncated"
    write_chapter(truncated, "ch0", tone(2.0, 16000, 200.0, 3), 16000, chapter_metadata())
    (truncated / "ch0.flac").write_bytes((truncated / "ch0.flac").read_bytes()[: len(data) // 2])
    garbage = root / "3" / "garbage"
    garbage.mkdir(parents=True)
    (garbage / "ch0.flac").write_bytes(b"this is not audio" * 50)
    (garbage / "ch0.json").write_text(json.dumps(chapter_metadata()))
    (root / "3" / "empty").mkdir()
    write_chapter(root / "3" / "no_json", "ch0", tone(1.0, 16000, 300.0, 4), 16000, None)
    write_chapter(root / "3" / "bad_json", "ch0", tone(1.0, 16000, 330.0, 5), 16000, None)
    (root / "3" / "bad_json" / "ch0.json").write_text("{not json")
    (root / "1" / "a" / "notes.txt").write_text("not audio")


def test_bad_inputs_are_listed_skips(tmp_path, mimi):
    write_broken_tree(tmp_path / "tree")
    result = evaluate_librilight(build_demo_lm(), mimi, audio_dir=str(tmp_path / "tree"), positions=[20], window=10,
                                 cache_dir=str(tmp_path / "cache"), batch_size=2, progress=False)
    assert [s.sequence_id for s in result.sequences] == ["1/a", "1/b", "2/c", "3/no_json"]
    reasons = {skip["path"].replace(str(tmp_path / "tree") + "/", ""): skip["reason"] for skip in result.skipped}
    assert "not an audio file" in reasons["1/a/notes.txt"]
    assert "empty book directory" in reasons["3/empty"]
    assert "not valid JSON" in reasons["3/bad_json"] and "3/no_json" not in reasons
    assert "not a readable audio file" in reasons["3/garbage"]
    assert "truncated" in reasons["3/truncated"]
    assert result.to_dict()["skipped"] == result.skipped


@pytest.mark.parametrize("broken", ["notes", "truncated", "garbage", "empty", "bad_json"])
def test_strict_turns_each_skip_into_an_error(tmp_path, mimi, broken):
    root = tmp_path / "tree"
    write_broken_tree(root)
    keep = {"notes": [], "truncated": ["truncated"], "garbage": ["garbage"], "empty": ["empty"],
            "bad_json": ["bad_json"]}
    for name in ("truncated", "garbage", "empty", "bad_json"):
        if name not in keep[broken]:
            for path in sorted((root / "3" / name).glob("*")):
                path.unlink()
            (root / "3" / name).rmdir()
    if broken != "notes":
        (root / "1" / "a" / "notes.txt").unlink()
    with pytest.raises(DataError, match="strict|truncated"):
        evaluate_librilight(build_demo_lm(), mimi, audio_dir=str(root), positions=[20], window=10, strict=True,
                            cache_dir=str(tmp_path / "cache"), progress=False)


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable sequences"):
        discover_sequences(audio_dir=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not found"):
        discover_sequences(audio_dir=str(tmp_path / "missing"))
