"""`moshi.models.model_flags`: the device rule (`cuda` becomes an explicit `cuda:<index>`, what
`torch.cuda.set_device` needs; unusable devices are errors naming the value), the flags' two spellings, the request."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from moshi.models import model_flags
from moshi.models.loaders import CheckpointInfo
from moshi.models.model_flags import ModelRequest, resolve_device, select_device


@pytest.mark.parametrize(("requested", "local_rank", "count", "expected"), [
    ("cuda", 0, 1, "cuda:0"),
    ("cuda", 3, 2, "cuda:1"),
    ("cuda:1", 0, 2, "cuda:1"),
    ("cpu", 0, 2, "cpu"),
    (None, 0, 0, "cpu"),
    (None, 5, 4, "cuda:1"),
])
def test_devices_are_explicit(requested, local_rank, count, expected):
    device = resolve_device(requested, local_rank, cuda_count=count)
    assert device == expected
    assert torch.device(device).type != "cuda" or torch.device(device).index is not None


@pytest.mark.parametrize(("requested", "count", "message"), [
    ("cuda", 0, "--device cuda: no CUDA GPU is visible"),
    ("cuda:2", 2, r"--device cuda:2: only 2 CUDA device\(s\) are visible \(cuda:0 to cuda:1\)"),
    ("gpu", 1, "--device 'gpu' is not a device"),
])
def test_unusable_devices_are_named(requested, count, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(requested, cuda_count=count)


def test_selecting_cuda_passes_an_indexed_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    select_device(resolve_device("cuda", local_rank=0, cuda_count=1))
    select_device("cpu")
    assert chosen == [torch.device("cuda:0")]


def test_the_default_device_is_said():
    assert model_flags.default_device_note("cpu") == "running on cpu (no CUDA GPU is visible; choose with --device)"
    assert model_flags.default_device_note("cuda:0").startswith("running on cuda:0 (a GPU is visible")


@pytest.mark.parametrize(("name", "device", "expected"), [
    (None, "cpu", torch.float32), ("auto", "cuda:0", torch.bfloat16), ("float16", "cpu", torch.float16),
])
def test_dtype_rule(name, device, expected):
    assert model_flags.resolve_dtype(name, device) == expected


def parse(argv: list[str], spelling: str = model_flags.OURS, default_repo: str | None = None) -> ModelRequest:
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS if spelling == model_flags.OURS else None)
    model_flags.add_model_flags(parser, spelling, default_repo)
    return ModelRequest.from_args(parser.parse_args(argv), spelling, default_repo)


def test_flags_not_given_are_absent_from_a_suppressing_parser():
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    model_flags.add_model_flags(parser, model_flags.OURS)
    assert vars(parser.parse_args([])) == {}
    assert vars(parser.parse_args(["--half", "--no_fuse_lora"])) == {"dtype": "float16", "fuse_lora": False}


def test_the_request_records_what_was_given():
    request = parse(["--checkpoint", "run/checkpoint_000010", "--context", "30000", "--no-fuse-lora"])
    assert request.describe() == {"checkpoint": "run/checkpoint_000010", "context": 30000, "fuse_lora": False}
    assert parse([]).describe() == {}


def test_the_default_repository_is_not_used_for_a_checkpoint_folder():
    repo = "kyutai/moshiko-pytorch-bf16"
    assert parse([], model_flags.UPSTREAM, repo).hf_repo == repo
    assert parse(["--moshi-weight", "w.safetensors"], model_flags.UPSTREAM, repo).hf_repo == repo
    assert parse(["--checkpoint", "c"], model_flags.UPSTREAM, repo).hf_repo is None


@pytest.mark.parametrize(("argv", "spelling", "message"), [
    (["--moshi-weights", "nowhere.safetensors"], model_flags.OURS, "--moshi-weights nowhere.safetensors: file not"),
    (["--moshi-weight", "nowhere.safetensors"], model_flags.UPSTREAM, "--moshi-weight nowhere.safetensors: file not"),
    (["--lora-weights", "adapters.pt"], model_flags.OURS, "--lora-weights adapters.pt is a pickle-based checkpoint"),
    (["--hf-repo", "./runs/missing"], model_flags.OURS, "--hf-repo ./runs/missing: no such local folder"),
    (["--checkpoint", "runs/missing"], model_flags.OURS, "checkpoint runs/missing: no such folder"),
    (["--ttt-config", "train.yaml"], model_flags.OURS, "--ttt-config train.yaml: file not found"),
    (["--context", "0"], model_flags.OURS, "--context must be at least 1 step, got 0"),
    (["--rope-max-period", "-1"], model_flags.OURS, "--rope-max-period must be positive"),
])
def test_files_and_numbers_are_checked_before_loading(tmp_path, monkeypatch, argv, spelling, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((OSError, ValueError), match=re.escape(message)):
        parse(argv, spelling).check_files()


def test_no_model_is_named_in_the_command_s_spelling():
    with pytest.raises(ValueError, match="no model given: name it with --hf-repo, --checkpoint, or --moshi-weights "
                                         r"\(with --lm-config\)"):
        parse([]).resolve()


def sampling_args(**given) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    model_flags.add_sampling_flags(parser)
    return parser.parse_args([item for name, value in given.items()
                              for item in (f"--{name.replace('_', '-')}", str(value))])


def test_sampling_flags_win_over_the_checkpoint():
    info = CheckpointInfo(Path("m"), Path("c"), Path("t"), lm_gen_config={"temp": 0.6, "top_k": 100})
    assert model_flags.sampling_settings(sampling_args(), info) == {"temp": 0.6, "top_k": 100}
    assert model_flags.sampling_settings(sampling_args(temp=0.2, top_k_text=5), info) == {
        "temp": 0.2, "top_k": 100, "top_k_text": 5}
    with pytest.raises(ValueError, match="--top-k must be at least 1, got 0"):
        model_flags.sampling_settings(sampling_args(top_k=0), info)
    with pytest.raises(ValueError, match="--cfg-coef 2.0: classifier-free guidance is not supported"):
        model_flags.sampling_settings(sampling_args(cfg_coef=2), info)


def test_an_error_is_one_line(capsys):
    assert model_flags.report_error(ValueError("weights in x do not match:\n  missing keys (1): a")) == 2
    assert capsys.readouterr().err == "error: weights in x do not match: missing keys (1): a\n"
