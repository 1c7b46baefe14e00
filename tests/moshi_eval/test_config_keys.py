"""Our users' training YAML files as settings: the `paper_metrics:` section is read, every key they use is mapped or
ignored with a note, the book selection of their evaluator is kept, unknown keys are errors with a suggestion."""

from __future__ import annotations

import warnings

import pytest
import yaml
from training_yamls import OLD_DEFAULT_BOOK, SECTIONS, training_yaml

from moshi_eval.librilight.config import LibriLightConfig
from moshi_eval.librilight.config_keys import FORK_DEFAULT_BOOK as MAPPED_DEFAULT_BOOK
from moshi_eval.librilight.config_keys import (
    FORK_DEFAULT_SPEAKER,
    load_config_file,
    map_settings,
    normalize_config_mapping,
    read_config_file,
)
from moshi_eval.scoring.errors import ConfigError, SettingsNoteWarning


def read_kind(tmp_path, kind):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(training_yaml(kind, tmp_path / "elsewhere"))
    return path, read_config_file(path)


def test_the_old_default_book_is_the_one_of_their_evaluator():
    assert f"{FORK_DEFAULT_SPEAKER}/{MAPPED_DEFAULT_BOOK}" == OLD_DEFAULT_BOOK


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_every_kind_of_training_file_maps_to_valid_settings(tmp_path, kind):
    path, mapped = read_kind(tmp_path, kind)
    LibriLightConfig(**mapped.values)
    assert all("\n" not in note for note in mapped.notes)
    training_note, ttt_note = mapped.notes[:2]
    assert "'paper_metrics' section" in training_note and "21 training key(s)" in training_note
    assert "batch_size" in training_note and "ttt" in training_note
    assert "'ttt' section is not applied" in ttt_note
    section = yaml.safe_load(path.read_text())["paper_metrics"]
    prefixes = ("sblimp_", "swuggy_", "sstory_", "tstory_", "ttt_fig5_")
    other_metrics = [key for key in section if key.startswith(prefixes)]
    other = next(note for note in mapped.notes if "key(s) of other metrics" in note)
    assert f"{len(other_metrics)} key(s) of other metrics" in other and "sblimp_audio_dir" in other
    assert any("paper_metrics_eval, paper_metrics_freq" in note for note in mapped.notes)
    assert not any(field in mapped.values for field in ("batch_size", "seed", "first_codebook_weight"))


def test_single_book_with_speaker_and_book(tmp_path):
    _, mapped = read_kind(tmp_path, "single_book_named")
    values = mapped.values
    assert values["books"] == [OLD_DEFAULT_BOOK] and values["max_chapters"] == 3
    assert "num_sequences" not in values
    assert any("librilight_num_sequences not used in librilight_evaluation_mode: single_book" in note
               for note in mapped.notes)
    multi = map_settings({"librilight_evaluation_mode": "multi_book", "librilight_num_sequences": 4}, "x")
    assert multi.values == {"num_sequences": 4} and "seeded random subset" in multi.notes[0]
    assert values["audio_dir"] == str(tmp_path / "elsewhere" / "librilight" / "medium") + "/"
    assert not any("single_book without" in note or "no librilight_evaluation_mode" in note for note in mapped.notes)
    _, other = read_kind(tmp_path, "single_book_other_named")
    assert other.values["books"] == ["200/second_book_64kb_mp3"] and other.values["max_chapters"] == 4


def test_single_book_without_speaker_and_book_is_their_default(tmp_path):
    _, mapped = read_kind(tmp_path, "single_book_default")
    assert mapped.values["books"] == [OLD_DEFAULT_BOOK] and mapped.values["max_chapters"] == 1
    assert any(OLD_DEFAULT_BOOK in note and "default" in note for note in mapped.notes)
    only_speaker = map_settings({"librilight_evaluation_mode": "single_book", "librilight_speaker_id": 7}, "x")
    assert only_speaker.values["books"] == [f"7/{MAPPED_DEFAULT_BOOK}"]


def test_a_paper_metrics_section_without_mode_is_single_book(tmp_path):
    for kind in ("no_librilight_keys", "streaming_section"):
        _, mapped = read_kind(tmp_path, kind)
        assert mapped.values["books"] == [OLD_DEFAULT_BOOK]
        assert any("no librilight_evaluation_mode: single_book" in note for note in mapped.notes)
    assert "books" not in map_settings({"librilight_audio_dir": "/d"}, "plain").values


def test_pre_concatenated_reads_files(tmp_path):
    _, mapped = read_kind(tmp_path, "pre_concatenated")
    values = mapped.values
    assert values["audio_dir"] == str(tmp_path / "elsewhere" / "librilight_1hour_sequences")
    assert (values["layout"], values["max_files"], values["max_sequence_length"]) == ("files", 1, 3000)
    assert "books" not in values and mapped.source_fields == {"layout"}
    assert any("result-file switches" in note and "results_dir" in note for note in mapped.notes)
    both = map_settings({"librilight_evaluation_mode": "pre_concatenated", "librilight_audio_dir": "/books",
                         "librilight_concatenated_dir": "/long", "librilight_speaker_id": "1"}, "x")
    assert both.values["audio_dir"] == "/long"
    assert any("librilight_audio_dir not used" in note for note in both.notes)
    assert any("librilight_speaker_id not used" in note for note in both.notes)


def test_streaming_section_maps_its_length_and_notes_its_switches(tmp_path):
    _, mapped = read_kind(tmp_path, "streaming_section")
    assert mapped.values["max_sequence_length"] == 24000
    switches = next(note for note in mapped.notes if "streaming and verification" in note)
    for key in ("enabled", "memory_check", "cache_clear_interval"):
        assert f"librilight_streaming.{key}" in switches
    assert any("use_silence_codes" in note for note in mapped.notes)


def test_conflicting_keys_name_both():
    with pytest.raises(ConfigError, match="librilight_streaming.max_sequence_length.*librilight_max_tokens|"
                                          "librilight_max_tokens.*librilight_streaming.max_sequence_length"):
        map_settings({"librilight_max_tokens": 3000, "librilight_streaming": {"max_sequence_length": 24000}}, "x")
    assert map_settings({"librilight_max_tokens": 3000, "max_sequence_length": 3000}, "x").values == {
        "max_sequence_length": 3000}


def test_unknown_keys_suggest_the_mapped_name():
    with pytest.raises(ConfigError) as error:
        map_settings({"librilight_num_sequence": 2, "librilight_batch_size": 4, "max_tokens": 3, "zzz": 1}, "f.yaml")
    message = str(error.value)
    assert message.startswith("f.yaml: unknown key(s)") and "\n" not in message
    assert "'librilight_num_sequence' (did you mean 'librilight_num_sequences', which sets num_sequences?)" in message
    assert "'librilight_batch_size' (did you mean 'batch_size'?)" in message
    assert "'max_tokens' (did you mean 'librilight_max_tokens', which sets max_sequence_length?)" in message
    assert "'zzz'," in message or "'zzz';" in message
    with pytest.raises(ConfigError, match="librilight_evaluation_mode must be one of single_book, multi_book"):
        map_settings({"librilight_evaluation_mode": "random"}, "x")


def test_a_whole_file_is_read_when_there_is_no_section(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("librilight_audio_dir: /d\nlibrilight_num_sequences: 2\nlibrilight_max_files: 5\n")
    mapped = read_config_file(path)
    assert mapped.values == {"audio_dir": "/d", "num_sequences": 2, "max_files": 5} and mapped.notes == []
    path.write_text("librilight_audio_dir: /d\nttt:\n  layers: all\n")
    with pytest.raises(ConfigError, match="'ttt'"):
        read_config_file(path)


def test_python_api_warns_each_note_as_a_user_warning(tmp_path):
    path, mapped = read_kind(tmp_path, "streaming_section")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        assert load_config_file(path) == mapped.values
    assert [str(w.message) for w in record] == mapped.notes
    assert all(issubclass(w.category, UserWarning) and not issubclass(w.category, DeprecationWarning)
               for w in record)
    with pytest.warns(SettingsNoteWarning, match="paper_metrics_freq"):
        normalize_config_mapping({"librilight_audio_dir": "/d", "paper_metrics_freq": 10})
