"""Upstream features this fork leaves out fail with one sentence: console scripts, TTS models, quantization."""

from __future__ import annotations

import importlib

import pytest

from moshi import client, run_tts


@pytest.mark.parametrize(("command", "words"), [(client.main, "moshi-client-py"), (run_tts.main, "moshi-tts")])
def test_left_out_console_scripts_print_one_sentence_and_exit_2(command, words, capsys):
    assert command([]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert captured.out == ""


@pytest.mark.parametrize(("module", "name", "words"), [
    ("moshi.models.tts", "TTSModel", "text-to-speech"),
    ("moshi.utils.quantize", "replace_linear_with_qlinear", "bitsandbytes"),
    ("moshi.client", "Connection", "moshi-client-py"),
])
def test_left_out_modules_refuse_their_names(module, name, words):
    loaded = importlib.import_module(module)
    with pytest.raises(NotImplementedError, match=words):
        getattr(loaded, name)
