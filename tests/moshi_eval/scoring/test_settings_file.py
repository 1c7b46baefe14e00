"""The settings-file reader every evaluation shares: one section or the whole file, notes, errors naming the file."""

from __future__ import annotations

import pytest

from moshi_eval.scoring.errors import ConfigError
from moshi_eval.scoring.settings import closest_key, read_settings_section, unknown_keys_message


def test_section_is_read_and_the_rest_is_named(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("batch_size: 4\nttt:\n  layers: all\npaper_metrics:\n  a: 1\n  b: [2, 3]\noptim:\n  lr: 1\n")
    section = read_settings_section(path, "paper_metrics")
    assert section.values == {"a": 1, "b": [2, 3]} and section.left_out == ("batch_size", "ttt", "optim")
    assert section.source == f"{path} [paper_metrics]"
    around, ttt = section.notes
    assert around == f"{path}: reading its 'paper_metrics' section; ignoring the 3 training key(s) around it " \
                     "(batch_size, ttt, optim)"
    assert ttt.startswith(f"{path}: its 'ttt' section is not applied (a training file's ttt settings are never used")


def test_whole_file_without_the_section(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("a: 1\n")
    section = read_settings_section(path, "paper_metrics")
    assert (section.values, section.section, section.notes, section.source) == ({"a": 1}, None, [], str(path))
    path.write_text("paper_metrics:\n")
    assert read_settings_section(path, "paper_metrics").values == {}
    path.write_text("")
    assert read_settings_section(path, "paper_metrics").values == {}


@pytest.mark.parametrize(("text", "expected"), [
    (None, "cannot read config file"),
    ("a: [1, 2\n", "is not valid YAML"),
    ("- 1\n- 2\n", "must hold a mapping of keys, got list"),
    ("paper_metrics: 3\n", "the 'paper_metrics' section must be a mapping of keys, got int"),
    (b"\xff\xfe\x00binary", "is not a text file"),
])
def test_unusable_files_are_named(tmp_path, text, expected):
    path = tmp_path / "settings.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as error:
        read_settings_section(path, "paper_metrics")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_closest_key_and_unknown_key_message():
    known = ["max_chapters", "batch_size", "librilight_max_chapters"]
    assert closest_key("librilight_batch_size", known) == "batch_size"
    assert closest_key("librilight_chapters", known) == "librilight_max_chapters"
    assert closest_key("max_chapter", known) == "max_chapters"
    assert closest_key("nothing_alike", known) is None
    message = unknown_keys_message("f.yaml", ["max_chapter", "zz"], ["max_chapters", "seed"], {"old_seed": "seed"})
    assert message == ("f.yaml: unknown key(s) 'max_chapter' (did you mean 'max_chapters'?), 'zz'; known keys: "
                       "max_chapters, seed")
    assert "'old_sed' (did you mean 'old_seed', which sets seed?)" in unknown_keys_message(
        "f", ["old_sed"], ["seed"], {"old_seed": "seed"})
