"""Training TTT layers the way moshi-finetune trains a Moshi: the same calls, in our words.

Its `get_fsdp_model` builds the LM on the meta device through `CheckpointInfo.get_moshi(..., lm_kwargs_overrides=
{"gradient_checkpointing", "lora", ...}, load_weight=False)` and assigns the checkpoint with `load_state_dict(strict=
False, assign=True)`; every parameter must then be real, so the TTT layers' initial weights travel in the checkpoint.
A step is `model(codes=..., condition_tensors=None)` and a masked cross-entropy on text and audio, then backward. Its
`Checkpointer` saves, on one process, the state dict of every module whose parameters all train (the TTT blocks when
only they train), or the whole state dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.modules.ttt import TTTBlock

TTT = {"layers": "0,1", "variant": "mlp", "mini_batch_size": 4, "scan_checkpoint_group_size": 2}
FRAMES = 22  # 6 mini-batches of 4 (the last one partial), 3 checkpointed groups


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy `[B, K, T, card]` vs `[B, K, T]` over the positions where `mask` is True."""
    target = torch.where(mask, target, torch.zeros_like(target))
    losses = F.cross_entropy(logits.flatten(0, 2).float(), target.flatten(), reduction="none")
    weights = mask.flatten().float()
    return (losses * weights).sum() / weights.sum()


@pytest.fixture(scope="module")
def repository(parity_dir: Path, tmp_path_factory) -> Path:
    """A checkpoint folder as moshi-finetune reads it: config.json with a `ttt` section and weights holding the base
    model plus freshly initialised TTT layers."""
    folder = tmp_path_factory.mktemp("ttt_repo")
    base = parity_dir / "lm_moshiko_tiny"
    config = json.loads((base / "config.json").read_text()) | {"ttt": TTT}
    torch.manual_seed(0)
    initial = LMModel(**config)
    state = initial.state_dict() | load_file(base / "model.safetensors")
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config | {"moshi_name": "model.safetensors"}))
    return folder


def build_like_moshi_finetune(folder: Path, gradient_checkpointing: bool, train_only_ttt: bool,
                              scan_group: int = TTT["scan_checkpoint_group_size"]) -> LMModel:
    info = loaders.CheckpointInfo.from_hf_repo(folder, mimi_weights=folder / "unused", tokenizer=folder / "unused")
    overrides = {"gradient_checkpointing": gradient_checkpointing, "lora": False, "lora_rank": 4, "lora_scaling": 2.0}
    if scan_group != TTT["scan_checkpoint_group_size"]:
        overrides["ttt"] = TTT | {"scan_checkpoint_group_size": scan_group}
    with torch.device("meta"):
        model = info.get_moshi(device="meta", dtype=torch.float32, load_weight=False, lm_kwargs_overrides=overrides)
    model.load_state_dict(load_file(info.moshi_weights), strict=False, assign=True)
    assert not any(p.is_meta for p in model.parameters())
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not train_only_ttt or ".ttt." in name
    return model


def training_codes(lm: LMModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    text = torch.randint(0, lm.text_card, (2, 1, FRAMES), generator=generator)
    audio = torch.randint(0, lm.card, (2, lm.n_q, FRAMES), generator=generator)
    audio[1, lm.dep_q:, -3:] = -1  # the user is silent at the end of item 1
    return torch.cat([text, audio], dim=1)


def training_step(model: LMModel, codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, text + audio losses, backward; the gradients by parameter name."""
    model.train()
    output = model(codes=codes, condition_tensors=None)
    text_loss = masked_cross_entropy(output.text_logits, codes[:, :1], output.text_mask)
    audio_loss = masked_cross_entropy(output.logits, codes[:, 1: 1 + model.dep_q], output.mask)
    (text_loss + audio_loss).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def ttt_blocks(model: LMModel) -> list[TTTBlock]:
    return [module for module in model.modules() if isinstance(module, TTTBlock)]


def ttt_parameter_names(model: LMModel) -> list[str]:
    return [name for name, _ in model.named_parameters() if ".ttt." in name]


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_every_ttt_parameter_gets_a_gradient(repository, gradient_checkpointing):
    model = build_like_moshi_finetune(repository, gradient_checkpointing, train_only_ttt=True)
    assert model.transformer.checkpointing is gradient_checkpointing
    gradients = training_step(model, training_codes(model))
    names = ttt_parameter_names(model)
    assert sorted(gradients) == sorted(names)
    assert len(names) == sum(len(list(block.parameters())) for block in ttt_blocks(model))
    for name in names:
        assert torch.isfinite(gradients[name]).all() and gradients[name].abs().sum() > 0, name


def test_checkpointing_keeps_the_gradients(repository):
    """Full fine-tuning: no checkpointing, the grouped mini-batch scan, and the grouped scan nested in moshi-finetune's
    `gradient_checkpointing` (each layer recomputed in backward) give the same gradients for every parameter."""
    codes = None
    results = []
    for group, per_layer in ((0, False), (2, False), (2, True)):
        model = build_like_moshi_finetune(repository, per_layer, train_only_ttt=False, scan_group=group)
        assert {block.ttt_layer.config.scan_checkpoint_group_size for block in ttt_blocks(model)} == {group}
        assert model.transformer.checkpointing is per_layer
        codes = training_codes(model) if codes is None else codes
        results.append(training_step(model, codes))
    assert len(results[0]) == sum(1 for _ in model.parameters())
    for other in results[1:]:
        for name, gradient in results[0].items():
            torch.testing.assert_close(other[name], gradient, atol=1e-6, rtol=1e-5, msg=name)


def save_trainable_modules(model: LMModel, path: Path) -> None:
    """The one-process adapter save of moshi-finetune's Checkpointer: the state dict of every module whose parameters
    all require grad (parents of such modules included), keys prefixed with the module name."""
    states = {}
    for module_name, module in model.named_modules():
        if all(p.requires_grad for p in module.parameters()):
            states.update({f"{module_name}.{key}": value.detach().clone()
                           for key, value in module.state_dict().items()})
    save_file(dict(sorted(states.items())), path)


def test_saved_ttt_weights_load_back(repository, parity_dir, tmp_path):
    model = build_like_moshi_finetune(repository, False, train_only_ttt=True)
    codes = training_codes(model)
    training_step(model, codes)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= 0.5 * parameter.grad
    save_trainable_modules(model, tmp_path / "lora.safetensors")
    assert all(".ttt." in key for key in load_file(tmp_path / "lora.safetensors"))
    consolidated = {key: value for key, value in model.state_dict().items() if "lora" not in key}
    save_file(consolidated, tmp_path / "consolidated.safetensors")

    model.eval()
    with torch.no_grad():
        expected = model(codes)
    config = {key: value for key, value in json.loads((repository / "config.json").read_text()).items()
              if key != "moshi_name"}
    base = parity_dir / "lm_moshiko_tiny" / "model.safetensors"
    adapters = loaders.get_moshi_lm(base, config, dtype=torch.float32, ttt_weights=tmp_path / "lora.safetensors")
    merged = loaders.get_moshi_lm(tmp_path / "consolidated.safetensors", config, dtype=torch.float32)
    for reloaded in (adapters, merged):
        with torch.no_grad():
            got = reloaded(codes)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0, equal_nan=True)
        torch.testing.assert_close(got.text_logits, expected.text_logits, atol=1e-5, rtol=0, equal_nan=True)
