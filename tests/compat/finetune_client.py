"""Run kyutai-labs/moshi-finetune's own training code on the tiny scenario, with whichever `moshi` is importable.

`gen_fixtures.py` runs it with upstream moshi 0.2.13 installed and stores the outputs; `run_moshi_finetune.py` runs it
with this package and compares. The moshi-finetune checkout is found through the MOSHI_FINETUNE_SRC environment
variable (a folder holding `finetune/`); none of its code is copied here. What is called, as its `train.py` calls it:

1. `CheckpointInfo.from_hf_repo(...)` with local files, `lm_config = raw_config` plus the `lora*` keys;
2. `finetune.wrapped_model.get_fsdp_model(args, info)`: meta-device build through `get_moshi(..., load_weight=False,
   lm_kwargs_overrides=...)`, `load_state_dict(strict=False, assign=True)`, `initialize_lora_parameters`, freezing;
3. `model(codes=..., condition_tensors=None)`, `finetune.loss.compute_loss_with_mask` for text and audio, backward;
4. one SGD step, then `finetune.checkpointing.Checkpointer.save_checkpoint` (LoRA-only, then merged);
5. the checkpoints loaded back with `get_moshi_lm` and scored in eval mode.

On a CPU, single process: a one-rank gloo process group stands in for the launcher, and the single-GPU branch's final
`model.cuda()` is made a no-op. The adapters drawn by `initialize_lora_parameters` are replaced by the scenario's
seeded values (its draw follows module order, which differs between packages, and zero `lora_B` gives zero `lora_A`
gradients).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import finetune_scenario as scenario
import safetensors.torch
import torch
import torch.distributed as dist

HF_REPO = "kyutai/moshiko-pytorch-bf16"
"""moshi-finetune's default repository id; every file is given locally, so nothing is downloaded."""


def import_moshi_finetune() -> dict:
    """The moshi-finetune modules the scenario calls, imported from MOSHI_FINETUNE_SRC."""
    source = os.environ.get("MOSHI_FINETUNE_SRC")
    if not source or not (Path(source) / "finetune").is_dir():
        raise SystemExit(f"error: MOSHI_FINETUNE_SRC must name a moshi-finetune checkout (got {source!r})")
    if source not in sys.path:
        sys.path.insert(0, source)
    names = ("args", "data.args", "wrapped_model", "loss", "checkpointing", "utils")
    return {name: importlib.import_module(f"finetune.{name}") for name in names}


def ensure_process_group(workdir: Path) -> None:
    """A one-rank gloo group, which moshi-finetune's barriers and rank queries need."""
    if not dist.is_initialized():
        workdir.mkdir(parents=True, exist_ok=True)
        dist.init_process_group("gloo", init_method=f"file://{workdir / 'process_group'}", rank=0, world_size=1)


@contextlib.contextmanager
def cuda_is_a_no_op() -> Iterator[None]:
    """`nn.Module.cuda()` returns the module unchanged while inside (the CPU stand-in for the one-GPU branch)."""
    original = torch.nn.Module.cuda
    torch.nn.Module.cuda = lambda module, *args, **kwargs: module
    try:
        yield
    finally:
        torch.nn.Module.cuda = original


def write_base_checkpoint(folder: Path, loaders, lm_module) -> dict[str, Path]:
    """config.json and the seeded base weights in the released (stacked attention) layout; placeholder Mimi and
    tokenizer paths, which this scenario never opens."""
    folder.mkdir(parents=True, exist_ok=True)
    config = scenario.load_lm_config()
    shapes = {key: tuple(value.shape) for key, value in lm_module.LMModel(**config, device="meta").state_dict().items()}
    state = scenario.stack_attention_weights(scenario.base_state_dict(shapes))
    files = {"config": folder / "config.json", "moshi": folder / "model.safetensors",
             "mimi": folder / "mimi.safetensors", "tokenizer": folder / "tokenizer.model"}
    files["config"].write_text(json.dumps(config))
    safetensors.torch.save_file(state, files["moshi"])
    return files


def run_case(case: str, workdir: Path) -> dict[str, torch.Tensor]:
    """moshi-finetune's path for one case ("lora", "lora_gc", "full"); returns the outputs by fixture key."""
    from moshi.models import lm as lm_module
    from moshi.models import loaders

    ft = import_moshi_finetune()
    ensure_process_group(workdir)
    lora = scenario.case_uses_lora(case)
    files = write_base_checkpoint(workdir / "base", loaders, lm_module)
    info = loaders.CheckpointInfo.from_hf_repo(
        hf_repo=HF_REPO, moshi_weights=str(files["moshi"]), mimi_weights=str(files["mimi"]),
        tokenizer=str(files["tokenizer"]), config_path=str(files["config"]),
    )
    lm_config = dict(info.raw_config)
    lm_config.update(lora=lora, lora_rank=scenario.LORA_RANK, lora_scaling=scenario.LORA_SCALING)
    args = ft["args"].TrainArgs(
        data=ft["data.args"].DataArgs(), run_dir=str(workdir / "run"), param_dtype="float32",
        gradient_checkpointing=scenario.case_uses_gradient_checkpointing(case), full_finetuning=not lora,
        lora=ft["args"].LoraArgs(enable=lora, rank=scenario.LORA_RANK, scaling=scenario.LORA_SCALING),
        text_padding_weight=scenario.TEXT_PADDING_WEIGHT,
        first_codebook_weight_multiplier=scenario.FIRST_CODEBOOK_WEIGHT_MULTIPLIER,
    )
    torch.manual_seed(0)
    with cuda_is_a_no_op():
        model = ft["wrapped_model"].get_fsdp_model(args, info)
    if lora:
        scenario.set_lora_values(model)

    outputs = training_step(model, args, ft["loss"].compute_loss_with_mask)
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.optim.SGD(trainable, lr=scenario.SGD_LEARNING_RATE).step()

    state = ft["utils"].TrainState(max_steps=2)
    checkpointer = ft["checkpointing"].Checkpointer(
        model=model, state=state, config=lm_config, run_dir=workdir / "run", num_ckpt_keep=None,
        full_finetuning=not lora,
    )
    saved = {}
    if lora:
        state.start_step()
        checkpointer.save_checkpoint(save_only_lora=True, dtype=torch.float32)
        saved["lora"] = checkpointer.dst_dir
    state.start_step()
    checkpointer.save_checkpoint(save_only_lora=False, dtype=torch.float32)
    saved["merged"] = checkpointer.dst_dir
    outputs.update(reloaded_logits(loaders, files["moshi"], saved))
    return outputs


def training_step(model, args, compute_loss_with_mask) -> dict[str, torch.Tensor]:
    """train.py's micro-batch body: forward with `condition_tensors=None`, text and audio losses, backward."""
    model.train()
    codes = scenario.training_codes(scenario.load_lm_config())
    output = model(codes=codes, condition_tensors=None)
    text_loss = compute_loss_with_mask(
        output.text_logits, codes[:, : model.audio_offset], output.text_mask, mode="text",
        text_padding_weight=args.text_padding_weight,
        text_padding_ids={model.text_padding_token_id, model.end_of_text_padding_id},
    )
    audio_loss = compute_loss_with_mask(
        output.logits, codes[:, model.audio_offset: model.audio_offset + model.dep_q], output.mask, mode="audio",
        first_codebook_weight_multiplier=args.first_codebook_weight_multiplier,
    )
    (text_loss + audio_loss).backward()
    outputs = {"loss.text": text_loss.detach().reshape(1), "loss.audio": audio_loss.detach().reshape(1),
               "forward.mask": output.mask, "forward.text_mask": output.text_mask}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            outputs[f"grad.{name}"] = parameter.grad.detach().clone()
    return outputs


def reloaded_logits(loaders, base_weights: Path, saved: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Logits `[B, dep_q, T, card]` / `[B, 1, T, text_card]` of each saved checkpoint loaded with `get_moshi_lm`.

    LoRA-only: base weights + `lora.safetensors` with the written config. Merged: `consolidated.safetensors` with the
    written config, `lora` switched off (upstream would wrap the merged weights in freshly drawn adapters).
    """
    codes = scenario.training_codes(scenario.load_lm_config())
    outputs = {}
    for kind, folder in saved.items():
        config = json.loads((folder / "config.json").read_text())
        if kind == "lora":
            model = loaders.get_moshi_lm(base_weights, lm_kwargs=config, device="cpu", dtype=torch.float32,
                                         lora_weights=folder / "lora.safetensors")
        else:
            model = loaders.get_moshi_lm(folder / "consolidated.safetensors", lm_kwargs=config, device="cpu",
                                         dtype=torch.float32, lm_kwargs_overrides={"lora": False})
        with torch.no_grad():
            output = model(codes)
        outputs[f"reload.{kind}.logits"] = output.logits
        outputs[f"reload.{kind}.text_logits"] = output.text_logits
    return outputs
