"""Files read back are checked against what they claim: a codes-cache entry or resume record that was zeroed, altered,
copied from another book or holds out-of-range values is reported in one line naming it, computed again, and the
numbers equal those of an untouched run."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from evaluation_helpers import demo_mimi, small_lm
from librilight_helpers import assert_results_close, write_tree_for_cli
from paper_metrics_helpers import DATA
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.paper_metrics import evaluate_paper_metrics
from moshi_eval.scoring.errors import FileNoteWarning
from moshi_eval.scoring.files import write_checked

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")]

CARD = int(demo_mimi().cardinality)


@pytest.fixture(scope="module")
def untouched(tmp_path_factory):
    """Two one-chapter books scored once with a fresh codes cache and resume records: the reference numbers."""
    root = tmp_path_factory.mktemp("checked")
    settings = {"audio_dir": str(write_tree_for_cli(root / "tree")), "max_chapters": 1, "positions": [20],
                "window": 10, "batch_size": 2, "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (`single_thread`): greedy text follows the last bits of the logits
    try:
        result = run_librilight(settings, root / "cache", root / "untouched.json")
    finally:
        torch.set_num_threads(threads)
    assert result.timing["codes_cache_misses"] == 3  # two books and the silence of the user stream
    return root, settings, numbers(result)


def run_librilight(settings: dict, cache: Path, output: Path):
    return evaluate_librilight(small_lm(), demo_mimi(), cache_dir=str(cache), output=str(output), **settings)


def numbers(result) -> dict:
    """Everything the results report but the timings and the settings (which name the cache and output)."""
    data = result.to_dict()
    return {key: value for key, value in data.items() if key not in ("timing", "config")}


def file_of(folder: Path, field: str, value: str) -> Path:
    """The safetensors file of `folder` whose metadata `field` is `value`."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(field) == value:
                return path
    raise AssertionError(f"no file of {folder} has {field} {value!r}")


def rewrite(path: Path, change) -> None:
    """Rewrite a valid safetensors file with its tensors changed in place by `change` and its metadata kept, as an
    editing script or a bad disk would."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    for tensor in tensors.values():
        change(tensor)
    save_file(tensors, str(path), metadata=metadata)


def notes_of(run) -> tuple[object, list[str]]:
    """`run()`'s value and the FileNoteWarning messages it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = run()
    return value, [str(w.message) for w in caught if issubclass(w.category, FileNoteWarning)]


def tampered_cache(untouched, tmp_path: Path) -> Path:
    root, _, _ = untouched
    shutil.copytree(root / "cache", tmp_path / "cache")
    return tmp_path / "cache"


def out_of_range(tensor: torch.Tensor) -> None:
    tensor[0, 0] = -1265779789403181265
    tensor[1, 1] = CARD + 5


TAMPERING = {
    "zeroed": (lambda cache: rewrite(file_of(cache, "description", "7/first"), torch.Tensor.zero_),
               r"does not match its checksum: its codes were altered or corrupted"),
    "another book's entry": (lambda cache: shutil.copyfile(file_of(cache, "description", "8/second"),
                                                           file_of(cache, "description", "7/first")),
                             (r'was made from something else \(identity\[0\]\.path is "\S+/8/second/00\.flac" in the '
                              r'file, "\S+/7/first/00\.flac" here\)')),
    "out-of-range codes": (lambda cache: rewrite(file_of(cache, "description", "7/first"), out_of_range),
                           r"does not match its checksum"),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_tampered_cache_entry_is_reported_and_encoded_again(untouched, tmp_path, kind):
    _, settings, expected = untouched
    cache = tampered_cache(untouched, tmp_path)
    entry = file_of(cache, "description", "7/first")
    tamper, problem = TAMPERING[kind]
    tamper(cache)
    result, notes = notes_of(lambda: run_librilight(settings, cache, tmp_path / "run.json"))
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"{entry}: codes cache entry of 7/first ") and notes[0].endswith("; encoding it again")
    assert re.search(problem, notes[0]), notes[0]
    assert numbers(result) == expected
    assert result.timing["codes_cache_misses"] == 1 and result.timing["codes_cache_hits"] == 2
    again, notes = notes_of(lambda: run_librilight(settings, cache, tmp_path / "again.json"))
    assert notes == [] and again.timing["codes_cache_hits"] == 3 and numbers(again) == expected


def test_out_of_range_codes_under_a_valid_checksum(untouched, tmp_path):
    """An entry whose checksum and origin are right but whose codes lie outside the card (a writer gone wrong) is
    caught by the range check, not scored (it used to crash with `index ... is out of bounds`, file unnamed)."""
    _, settings, expected = untouched
    cache = tampered_cache(untouched, tmp_path)
    entry = file_of(cache, "description", "7/first")
    with safe_open(str(entry), framework="pt") as handle:
        metadata = handle.metadata()
        codes = handle.get_tensor("codes")
    out_of_range(codes)
    write_checked(entry, "codes", codes, json.loads(metadata["made_from"]), metadata={"complete": "true"})
    result, notes = notes_of(lambda: run_librilight(settings, cache, tmp_path / "run.json"))
    assert notes == [(f"{entry}: codes cache entry of 7/first holds codes outside [0, {CARD}) (found "
                      f"[-1265779789403181265, {CARD + 5}]); encoding it again")]
    assert numbers(result) == expected


def scored_records(untouched, tmp_path: Path) -> tuple[Path, Path]:
    """A finished run's output and its records folder, with its own copy of the cache."""
    _, settings, _ = untouched
    cache = tampered_cache(untouched, tmp_path)
    run_librilight(settings, cache, tmp_path / "run.json")
    return tmp_path / "run.json", tmp_path / "run.sequences"


def rewrite_record_losses(records: Path) -> Path:
    path = file_of(records, "sequence_id", "7/first")
    rewrite(path, lambda losses: losses.copy_(torch.where(losses.isnan(), losses, torch.ones_like(losses))))
    return path


def copy_other_record(records: Path) -> Path:
    path = file_of(records, "sequence_id", "7/first")
    shutil.copyfile(file_of(records, "sequence_id", "8/second"), path)
    return path


def negative_losses_with_valid_checksum(records: Path) -> Path:
    path = file_of(records, "sequence_id", "7/first")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        losses = -handle.get_tensor("codebook_losses")
    write_checked(path, "codebook_losses", losses, json.loads(metadata["made_from"]), metadata)
    return path


RECORD_TAMPERING = {
    "losses set to 1.0": (rewrite_record_losses, "does not match its checksum: its codebook_losses were altered"),
    "another book's record": (copy_other_record, ('was made from something else (sequence is "8/second" in the '
                                                  'file, "7/first" here)')),
    "negative losses": (negative_losses_with_valid_checksum, "holds losses that are no cross-entropies"),
}


@pytest.mark.parametrize("kind", RECORD_TAMPERING)
def test_altered_record_is_reported_and_scored_again(untouched, tmp_path, kind):
    _, settings, expected = untouched
    output, records = scored_records(untouched, tmp_path)
    tamper, problem = RECORD_TAMPERING[kind]
    record = tamper(records)
    result, notes = notes_of(lambda: run_librilight(settings, tmp_path / "cache", output))
    assert len(notes) == 1 and notes[0].startswith(f"{record}: resume record of 7/first "), notes
    assert problem in notes[0] and notes[0].endswith("; scoring it again")
    assert result.timing["resumed_sequences"] == 1
    assert_results_close(numbers(result), expected)  # scored alone instead of beside the other book: float rounding
    again, notes = notes_of(lambda: run_librilight(settings, tmp_path / "cache", output))
    assert notes == [] and again.timing["resumed_sequences"] == 2
    assert_results_close(numbers(again), expected)


def test_record_of_an_older_version_is_recomputed(untouched, tmp_path):
    """A record without checksum or origin (as written before records were checked) is not trusted."""
    _, settings, expected = untouched
    output, records = scored_records(untouched, tmp_path)
    path = file_of(records, "sequence_id", "7/first")
    with safe_open(str(path), framework="pt") as handle:
        metadata = {key: value for key, value in handle.metadata().items() if key not in ("checksum", "made_from")}
    save_file(load_file(str(path)), str(path), metadata=metadata)
    result, notes = notes_of(lambda: run_librilight(settings, tmp_path / "cache", output))
    assert notes == [(f"{path}: resume record of 7/first carries no checksum or origin (written by an older "
                      "version); scoring it again")]
    assert_results_close(numbers(result), expected)


def test_truncated_cache_entry_file(untouched, tmp_path):
    """An entry cut short on disk (a full disk, a copy interrupted) is not a readable file: reported, encoded again."""
    _, settings, expected = untouched
    cache = tampered_cache(untouched, tmp_path)
    entry = file_of(cache, "description", "8/second")
    entry.write_bytes(entry.read_bytes()[:200])
    result, notes = notes_of(lambda: run_librilight(settings, cache, tmp_path / "run.json"))
    assert len(notes) == 1 and notes[0].startswith(f"{entry}: codes cache entry of 8/second is not a readable "
                                                   "safetensors file"), notes
    assert numbers(result) == expected


def test_paper_metrics_utterance_entry_zeroed(tmp_path):
    """The paper metrics read the same cache: a zeroed utterance entry is encoded again, the accuracies unchanged."""
    settings = {"swuggy_dir": str(DATA / "lexical" / "dev"), "batch_size": 8, "progress": False}
    expected = evaluate_paper_metrics(small_lm(), demo_mimi(), cache_dir=str(tmp_path / "cache"), **settings)
    entry = file_of(tmp_path / "cache", "description", "swuggy/w2_bea_1.wav")
    rewrite(entry, torch.Tensor.zero_)
    result, notes = notes_of(lambda: evaluate_paper_metrics(small_lm(), demo_mimi(), cache_dir=str(tmp_path / "cache"),
                                                            **settings))
    assert notes == [(f"{entry}: codes cache entry of swuggy/w2_bea_1.wav does not match its checksum: its codes "
                      "were altered or corrupted; encoding it again")]
    assert {k: v for k, v in result.items() if k != "timing"} == {k: v for k, v in expected.items() if k != "timing"}
