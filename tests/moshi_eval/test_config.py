"""Settings from YAML: the researchers' legacy keys, obsolete keys with a warning, unknown keys as errors."""

from __future__ import annotations

import pytest

from moshi_eval.librilight.config import LibriLightConfig, parse_positions
from moshi_eval.librilight.config_keys import load_config_file
from moshi_eval.scoring.errors import SettingsNoteWarning


def test_legacy_yaml_keys(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("librilight_audio_dir: /data/ll\nlibrilight_max_chapters: 2\n"
                    "librilight_streaming:\n  max_sequence_length: 30000\npositions: 4k,8k\nbatch_size: 4\n")
    config = LibriLightConfig(**load_config_file(path))
    assert (config.audio_dir, config.max_chapters, config.max_sequence_length) == ("/data/ll", 2, 30000)
    assert config.positions == [4000, 8000] and config.batch_size == 4


def test_obsolete_keys_warn_by_name(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("librilight_audio_dir: /d\nuse_fixed_streaming: true\nttt_prefer_efficiency: false\n"
                    "librilight_streaming:\n  verify_loss_computation: true\n  memory_check_enabled: true\n")
    with pytest.warns(SettingsNoteWarning) as record:
        settings = load_config_file(path)
    message = str(record[0].message)
    for key in ("use_fixed_streaming", "ttt_prefer_efficiency", "verify_loss_computation", "memory_check_enabled"):
        assert key in message
    assert settings == {"audio_dir": "/d"}


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("librilight_audio_dir: /d\nlibrilight_chapters: 3\n")
    with pytest.raises(ValueError, match="librilight_chapters"):
        load_config_file(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config_file(path)


def test_invalid_values_are_named():
    with pytest.raises(ValueError, match="text_policy"):
        LibriLightConfig(text_policy="beam")
    with pytest.raises(ValueError, match="window"):
        LibriLightConfig(positions=[500], window=1000)
    with pytest.raises(ValueError, match="position"):
        parse_positions("8q")


def test_first_codebook_weight_from_legacy_key(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("librilight_audio_dir: /d\nfirst_codebook_weight_multiplier: 100\n")
    config = LibriLightConfig(**load_config_file(path))
    assert config.resolved_codebook_weights(4) == [100.0, 1.0, 1.0, 1.0]
    assert LibriLightConfig().resolved_codebook_weights(8) is None
    with pytest.raises(ValueError, match="3 values"):
        LibriLightConfig(codebook_weights=[1, 2, 3]).resolved_codebook_weights(8)
    with pytest.raises(ValueError, match="not both"):
        LibriLightConfig(codebook_weights=[1.0], first_codebook_weight=2.0)
