"""`CheckpointInfo.from_checkpoint`: moshi-finetune checkpoint folders (kyutai's layout and the TTT fork), what it
reads from them, and the mistakes it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from finetune_checkpoints import (
    users_ttt_section,
    write_base,
    write_kyutai_full,
    write_kyutai_lora,
    write_users_ttt,
)

from moshi.models import loaders
from moshi.modules.ttt import TTTConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*moshi-finetune TTT key")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, parity_dir: Path) -> Path:
    return write_base(tmp_path_factory.mktemp("finetune") / "base", parity_dir)


def test_kyutai_lora_layout(base: Path, tmp_path: Path) -> None:
    checkpoint = write_kyutai_lora(tmp_path / "run", base)
    info = loaders.CheckpointInfo.from_checkpoint(checkpoint, hf_repo=base)
    assert info == loaders.CheckpointInfo.from_checkpoint(checkpoint / "consolidated", hf_repo=str(base))
    assert info.moshi_weights == base / "model.safetensors" and info.mimi_weights == base / "mimi.safetensors"
    assert info.lora_weights == checkpoint / "consolidated" / "lora.safetensors" and info.ttt_weights is None
    assert info.lm_config["lora"] is True and info.lm_config["lora_rank"] == 4
    assert info.mimi_config == json.loads((base / "mimi_config.json").read_text())


@pytest.mark.parametrize("lora_in_config", [False, True])
def test_kyutai_full_layout_has_no_adapters(base: Path, tmp_path: Path, lora_in_config: bool) -> None:
    checkpoint = write_kyutai_full(tmp_path / "run", base, lora_in_config=lora_in_config)
    info = loaders.CheckpointInfo.from_checkpoint(checkpoint, hf_repo=base)
    assert info.moshi_weights == checkpoint / "consolidated" / "consolidated.safetensors"
    assert info.lora_weights is None and not any(key.startswith("lora") for key in info.lm_config)
    info.get_moshi()


def test_users_ttt_layout(base: Path, tmp_path: Path) -> None:
    folder = write_users_ttt(tmp_path / "run", base, {"hf_repo_id": str(base)})
    info = loaders.CheckpointInfo.from_checkpoint(folder)
    assert info.moshi_weights == base / "model.safetensors" and info.tokenizer == base / "tokenizer.model"
    assert info.ttt_weights == folder / "lora.safetensors" and info.lora_weights is None
    with pytest.warns(UserWarning, match="ignored key"):
        expected = TTTConfig.from_moshi_finetune(users_ttt_section())
    assert info.lm_config["ttt"] == expected


def test_a_disabled_ttt_section_builds_no_ttt_layers(base: Path, tmp_path: Path) -> None:
    folder = write_users_ttt(tmp_path / "run", base, {"hf_repo_id": str(base)})
    training = json.loads((folder / "training_config.json").read_text())
    training["ttt"]["enable"] = False
    (folder / "training_config.json").write_text(json.dumps(training))
    assert "ttt" not in loaders.CheckpointInfo.from_checkpoint(folder).lm_config


def test_flags_override_the_folder(base: Path, tmp_path: Path) -> None:
    folder = write_users_ttt(tmp_path / "run", base, {"hf_repo_id": "kyutai/moshiko-pytorch-bf16"})
    other = tmp_path / "other_base"
    shutil.copytree(base, other)
    info = loaders.CheckpointInfo.from_checkpoint(folder, hf_repo=other, tokenizer=base / "tokenizer.model")
    assert info.moshi_weights == other / "model.safetensors" and info.tokenizer == base / "tokenizer.model"


def test_a_base_nothing_names_is_the_released_moshi(base: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = write_kyutai_lora(tmp_path / "run", base)
    asked: list[str] = []

    def hub(repo_id: str, filename: str, **_: Any) -> str:
        asked.append(f"{repo_id}/{filename}")
        return str(base / filename)

    monkeypatch.setattr(loaders, "hf_hub_download", hub)
    monkeypatch.setattr(loaders, "_hub_unreachable", lambda: None)
    with pytest.warns(UserWarning, match=f"does not say which model it was trained from .* assuming "
                                         f"{loaders.DEFAULT_REPO}; name it with --hf-repo"):
        loaders.CheckpointInfo.from_checkpoint(checkpoint)
    assert f"{loaders.DEFAULT_REPO}/model.safetensors" in asked


def test_moshi_paths_that_are_gone_are_named(base: Path, tmp_path: Path) -> None:
    folder = write_users_ttt(tmp_path / "run", base, {"moshi_path": "runs/base/model.safetensors",
                                                      "mimi_path": str(base / "mimi.safetensors"),
                                                      "tokenizer_path": str(base / "tokenizer.model")})
    with pytest.raises(FileNotFoundError, match=r"training_config.json: moshi_paths.moshi_path "
                                                r"runs/base/model.safetensors: no such file"):
        loaders.CheckpointInfo.from_checkpoint(folder)
    info = loaders.CheckpointInfo.from_checkpoint(folder, moshi_weights=base / "model.safetensors")
    assert info.moshi_weights == base / "model.safetensors"


@pytest.mark.parametrize(("make", "message"), [
    (lambda folder: None, "no such folder"),
    (lambda folder: folder.mkdir(), "no config.json; a moshi-finetune checkpoint is a checkpoint_NNNNNN/consolidated/"),
    (lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")),
     "holds neither of lora.safetensors .adapters. and consolidated.safetensors"),
    (lambda folder: (folder.mkdir(), *((folder / name).write_text("{}") for name in
                                       ("config.json", "lora.safetensors", "consolidated.safetensors"))),
     "holds both of"),
])
def test_folders_that_are_no_checkpoint_are_named(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "checkpoint_000010"
    make(folder)
    with pytest.raises(FileNotFoundError, match=message):
        loaders.CheckpointInfo.from_checkpoint(folder)
