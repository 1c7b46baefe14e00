"""Checkpoint loading: default configs, file references, strict loading, LoRA and TTT weights, Mimi, tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sentencepiece
import torch
from safetensors.torch import load_file, save_file

from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.modules.lora import LoRALinear


@dataclass
class TinyLM:
    folder: Path
    config: dict[str, Any]
    codes: torch.Tensor

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"


@pytest.fixture(scope="module")
def tiny(parity_dir: Path) -> TinyLM:
    folder = parity_dir / "lm_moshiko_tiny"
    io = load_file(folder / "io.safetensors")
    codes = torch.cat([io["text_given"], io["own_audio"], io["user_audio"]], dim=1)
    return TinyLM(folder, json.loads((folder / "config.json").read_text()), codes)


def _outputs(model: LMModel, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(codes)
    return out.logits, out.text_logits


def _assert_same_outputs(a: LMModel, b: LMModel, codes: torch.Tensor, atol: float = 0.0) -> None:
    for x, y in zip(_outputs(a, codes), _outputs(b, codes)):
        torch.testing.assert_close(x, y, atol=atol, rtol=0.0, equal_nan=True)


def _load_tiny(tiny: TinyLM, **kwargs: Any) -> LMModel:
    config = kwargs.pop("config", tiny.config)
    filename = kwargs.pop("filename", tiny.weights)
    return loaders.get_moshi_lm(filename, config, dtype=torch.float32, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Default configurations and the 7B structure


def test_default_lm_config_is_the_released_one(parity_dir: Path) -> None:
    released = json.loads((parity_dir / "released" / "moshiko_7b_config.json").read_text())
    assert loaders.default_lm_config() == released


def test_default_mimi_config_is_the_released_one(parity_dir: Path) -> None:
    released = json.loads((parity_dir / "released" / "mimi_config.json").read_text())
    assert loaders.default_mimi_config() == released


def test_default_configs_are_fresh_copies() -> None:
    config = loaders.default_lm_config()
    config["delays"].append(5)
    assert len(loaders.default_lm_config()["delays"]) == 17


def test_7b_model_on_meta_has_released_keys_and_shapes(parity_dir: Path) -> None:
    released = json.loads((parity_dir / "released" / "moshiko_7b_state_dict.json").read_text())
    model = loaders.get_moshi_lm(None, device="meta", dtype=torch.bfloat16)
    structure = {key: [list(value.shape), str(value.dtype)] for key, value in model.state_dict().items()}
    assert sorted(structure) == sorted(released)
    assert structure == released


# ---------------------------------------------------------------------------------------------------------------------
# The tiny LM fixture


def test_loaded_lm_matches_upstream_forward(tiny: TinyLM) -> None:
    io = load_file(tiny.folder / "io.safetensors")
    logits, text_logits = _outputs(_load_tiny(tiny), tiny.codes)
    mask = io["forward_given.mask"]
    assert (logits[mask] - io["forward_given.logits"][mask]).abs().max() <= 1e-4
    text_mask = io["forward_given.text_mask"]
    assert (text_logits[text_mask] - io["forward_given.text_logits"][text_mask]).abs().max() <= 1e-4


def test_stacked_checkpoint_loads_to_identical_outputs(tiny: TinyLM) -> None:
    split = _load_tiny(tiny)
    stacked = _load_tiny(tiny, filename=tiny.folder / "model_stacked.safetensors")
    _assert_same_outputs(split, stacked, tiny.codes)


def test_get_moshi_lm_equals_plain_load_state_dict(tiny: TinyLM) -> None:
    plain = LMModel(**tiny.config, dtype=torch.float32)
    plain.load_state_dict(load_file(tiny.weights))
    plain.eval()
    _assert_same_outputs(_load_tiny(tiny), plain, tiny.codes)


def test_dtype_and_device_are_applied(tiny: TinyLM) -> None:
    model = loaders.get_moshi_lm(tiny.weights, tiny.config, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in (*model.parameters(), *model.buffers())} == {"cpu"}
    assert not model.training


def test_missing_and_unexpected_keys_are_listed(tiny: TinyLM, tmp_path: Path) -> None:
    state = load_file(tiny.weights)
    dropped = "transformer.layers.1.gating.linear_out.weight"
    del state[dropped]
    state["transformer.layers.1.bogus.weight"] = torch.zeros(2)
    broken = tmp_path / "broken.safetensors"
    save_file(state, broken)
    with pytest.raises(ValueError, match="broken.safetensors") as error:
        _load_tiny(tiny, filename=broken)
    assert dropped in str(error.value)
    assert "transformer.layers.1.bogus.weight" in str(error.value)


def test_is_safetensors_goes_by_the_suffix() -> None:
    assert loaders._is_safetensors("a/model.safetensors") and loaders._is_safetensors(Path("b.sft"))
    assert not loaders._is_safetensors("model.pt") and not loaders._is_safetensors("safetensors")


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.ckpt"])
def test_pickle_checkpoints_are_refused(tiny: TinyLM, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        _load_tiny(tiny, filename=path)


def test_missing_weights_file_is_named(tiny: TinyLM, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        _load_tiny(tiny, filename=tmp_path / "nowhere.safetensors")


def test_corrupt_weights_file_is_named(tiny: TinyLM, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(tiny.weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.safetensors is not a readable safetensors file"):
        _load_tiny(tiny, filename=corrupt)


def test_no_filename_gives_a_random_model_on_the_device(tiny: TinyLM) -> None:
    model = loaders.get_moshi_lm(None, tiny.config, dtype=torch.float32)
    logits, _ = _outputs(model, tiny.codes)
    assert logits.shape == (2, tiny.config["dep_q"], tiny.codes.shape[-1], tiny.config["card"])


def test_conditioned_configs_are_refused(tiny: TinyLM) -> None:
    with pytest.raises(NotImplementedError, match="conditioners"):
        _load_tiny(tiny, config={**tiny.config, "conditioners": {"description": {}}})


# ---------------------------------------------------------------------------------------------------------------------
# LoRA


def _lora_config(tiny: TinyLM) -> dict[str, Any]:
    return {**tiny.config, "lora": True, "lora_rank": 4, "lora_scaling": 2.0}


def _trained_lora(tiny: TinyLM) -> tuple[LMModel, dict[str, torch.Tensor]]:
    """A LoRA-wrapped tiny model with random adapters, and its adapter weights."""
    model = _load_tiny(tiny, config=_lora_config(tiny))
    generator = torch.Generator().manual_seed(7)
    adapters = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if ".lora_A." in key or ".lora_B." in key:
                value.copy_(0.1 * torch.randn(value.shape, generator=generator))
                adapters[key] = value.clone()
    return model, adapters


def test_fresh_lora_wrap_keeps_outputs(tiny: TinyLM) -> None:
    wrapped = _load_tiny(tiny, config=_lora_config(tiny))
    assert any(isinstance(m, LoRALinear) for m in wrapped.modules())
    _assert_same_outputs(wrapped, _load_tiny(tiny), tiny.codes, atol=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_lora_round_trip(tiny: TinyLM, tmp_path: Path, fuse: bool) -> None:
    trained, adapters = _trained_lora(tiny)
    lora_file = tmp_path / "lora.safetensors"
    save_file(adapters, lora_file)
    loaded = _load_tiny(tiny, config=_lora_config(tiny), lora_weights=lora_file, fuse_lora=fuse)
    assert any(isinstance(m, LoRALinear) for m in loaded.modules()) is not fuse
    _assert_same_outputs(loaded, trained, tiny.codes, atol=1e-5)
    base_logits, _ = _outputs(_load_tiny(tiny), tiny.codes)
    assert not torch.allclose(_outputs(loaded, tiny.codes)[0], base_logits, equal_nan=True)


def test_lora_file_with_wrong_keys_is_rejected(tiny: TinyLM, tmp_path: Path) -> None:
    _, adapters = _trained_lora(tiny)
    removed = min(adapters)
    del adapters[removed]
    adapters["text_linear.lora_C.weight"] = torch.zeros(1)
    lora_file = tmp_path / "lora.safetensors"
    save_file(adapters, lora_file)
    with pytest.raises(ValueError, match="lora.safetensors") as error:
        _load_tiny(tiny, config=_lora_config(tiny), lora_weights=lora_file)
    assert removed in str(error.value) and "text_linear.lora_C.weight" in str(error.value)


def test_lora_weights_need_lora_config(tiny: TinyLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora"):
        _load_tiny(tiny, lora_weights=tmp_path / "lora.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# TTT weights in a separate file


def _ttt_config(tiny: TinyLM) -> dict[str, Any]:
    return {**tiny.config, "ttt": {"layers": [1], "variant": "linear", "mini_batch_size": 4}}


def test_ttt_weights_load_from_their_own_file(tiny: TinyLM, tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = LMModel(**_ttt_config(tiny), dtype=torch.float32)
    base = load_file(tiny.weights)
    result = reference.load_state_dict(base, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys
    ttt_state = {key: value for key, value in reference.state_dict().items() if key in set(result.missing_keys)}
    ttt_file = tmp_path / "ttt.safetensors"
    save_file(ttt_state, ttt_file)
    reference.eval()
    loaded = _load_tiny(tiny, config=_ttt_config(tiny), ttt_weights=ttt_file)
    _assert_same_outputs(loaded, reference, tiny.codes)


def test_one_adapter_file_holds_lora_and_ttt_weights(tiny: TinyLM, tmp_path: Path) -> None:
    """moshi-finetune's lora.safetensors of a LoRA + TTT run: LoRA adapters on every linear layer except the TTT
    layers' (trained in full), and the TTT weights, in one file."""
    config = {**_lora_config(tiny), **_ttt_config(tiny)}
    torch.manual_seed(4)
    trained = _load_tiny(tiny, config=config, ttt_weights=None, filename=None)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert not any(isinstance(module, LoRALinear) for module in trained.transformer.layers[1].ttt.modules())
    base = load_file(tiny.weights)
    adapters = {key: value for key, value in trained.state_dict().items()
                if ".lora_" in key or (".ttt." in key and "frozen_W" not in key)}
    assert any(".ttt." in key for key in adapters) and any(".lora_" in key for key in adapters)
    save_file(adapters, tmp_path / "lora.safetensors")
    merged = {key.replace(".frozen_W", ""): value for key, value in trained.state_dict().items()
              if ".lora_" not in key and ".ttt." not in key}
    save_file({key: merged[key] for key in base}, tmp_path / "base.safetensors")
    for fuse in (False, True):
        loaded = _load_tiny(tiny, config=config, filename=tmp_path / "base.safetensors",
                            lora_weights=tmp_path / "lora.safetensors", fuse_lora=fuse)
        _assert_same_outputs(loaded, trained.eval(), tiny.codes, atol=1e-5)
    with pytest.raises(ValueError, match="hold.* LoRA adapters but the LM config does not enable `lora`"):
        _load_tiny(tiny, config=_ttt_config(tiny), ttt_weights=tmp_path / "lora.safetensors")


def test_missing_ttt_weights_are_named(tiny: TinyLM) -> None:
    ttt_keys = set(LMModel(**_ttt_config(tiny), device="meta").state_dict()) - set(load_file(tiny.weights))
    with pytest.raises(loaders.WeightsMismatchError, match="ttt_weights") as error:
        _load_tiny(tiny, config=_ttt_config(tiny))
    assert set(error.value.missing) == ttt_keys and len(ttt_keys) > loaders.LISTED_KEYS
    message = str(error.value)
    assert f"missing keys ({len(ttt_keys)})" in message and f"({len(ttt_keys) - loaders.LISTED_KEYS} more)" in message
    assert sum(key in message for key in ttt_keys) == loaders.LISTED_KEYS


def test_shape_mismatch_names_the_first_tensors(tiny: TinyLM) -> None:
    wider = {**tiny.config, "dim": tiny.config["dim"] * 2}
    with pytest.raises(loaders.WeightsMismatchError, match="shape mismatch") as error:
        _load_tiny(tiny, config=wider)
    key, in_file, in_model = error.value.mismatched[0]
    assert in_file != in_model and key in str(error.value)
    assert f"{in_file} in the file, {in_model} in the model" in str(error.value)


def _as_finetune_key(key: str) -> str:
    """Our TTT key -> the name moshi-finetune's hybrid layers save it under."""
    layer, _, rest = key.partition(".ttt.")
    if rest == "gating_alpha":
        return f"{layer}.seq_modeling_block.forward_ssm_gating.gating_alpha"
    name = rest.removeprefix("ttt_layer.")
    name = {"lr_gate.weight": "learnable_ttt_lr_weight", "lr_gate.bias": "learnable_ttt_lr_bias"}.get(name, name)
    return f"{layer}.seq_modeling_block.ttt_layer.ttt.{name}"


def test_finetune_ttt_checkpoint_loads_through_the_key_mapping(tiny: TinyLM, tmp_path: Path) -> None:
    torch.manual_seed(4)
    reference = LMModel(**_ttt_config(tiny), dtype=torch.float32).eval()
    base_keys = set(load_file(tiny.weights))
    reference.load_state_dict(load_file(tiny.weights), strict=False)
    theirs = {}
    for key, value in reference.state_dict().items():
        if key in base_keys:
            theirs[key.replace("transformer.layers.1.", "transformer.layers.1.original_layer.")] = value
        elif key.endswith("lr_gate.weight"):
            theirs[_as_finetune_key(key)] = value[:, None, :]
        elif key.endswith("lr_gate.bias"):
            theirs[_as_finetune_key(key)] = value[:, None]
        else:
            theirs[_as_finetune_key(key)] = value
    unused = "transformer.layers.1.seq_modeling_block.backward_ssm_gating.gating_alpha"
    theirs[unused] = torch.zeros(tiny.config["dim"])
    checkpoint = tmp_path / "finetune.safetensors"
    save_file({key: value.contiguous() for key, value in theirs.items()}, checkpoint)
    with pytest.warns(UserWarning, match=unused):
        loaded = _load_tiny(tiny, config=_ttt_config(tiny), filename=checkpoint)
    _assert_same_outputs(loaded, reference, tiny.codes)


# ---------------------------------------------------------------------------------------------------------------------
# File references and checkpoint repositories


def test_hf_get_local_references(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    assert loaders.hf_get(target) == target
    assert loaders.hf_get(f"file://{target}") == target
    assert loaders.hf_get(str(target)) == target
    assert loaders.hf_get("weights.safetensors", hf_repo=tmp_path) == target


class _FakeHub:
    """Stands in for `huggingface_hub.hf_hub_download`: serves local files per (repo, filename), records calls."""

    def __init__(self, files: dict[tuple[str, str], Path]) -> None:
        self.files = files
        self.calls: list[tuple[str, str, str | None]] = []
        self.cache_only: list[bool] = []

    def __call__(self, repo_id: str, filename: str, *, revision: str | None = None, local_files_only: bool = False,
                 **_: Any) -> str:
        self.calls.append((repo_id, filename, revision))
        self.cache_only.append(local_files_only)
        if (repo_id, filename) not in self.files:
            if local_files_only:
                raise loaders.LocalEntryNotFoundError(f"{filename} of {repo_id} is not cached")
            raise loaders.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(self.files[(repo_id, filename)])


def _install_hub(monkeypatch: pytest.MonkeyPatch, files: dict[tuple[str, str], Path],
                 unreachable: str | None = None) -> _FakeHub:
    hub = _FakeHub(files)
    monkeypatch.setattr(loaders, "hf_hub_download", hub)
    monkeypatch.setattr(loaders, "_hub_unreachable", lambda: unreachable)
    return hub


def test_hf_get_hub_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = tmp_path / "x.safetensors"
    hub = _install_hub(monkeypatch,
                       {("owner/repo", "sub/x.safetensors"): local, ("owner/other", "x.safetensors"): local})
    assert loaders.hf_get("hf://owner/repo/sub/x.safetensors", revision="abc") == local
    assert loaders.hf_get("x.safetensors", hf_repo="owner/other") == local
    assert hub.calls == [("owner/repo", "sub/x.safetensors", "abc"), ("owner/other", "x.safetensors", None)]
    with pytest.raises(ValueError, match="hf://"):
        loaders.hf_get("hf://owner/repo")


def _write_repo(tiny: TinyLM, folder: Path, extra: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {**tiny.config, "moshi_name": "lm.safetensors", "lm_gen_config": {"temp": 0.6}, **extra}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "lm.safetensors").write_bytes(tiny.weights.read_bytes())
    return folder


def test_checkpoint_info_from_local_folder(tiny: TinyLM, tmp_path: Path) -> None:
    repo = _write_repo(tiny, tmp_path / "repo", {"model_type": "moshi", "model_id": {"sig": "abc"}})
    info = loaders.CheckpointInfo.from_hf_repo(str(repo))
    assert info.moshi_weights == repo / "lm.safetensors"
    assert info.mimi_weights == repo / loaders.MIMI_NAME
    assert info.tokenizer == repo / loaders.TEXT_TOKENIZER_NAME
    assert info.lm_config == tiny.config
    assert info.lm_gen_config == {"temp": 0.6} and info.model_id == {"sig": "abc"}
    assert info.lora_weights is None and info.ttt_weights is None
    assert info.mimi_num_codebooks == 8
    _assert_same_outputs(info.get_moshi(dtype=torch.float32), _load_tiny(tiny), tiny.codes)


def test_checkpoint_info_overrides_with_file_references(tiny: TinyLM, tmp_path: Path) -> None:
    repo = _write_repo(tiny, tmp_path / "repo", {})
    config_path = tmp_path / "other_config.json"
    config_path.write_text(json.dumps(tiny.config))
    info = loaders.CheckpointInfo.from_hf_repo(
        "unused/repo", moshi_weights=f"file://{tiny.weights}", mimi_weights=repo / "m.safetensors",
        tokenizer=str(repo / "t.model"), config_path=config_path, ttt_weights=f"file://{repo}/ttt.safetensors",
    )
    assert info.moshi_weights == tiny.weights
    assert info.mimi_weights == repo / "m.safetensors" and info.tokenizer == repo / "t.model"
    assert info.ttt_weights == repo / "ttt.safetensors"
    assert info.lm_config == tiny.config


def test_checkpoint_info_from_hub(tiny: TinyLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _write_repo(tiny, tmp_path / "repo", {"lora_name": "adapters.safetensors", "ttt_name": "ttt.safetensors"})
    names = ["config.json", "lm.safetensors", loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME, "adapters.safetensors",
             "ttt.safetensors"]
    served = {("kyutai/tiny", name): repo / name for name in names}
    served["kyutai/tiny", "config.json"] = tmp_path / "fresh_cache" / "config.json"  # nothing else downloaded yet
    served["kyutai/tiny", "config.json"].parent.mkdir()
    served["kyutai/tiny", "config.json"].write_bytes((repo / "config.json").read_bytes())
    hub = _install_hub(monkeypatch, served)
    info = loaders.CheckpointInfo.from_hf_repo("kyutai/tiny", revision="v1")
    assert sorted(hub.calls) == sorted(("kyutai/tiny", name, "v1") for name in names)
    assert info.moshi_weights == repo / "lm.safetensors"
    assert info.lora_weights == repo / "adapters.safetensors" and info.ttt_weights == repo / "ttt.safetensors"
    assert "lora_name" not in info.lm_config and "ttt_name" not in info.lm_config
    assert info.raw_config["lora_name"] == "adapters.safetensors"


def test_repository_without_config_is_the_7b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = {loaders.MOSHI_NAME: "a", loaders.MIMI_NAME: "b", loaders.TEXT_TOKENIZER_NAME: "c"}
    _install_hub(monkeypatch, {("kyutai/old", name): tmp_path / local for name, local in names.items()})
    with pytest.warns(UserWarning, match="no config.json"):
        info = loaders.CheckpointInfo.from_hf_repo("kyutai/old")
    assert info.lm_config is None and info.moshi_weights == tmp_path / "a"
    assert info.mimi_num_codebooks == 8


def test_offline_cache_miss_is_not_mistaken_for_a_legacy_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_hub(monkeypatch, {}, unreachable="https://hub.example is unreachable (no route)")
    with pytest.raises(loaders.HubDownloadError) as error:
        loaders.CheckpointInfo.from_hf_repo("kyutai/anything")
    assert str(error.value).startswith("cannot get config.json of the Hugging Face repository kyutai/anything: not in "
                                       "the local cache and https://hub.example is unreachable (no route).")
    assert "HF_HUB_OFFLINE=1" in str(error.value) and "\n" not in str(error.value)


def test_an_unreachable_hub_is_asked_once_and_the_cache_used(tiny: TinyLM, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _write_repo(tiny, tmp_path / "repo", {})
    names = ["config.json", "lm.safetensors", loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME]
    hub = _install_hub(monkeypatch, {("kyutai/cached", name): repo / name for name in names},
                       unreachable="https://hub.example is unreachable")
    info = loaders.CheckpointInfo.from_hf_repo("kyutai/cached")
    assert info.moshi_weights == repo / "lm.safetensors" and set(hub.cache_only) == {True}


def test_a_file_missing_from_a_repository_is_named(tiny: TinyLM, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _install_hub(monkeypatch, {})
    with pytest.raises(loaders.HubDownloadError, match="cannot get lm.safetensors of the Hugging Face repository "
                                                       "kyutai/tiny: the repository has no such file"):
        loaders.hf_get("lm.safetensors", "kyutai/tiny")


def test_the_hub_probe_names_an_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    loaders._hub_unreachable.cache_clear()
    try:
        reason = loaders._hub_unreachable()
    finally:
        loaders._hub_unreachable.cache_clear()
    assert reason is not None and reason.startswith("http://127.0.0.1:9 is unreachable (")


def test_invalid_config_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json"):
        loaders.CheckpointInfo.from_hf_repo(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Text tokenizer and Mimi


def _train_tokenizer(folder: Path) -> Path:
    lines = ["the quick brown fox jumps over the lazy dog", "moshi listens and speaks at the same time"] * 20
    text_file = folder / "corpus.txt"
    text_file.write_text("\n".join(lines))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(folder / "spm"), vocab_size=40, hard_vocab_limit=False, minloglevel=2
    )
    return folder / "spm.model"


def test_text_tokenizer(tmp_path: Path) -> None:
    model_file = _train_tokenizer(tmp_path)
    info = loaders.CheckpointInfo(tmp_path / "lm.safetensors", tmp_path / "mimi.safetensors", model_file)
    tokenizer = info.get_text_tokenizer()
    assert tokenizer.decode(tokenizer.encode("the lazy fox")) == "the lazy fox"
    missing = loaders.CheckpointInfo(model_file, model_file, tmp_path / "absent.model")
    with pytest.raises(FileNotFoundError, match="absent.model"):
        missing.get_text_tokenizer()


def test_mimi_loads_and_encodes_like_upstream(parity_dir: Path) -> None:
    folder = parity_dir / "mimi_tiny"
    config = json.loads((folder / "config.json").read_text())
    io = load_file(folder / "io.safetensors")
    mimi = loaders.get_mimi(folder / "model.safetensors", config, num_codebooks=io["codes"].shape[1])
    with torch.no_grad():
        codes = mimi.encode(io["wav"])
    assert torch.equal(codes, io["codes"])


def test_mimi_key_mismatch_is_listed(parity_dir: Path, tmp_path: Path) -> None:
    folder = parity_dir / "mimi_tiny"
    config = json.loads((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    dropped = min(state)
    del state[dropped]
    save_file(state, tmp_path / "mimi.safetensors")
    with pytest.raises(ValueError, match="mimi.safetensors") as error:
        loaders.get_mimi(tmp_path / "mimi.safetensors", config)
    assert dropped in str(error.value)


def test_other_mimi_weights_without_their_config_say_how_to_name_it(parity_dir: Path) -> None:
    weights = parity_dir / "mimi_tiny" / "model.safetensors"
    with pytest.raises(loaders.WeightsMismatchError, match="shape mismatch") as error:
        loaders.get_mimi(weights, None)
    assert "--mimi-config" in str(error.value) and "mimi_config_name" in str(error.value)
    config = json.loads((parity_dir / "mimi_tiny" / "config.json").read_text())
    config["quantizer"]["bins"] *= 2
    with pytest.raises(loaders.WeightsMismatchError) as error:
        loaders.get_mimi(weights, config)
    assert "--mimi-config" not in str(error.value)


@pytest.mark.parametrize(("n_q", "dep_q", "expected"), [(16, 8, 8), (8, 8, 8), (32, 16, 16)])
def test_checkpoint_info_mimi_codebooks_follow_lm(tiny: TinyLM, n_q: int, dep_q: int, expected: int) -> None:
    config = {**tiny.config, "n_q": n_q, "dep_q": dep_q}
    info = loaders.CheckpointInfo(tiny.weights, tiny.weights, tiny.weights, lm_config=config)
    assert info.mimi_num_codebooks == expected


@pytest.mark.parametrize("mistyped", ["/no/such/checkpoint", "./checkpoints/missing", "~/nothing/here/", "a/b/c"])
def test_a_repository_that_looks_like_a_path_must_be_a_folder(mistyped: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _install_hub(monkeypatch, {})
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        loaders.CheckpointInfo.from_hf_repo(mistyped)
    assert hub.calls == []


def test_a_repository_that_is_a_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    with pytest.raises(NotADirectoryError, match="is a file"):
        loaders.CheckpointInfo.from_hf_repo(str(config))


# ---------------------------------------------------------------------------------------------------------------------
# config.json checks and the files its `*_name` keys name


def test_every_key_of_the_released_configs_is_known(parity_dir: Path, tiny: TinyLM) -> None:
    for config in (json.loads((parity_dir / "released" / "moshiko_7b_config.json").read_text()), tiny.config,
                   loaders.DEFAULT_LM_CONFIG):
        loaders.check_lm_config(config, "config.json")


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: {**{k: v for k, v in c.items() if k != "context"}, "contxt": 6},
     r"^cfg: unknown LM argument\(s\) 'contxt' \(did you mean 'context'\?\)$"),
    (lambda c: {**c, "depformer_num_head": 2, "colour": 1},
     r"^cfg: unknown LM argument\(s\) 'colour', 'depformer_num_head' \(did you mean 'depformer_num_heads'\?\)$"),
    (lambda c: {k: v for k, v in c.items() if k not in ("dim", "delays")},
     r"^cfg: missing LM argument\(s\) 'dim', 'delays'$"),
])
def test_config_mistakes_name_the_key(tiny: TinyLM, change, message) -> None:
    with pytest.raises(ValueError, match=message):
        loaders.check_lm_config(change(tiny.config), "cfg")


def test_unsupported_features_are_refused_before_building(tiny: TinyLM) -> None:
    with pytest.raises(NotImplementedError, match="^cfg: conditioners, cross_attention: "):
        loaders.check_lm_config({**tiny.config, "conditioners": {"a": 1}, "cross_attention": True}, "cfg")


def test_named_files_are_found_beside_the_config(tiny: TinyLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local config.json naming `mimi_config_name` (and the other files) is read beside itself, not on the Hub."""
    folder = _write_repo(tiny, tmp_path / "local", {"mimi_config_name": "mimi_config.json",
                                                    "tokenizer_name": "tok.model"})
    (folder / "mimi_config.json").write_text(json.dumps({"sample_rate": 24000}))
    (folder / "tok.model").write_text("x")
    hub = _install_hub(monkeypatch, {("kyutai/base", loaders.MIMI_NAME): tmp_path / "mimi.safetensors"})
    info = loaders.CheckpointInfo.from_hf_repo("kyutai/base", config_path=folder / "config.json")
    assert info.mimi_config == {"sample_rate": 24000} and info.tokenizer == folder / "tok.model"
    assert info.moshi_weights == folder / "lm.safetensors" and info.mimi_weights == tmp_path / "mimi.safetensors"
    assert hub.calls == [("kyutai/base", loaders.MIMI_NAME, None)]


def test_files_without_a_repository(tiny: TinyLM, tmp_path: Path) -> None:
    info = loaders.CheckpointInfo.from_files(tiny.weights, config_path=tiny.folder / "config.json")
    assert info.mimi_weights is None and info.tokenizer is None and info.lm_config == tiny.config
    with pytest.raises(ValueError, match="no Mimi weights"):
        info.get_mimi()
    _assert_same_outputs(info.get_moshi(dtype=torch.float32), _load_tiny(tiny), tiny.codes)


# ---------------------------------------------------------------------------------------------------------------------
# TTT config files and moshi-finetune checkpoint folders


def _their_section() -> dict[str, Any]:
    return {"enable": True, "layers": "1", "mini_batch_size": 4, "ttt_mlp_layers": 2, "use_rope": True}


@pytest.mark.parametrize("form", ["training yaml", "training_config.json", "section file", "our json"])
def test_ttt_config_files(tmp_path: Path, form: str) -> None:
    from moshi.modules.ttt import TTTConfig

    theirs = TTTConfig.from_moshi_finetune(_their_section())
    files = {
        "training yaml": ("train.yaml", "run_dir: x\nttt:\n" + "".join(f"  {k}: {json.dumps(v)}\n"
                                                                      for k, v in _their_section().items())),
        "training_config.json": ("training_config.json", json.dumps({"run_dir": "x", "ttt": _their_section()})),
        "section file": ("ttt.json", json.dumps(_their_section())),
        "our json": ("ours.json", json.dumps({"ttt": theirs.to_dict()})),
    }
    name, text = files[form]
    (tmp_path / name).write_text(text)
    assert loaders.read_ttt_config(tmp_path / name) == theirs


@pytest.mark.parametrize(("text", "message"), [
    ("data: {}\n", "has no `ttt:` section and is not such a section itself"),
    ("ttt: [1, 2]\n", r"has no `ttt:` section \(a mapping of TTT settings; its `ttt` is \[1, 2\]\)"),
    ("ttt:\n  enable: true\n  use_ropes: true\n", "use_ropes"),
    ("ttt: {enable: true\n", "is not valid YAML"),
])
def test_bad_ttt_config_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        loaders.read_ttt_config(tmp_path / "bad.yaml")
    assert str(tmp_path / "bad.yaml") in str(error.value)
