"""moshi-finetune's calls on this package give upstream 0.2.13's numbers (fixtures from `gen_fixtures.py`).

Each test makes the calls moshi-finetune's `train.py`, `wrapped_model.py`, `loss.py` and `checkpointing.py` make, in
our own code: meta-device build with `lm_kwargs_overrides` and `load_weight=False`, `load_state_dict(strict=False,
assign=True)` of a released-layout checkpoint, adapters materialised where the weights left them on the meta device,
`model(codes=..., condition_tensors=None)`, weighted text and audio losses, backward, one SGD step, LoRA-only and
merged checkpoints (merged through a state-dict hook calling `LoRALinear.merge_weight`), reloaded with `get_moshi_lm`.
Losses, every gradient by parameter name and the reloaded logits must be within 1e-4 of upstream's.
"""

from __future__ import annotations

import json
from pathlib import Path

import finetune_fixtures
import finetune_scenario as scenario
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.modules.lora import LoRALinear
from moshi.utils.utils import cross_entropy


@pytest.fixture(scope="module")
def base_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """config.json and the seeded weights in the released (stacked attention) layout."""
    folder = tmp_path_factory.mktemp("base")
    config = scenario.load_lm_config()
    shapes = {key: tuple(value.shape) for key, value in LMModel(**config, device="meta").state_dict().items()}
    files = {"config": folder / "config.json", "moshi": folder / "model.safetensors"}
    files["config"].write_text(json.dumps(config))
    save_file(scenario.stack_attention_weights(scenario.base_state_dict(shapes)), files["moshi"])
    return files


def build_for_training(files: dict[str, Path], case: str) -> tuple[LMModel, dict]:
    """The model as moshi-finetune prepares it, and the config its checkpointer writes."""
    lora = scenario.case_uses_lora(case)
    info = loaders.CheckpointInfo.from_hf_repo(
        "kyutai/moshiko-pytorch-bf16", moshi_weights=files["moshi"], mimi_weights="unused.safetensors",
        tokenizer="unused.model", config_path=files["config"],
    )
    lm_config = dict(info.raw_config, lora=lora, lora_rank=scenario.LORA_RANK, lora_scaling=scenario.LORA_SCALING)
    overrides = {"gradient_checkpointing": scenario.case_uses_gradient_checkpointing(case), "lora": lora,
                 "lora_rank": scenario.LORA_RANK, "lora_scaling": scenario.LORA_SCALING}
    with torch.device("meta"):
        model = info.get_moshi(device="meta", dtype=torch.float32, lm_kwargs_overrides=overrides, load_weight=False)
    assert all(parameter.is_meta for parameter in model.parameters())
    assert model.condition_provider is None and model.fuser is None
    assert loaders._is_safetensors(info.moshi_weights)
    model.load_state_dict(load_file(info.moshi_weights), strict=False, assign=True)
    materialize_adapters(model)
    assert not any(parameter.is_meta for parameter in model.parameters())
    if lora:
        assert scenario.set_lora_values(model) > 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora" in name or not lora
    return model, lm_config


def materialize_adapters(model: nn.Module) -> None:
    """Give real storage to the modules the base weights did not reach; only LoRA adapters may be among them."""
    for name, module in model.named_modules():
        parameters = dict(module.named_parameters())
        if not parameters or not all(parameter.is_meta for parameter in parameters.values()):
            continue
        assert name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"), f"{name} was not loaded from the base weights"
        for key, parameter in parameters.items():
            module._parameters[key] = nn.Parameter(torch.empty_like(parameter, device="cpu"))


def weighted_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor):
    """Mean cross-entropy over valid tokens, token t counting `weights[t]` times."""
    weights = weights * mask
    return (cross_entropy(logits, targets, mask) * weights).sum() / weights.sum()


def training_step(model: LMModel) -> dict[str, torch.Tensor]:
    model.train()
    codes = scenario.training_codes(scenario.load_lm_config())
    output = model(codes=codes, condition_tensors=None)
    text, audio = codes[:, : model.audio_offset], codes[:, model.audio_offset: model.audio_offset + model.dep_q]
    padding = (text == model.text_padding_token_id) | (text == model.end_of_text_padding_id)
    text_weights = torch.where(padding, scenario.TEXT_PADDING_WEIGHT, 1.0)
    audio_weights = torch.ones(audio.shape)
    audio_weights[:, 0] = scenario.FIRST_CODEBOOK_WEIGHT_MULTIPLIER
    text_loss = weighted_loss(output.text_logits, text, output.text_mask, text_weights)
    audio_loss = weighted_loss(output.logits, audio, output.mask, audio_weights)
    (text_loss + audio_loss).backward()
    outputs = {"loss.text": text_loss.detach().reshape(1), "loss.audio": audio_loss.detach().reshape(1),
               "forward.mask": output.mask, "forward.text_mask": output.text_mask}
    outputs.update({f"grad.{name}": p.grad for name, p in model.named_parameters() if p.requires_grad})
    return outputs


def save_lora_only(model: LMModel, folder: Path, config: dict) -> None:
    folder.mkdir()
    save_file({name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad},
              folder / "lora.safetensors")
    (folder / "config.json").write_text(json.dumps(config))


def save_merged(model: LMModel, folder: Path, config: dict) -> None:
    """Every LoRA layer saved as a plain `weight` through a state-dict hook, adapter keys dropped."""

    def merged_weight_hook(module: LoRALinear, destination: dict, prefix: str, *_: object) -> None:
        destination[prefix + "weight"] = module.merge_weight()

    handles = [module._register_state_dict_hook(merged_weight_hook) for module in model.modules()
               if isinstance(module, LoRALinear)]
    state = {key: value.detach().clone() for key, value in model.state_dict().items()
             if "lora" not in key and "frozen" not in key}
    for handle in handles:
        handle.remove()
    folder.mkdir()
    save_file(state, folder / "consolidated.safetensors")
    (folder / "config.json").write_text(json.dumps(config))


def scored(model: LMModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        output = model(scenario.training_codes(scenario.load_lm_config()))
    return {"logits": output.logits, "text_logits": output.text_logits}


@pytest.mark.parametrize("case", scenario.CASES)
def test_moshi_finetune_path_gives_upstreams_numbers(case: str, base_files: dict[str, Path], tmp_path: Path) -> None:
    model, config = build_for_training(base_files, case)
    assert model.transformer.checkpointing == model.depformer.checkpointing == case.endswith("_gc")
    outputs = training_step(model)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=scenario.SGD_LEARNING_RATE).step()

    reloads = {}
    if scenario.case_uses_lora(case):
        save_lora_only(model, tmp_path / "lora", config)
        reloads["lora"] = loaders.get_moshi_lm(base_files["moshi"], lm_kwargs=config, dtype=torch.float32,
                                               lora_weights=tmp_path / "lora" / "lora.safetensors")
    save_merged(model, tmp_path / "merged", config)
    reloads["merged"] = loaders.get_moshi_lm(tmp_path / "merged" / "consolidated.safetensors", lm_kwargs=config,
                                             dtype=torch.float32, lm_kwargs_overrides={"lora": False})
    for kind, reloaded in reloads.items():
        outputs.update({f"reload.{kind}.{key}": value for key, value in scored(reloaded).items()})

    differences = finetune_fixtures.max_differences(outputs, finetune_fixtures.load_fixture(case))
    assert set(differences) >= {"loss.text", "loss.audio", "grad", "reload.merged"}
    assert max(differences.values()) <= scenario.TOLERANCE, differences


def test_merged_checkpoint_reloads_with_the_config_as_written(base_files: dict[str, Path], tmp_path: Path) -> None:
    """The merged checkpoint's config still says `lora: true`; fresh adapters start at zero, so the logits are the
    merged model's (upstream would draw random `lora_B` there)."""
    model, config = build_for_training(base_files, "lora")
    save_merged(model, tmp_path / "merged", config)
    weights = tmp_path / "merged" / "consolidated.safetensors"
    as_written = loaders.get_moshi_lm(weights, lm_kwargs=config, dtype=torch.float32)
    plain = loaders.get_moshi_lm(weights, lm_kwargs=config, dtype=torch.float32, lm_kwargs_overrides={"lora": False})
    assert any(isinstance(module, LoRALinear) for module in as_written.modules())
    for key, value in scored(plain).items():
        torch.testing.assert_close(scored(as_written)[key], value, equal_nan=True)
