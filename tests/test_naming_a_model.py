"""One way to name a model in the four commands (`moshi.server`, `moshi.run_inference`, `moshi_eval.librilight`,
`moshi_eval.paper_metrics`): moshi-finetune checkpoint folders as both Checkpointers write them give the numbers of the
same model named file by file; a TTT config over a local base folder; unfused LoRA; the long-context controls; and each
mistake one `error:` line with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from finetune_checkpoints import (
    write_base,
    write_kyutai_full,
    write_kyutai_lora,
    write_users_ttt,
)

from moshi import run_inference
from moshi.models import loaders
from moshi.server import cli as server_cli
from moshi_eval.librilight import cli as librilight_cli
from moshi_eval.paper_metrics import cli as paper_metrics_cli

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

REPO_ROOT = Path(__file__).resolve().parents[1]
SWUGGY = REPO_ROOT / "tests" / "moshi_eval" / "data" / "paper_metrics" / "lexical" / "dev"
COMMANDS = ("server", "inference", "librilight", "paper_metrics")


@dataclasses.dataclass
class Files:
    root: Path
    base: Path
    kyutai_lora: Path
    kyutai_full: Path
    users_ttt: Path
    users_ttt_paths: Path
    audio: Path
    codes: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, parity_dir: Path) -> Files:
    root = tmp_path_factory.mktemp("naming_a_model")
    base = write_base(root / "base", parity_dir)
    users_paths = {"moshi_path": str(base / "model.safetensors"), "mimi_path": str(base / "mimi.safetensors"),
                   "tokenizer_path": str(base / "tokenizer.model")}
    audio = root / "input.wav"
    t = np.arange(int(24000 * 0.48)) / 24000
    soundfile.write(audio, 0.3 * np.sin(2 * np.pi * 220 * t), 24000)
    codes = root / "codes"
    codes.mkdir()
    generator = torch.Generator().manual_seed(0)
    from safetensors.torch import save_file

    for name in ("a", "b"):
        save_file({"codes": torch.randint(0, 32, (8, 12), generator=generator)}, codes / f"{name}.safetensors")
    return Files(
        root, base,
        write_kyutai_lora(root / "kyutai_lora", base),
        write_kyutai_full(root / "kyutai_full", base),
        write_users_ttt(root / "users_ttt", base, {"hf_repo_id": loaders.DEFAULT_REPO}),
        write_users_ttt(root / "users_ttt_paths", base, users_paths),
        audio, codes,
    )


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def contacted(*_: Any, **__: Any) -> None:
        pytest.fail("the Hugging Face Hub was contacted")

    monkeypatch.setattr(loaders, "hf_hub_download", contacted)
    monkeypatch.setattr(loaders, "_hub_unreachable", contacted)


def run_command(command: str, model_argv: list[str], tmp_path: Path, files: Files) -> Any:
    """What `command` computes with the model `model_argv` names: the served model's weights and sampling settings,
    the inference's reply, or an evaluation's results (without what differs between equivalent runs)."""
    if command == "server":
        args = server_cli.build_parser().parse_args([*model_argv, "--device", "cpu"])
        with torch.no_grad():
            served = server_cli.load_served_model(args)
        gen = served.lm_gen
        return {"lm": gen.lm_model.state_dict(), "mimi": served.mimi.state_dict(),
                "vocab": served.tokenizer.vocab_size(),
                "sampling": (gen.use_sampling, gen.temp, gen.temp_text, gen.top_k, gen.top_k_text)}
    if command == "inference":
        args = run_inference.build_parser().parse_args([*model_argv, "--device", "cpu", "--batch-size", "1",
                                                        str(files.audio)])
        reply = run_inference.run(args)
        return {"text": reply.text_tokens, "pcm": reply.pcm}
    output = tmp_path / f"{command}.json"
    if command == "librilight":
        code = librilight_cli.main([*model_argv, "--codes", str(files.codes), "--user-stream", "zero", "--positions",
                                    "8", "--window", "4", "--device", "cpu", "--output", str(output), "--quiet",
                                    "--no-resume"])
    else:
        code = paper_metrics_cli.main([*model_argv, "--swuggy-dir", str(SWUGGY), "--swuggy-max-pairs", "2",
                                       "--device", "cpu", "--output", str(output), "--quiet", "--no-resume",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    data = json.loads(output.read_text())
    del data["timing"], data["model"]["source"]
    data.get("config", {}).pop("output", None)
    return data


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def consolidated(checkpoint: Path) -> Path:
    return checkpoint if checkpoint.name == "consolidated" else checkpoint / "consolidated"


LAYOUTS: dict[str, Callable[[Files], tuple[list[str], list[str]]]] = {
    # name: (the --checkpoint flags, the same model named file by file)
    "kyutai LoRA": lambda f: (
        ["--checkpoint", str(f.kyutai_lora), "--hf-repo", str(f.base)],
        ["--hf-repo", str(f.base), "--lora-weights", str(consolidated(f.kyutai_lora) / "lora.safetensors"),
         "--lm-config", str(consolidated(f.kyutai_lora) / "config.json")]),
    "kyutai full": lambda f: (
        ["--checkpoint", str(consolidated(f.kyutai_full)), "--hf-repo", str(f.base)],
        ["--hf-repo", str(f.base), "--moshi-weights", str(consolidated(f.kyutai_full) / "consolidated.safetensors"),
         "--lm-config", str(consolidated(f.kyutai_full) / "config.json")]),
    "users' TTT, base from --hf-repo": lambda f: (
        ["--checkpoint", str(f.users_ttt), "--hf-repo", str(f.base)],
        ["--hf-repo", str(f.base), "--ttt-config", str(f.users_ttt / "training_config.json"),
         "--ttt-weights", str(f.users_ttt / "lora.safetensors")]),
    "users' TTT, base from moshi_paths": lambda f: (
        ["--checkpoint", str(f.users_ttt_paths.parent), "--mimi-config", str(f.base / "mimi_config.json")],
        ["--moshi-weights", str(f.base / "model.safetensors"), "--lm-config", str(f.base / "config.json"),
         "--ttt-config", str(f.users_ttt_paths / "training_config.json"),
         "--ttt-weights", str(f.users_ttt_paths / "lora.safetensors")]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_checkpoint_folder_gives_the_numbers_of_its_files(files, tmp_path, command, layout, capsys):
    checkpoint_argv, explicit_argv = LAYOUTS[layout](files)
    from_folder = run_command(command, checkpoint_argv, tmp_path / "folder", files)
    from_files = run_command(command, explicit_argv, tmp_path / "files", files)
    assert_same(from_folder, from_files)
    assert "error" not in capsys.readouterr().err


def test_the_checkpoint_changes_the_base_model(files, tmp_path):
    base = run_command("librilight", ["--hf-repo", str(files.base)], tmp_path / "base", files)
    for checkpoint in (files.kyutai_lora, files.kyutai_full, files.users_ttt):
        trained = run_command("librilight", ["--checkpoint", str(checkpoint), "--hf-repo", str(files.base)],
                              tmp_path / checkpoint.name, files)
        assert trained["model"]["fingerprint"] != base["model"]["fingerprint"]
        assert trained["librilight_loss_8"] != base["librilight_loss_8"]


@pytest.mark.parametrize("command", COMMANDS)
def test_unfused_lora_runs_in_every_command(files, tmp_path, command):
    argv = ["--checkpoint", str(files.kyutai_lora), "--hf-repo", str(files.base)]
    fused = run_command(command, argv, tmp_path / "fused", files)
    apart = run_command(command, [*argv, "--no-fuse-lora"], tmp_path / "apart", files)
    if command == "server":
        assert any(".lora_A." in key for key in apart["lm"]) and not any(".lora_A." in key for key in fused["lm"])
    elif command == "inference":
        assert apart["text"].shape == fused["text"].shape
    else:
        assert apart["model"]["fingerprint"] != fused["model"]["fingerprint"]
        key = "librilight_loss_8" if command == "librilight" else "swuggy_accuracy_mean"
        assert apart[key] == pytest.approx(fused[key], abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Mistakes: one `error:` line, exit status 2, in every command


def command_main(command: str, model_argv: list[str], tmp_path: Path, files: Files) -> int:
    """`command`'s `main` on a small run of the model `model_argv` names."""
    if command == "server":
        return server_cli.main([*model_argv, "--device", "cpu"])
    if command == "inference":
        return run_inference.main([*model_argv, "--device", "cpu", str(files.audio)])
    if command == "librilight":
        return librilight_cli.main([*model_argv, "--codes", str(files.codes), "--user-stream", "zero", "--positions",
                                    "8", "--window", "4", "--device", "cpu", "--output",
                                    str(tmp_path / "out.json"), "--quiet"])
    return paper_metrics_cli.main([*model_argv, "--swuggy-dir", str(SWUGGY), "--device", "cpu", "--output",
                                   str(tmp_path / "out.json"), "--quiet", "--cache-dir", str(tmp_path / "cache")])


def the_error_line(command: str, model_argv: list[str], tmp_path: Path, files: Files,
                   capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `command` prints on stderr, checked to be an `error:` line with exit status 2."""
    capsys.readouterr()
    assert command_main(command, model_argv, tmp_path, files) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def config_with(files: Files, name: str, change: Callable[[dict], dict]) -> Path:
    """A copy of the base folder's config.json changed by `change`, in its own folder beside the base's files."""
    path = files.root / name / "config.json"
    if not path.exists():
        path.parent.mkdir()
        path.write_text(json.dumps(change(json.loads((files.base / "config.json").read_text()))))
    return path


def rename_context(config: dict) -> dict:
    config["contxt"] = config.pop("context")
    return config


@pytest.mark.parametrize("command", COMMANDS)
def test_a_typo_in_config_json_is_one_line(files, tmp_path, capsys, command):
    typo = config_with(files, "typo", rename_context)
    line = the_error_line(command, ["--hf-repo", str(files.base), "--lm-config", str(typo)], tmp_path, files, capsys)
    assert line == f"error: {typo}: unknown LM argument(s) 'contxt' (did you mean 'context'?)"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_lm_argument_in_a_checkpoint_folder_is_one_line(files, tmp_path, capsys, command):
    checkpoint = files.root / "no_dim"
    if not checkpoint.exists():
        checkpoint.mkdir()
        adapters = consolidated(files.kyutai_lora) / "lora.safetensors"
        (checkpoint / "lora.safetensors").write_bytes(adapters.read_bytes())
        config = json.loads((consolidated(files.kyutai_lora) / "config.json").read_text())
        del config["dim"]
        (checkpoint / "config.json").write_text(json.dumps(config))
    line = the_error_line(command, ["--checkpoint", str(checkpoint), "--hf-repo", str(files.base)], tmp_path, files,
                          capsys)
    assert line == f"error: {checkpoint / 'config.json'}: missing LM argument(s) 'dim'"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_hub_is_one_line_naming_the_repository_and_the_file(files, tmp_path, capsys, command,
                                                                           monkeypatch):
    asked = []

    def cache_only(repo_id: str, filename: str, **kwargs: Any) -> str:
        asked.append(kwargs.get("local_files_only"))
        raise loaders.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(loaders, "_hub_unreachable", lambda: "http://127.0.0.1:9 is unreachable (refused)")
    monkeypatch.setattr(loaders, "hf_hub_download", cache_only)
    line = the_error_line(command, ["--hf-repo", "kyutai/no-such-model"], tmp_path, files, capsys)
    assert line.startswith("error: cannot get config.json of the Hugging Face repository kyutai/no-such-model: not in "
                           "the local cache and http://127.0.0.1:9 is unreachable (refused)")
    assert "--moshi-weights" in line and "HF_HUB_OFFLINE=1" in line
    assert asked == [True]


def test_the_server_gives_up_on_an_unreachable_hub_at_once(tmp_path):
    """No retries (25 s of them) printed twice: one request finds the Hub unreachable, one line says so."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "moshi.server", "--hf-repo", "kyutai/no-such-model", "--device",
                             "cpu"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(
        "error: cannot get config.json of the Hugging Face repository kyutai/no-such-model")
    assert "http://127.0.0.1:9 is unreachable" in result.stderr
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("command", COMMANDS)
def test_a_ttt_config_without_a_section_is_one_line(files, tmp_path, capsys, command):
    bad = tmp_path / "train.yaml"
    bad.write_text("data: {}\n")
    line = the_error_line(command, ["--hf-repo", str(files.base), "--ttt-config", str(bad)], tmp_path, files, capsys)
    assert line.startswith(f"error: the TTT config {bad} has no `ttt:` section")


# ---------------------------------------------------------------------------------------------------------------------
# Long-context controls, sampling flags, the two spellings


@pytest.mark.parametrize("command", COMMANDS)
def test_context_and_rope_period_change_the_model_say_so_once_and_are_recorded(files, tmp_path, capsys, command):
    base_argv = ["--hf-repo", str(files.base)]
    trained = run_command(command, base_argv, tmp_path / "trained", files)
    capsys.readouterr()
    changed = run_command(command, [*base_argv, "--context", "1", "--rope-max-period", "500"], tmp_path / "changed",
                          files)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert [note.split(" changes ")[0] for note in notes] == ["note: --context 1", "note: --rope-max-period 500"]
    assert "instead of the 6 it was trained with" in notes[0] and "instead of the 10000" in notes[1]
    if command == "server":
        assert changed["lm"].keys() == trained["lm"].keys()
    elif command == "inference":
        assert not torch.equal(changed["pcm"], trained["pcm"])
    else:
        recorded = changed["config"] if command == "librilight" else changed["settings"]
        assert recorded["context"] == 1 and recorded["rope_max_period"] == 500
        assert changed["model"]["context"] == 1 and changed["model"]["rope_max_period"] == 500
        assert trained["model"]["context"] == 6 and trained["model"]["rope_max_period"] == 10000
        assert changed["model"]["fingerprint"] == trained["model"]["fingerprint"]
        key = "librilight_loss_8" if command == "librilight" else "utterances"
        assert changed[key] != trained[key]


def test_the_served_model_has_the_context_and_period_asked_for(files):
    args = server_cli.build_parser().parse_args(["--hf-repo", str(files.base), "--device", "cpu", "--context", "3",
                                                 "--rope-max-period", "500"])
    lm = server_cli.load_served_model(args).lm_gen.lm_model
    assert lm.context == 3 and lm.transformer.attention_contexts() == [3, 3]
    assert lm.transformer.max_period == 500 and lm.depformer.max_period == 10000


def test_sampling_flags_replace_the_checkpoint_settings(files):
    config = config_with(files, "sampling", lambda c: c | {"lm_gen_config": {"temp": 0.9, "top_k": 8}})
    argv = ["--hf-repo", str(files.base), "--lm-config", str(config), "--device", "cpu"]

    def settings(*flags: str) -> tuple:
        gen = server_cli.load_served_model(server_cli.build_parser().parse_args([*argv, *flags])).lm_gen
        return gen.temp, gen.top_k, gen.temp_text, gen.top_k_text

    defaults = settings()
    assert defaults[:2] == (0.9, 8)
    assert settings("--temp", "0.5", "--top-k-text", "3") == (0.5, 8, defaults[2], 3)
    assert settings("--temp-text", "0.2", "--top-k", "2") == (0.9, 2, 0.2, defaults[3])


def test_the_inference_seed_and_temperature_are_taken(files, tmp_path):
    argv = ["--hf-repo", str(files.base)]
    first = run_command("inference", [*argv, "--seed", "1"], tmp_path, files)
    assert_same(run_command("inference", [*argv, "--seed", "1"], tmp_path, files), first)
    assert not torch.equal(run_command("inference", [*argv, "--seed", "2"], tmp_path, files)["pcm"], first["pcm"])
    assert not torch.equal(run_command("inference", [*argv, "--seed", "1", "--temp-text", "0.1"], tmp_path,
                                       files)["text"], first["text"])


PARSERS = {"server": server_cli.build_parser, "inference": run_inference.build_parser,
           "librilight": librilight_cli.build_parser, "paper_metrics": paper_metrics_cli.build_parser}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_one_spelling_and_both_are_accepted(command, tmp_path):
    parser = PARSERS[command]()
    shown = parser.format_help()
    ours = command in ("librilight", "paper_metrics")
    for upstream_name, our_name in (("--moshi-weight", "--moshi-weights"), ("--mimi-weight", "--mimi-weights"),
                                    ("--lora-weight", "--lora-weights"), ("--no_fuse_lora", "--no-fuse-lora"),
                                    ("--half", "--dtype")):
        assert (f"{our_name} " in shown) == ours and (f"{upstream_name} " in shown) != ours
    config_flag = "--lm-config" if ours else ("--config" if command == "inference" else "--config-path")
    assert f"{config_flag} " in shown
    for flag in ("--checkpoint", "--ttt-config", "--ttt-weights", "--context", "--rope-max-period", "--mimi-config"):
        assert f"{flag} " in shown
    extra = ["x.wav"] if command == "inference" else []
    upstream = parser.parse_args(["--moshi-weight", "a", "--mimi-weight", "b", "--lora-weight", "c", "--config-path",
                                  "d", "--half", "--no_fuse_lora", *extra])
    spelled_ours = parser.parse_args(["--moshi-weights", "a", "--mimi-weights", "b", "--lora-weights", "c",
                                      "--lm-config", "d", "--dtype", "float16", "--no-fuse-lora", *extra])
    assert vars(upstream) == vars(spelled_ours)
    assert (upstream.moshi_weights, upstream.mimi_weights, upstream.lora_weights, upstream.lm_config,
            upstream.dtype, upstream.fuse_lora) == ("a", "b", "c", "d", "float16", False)


def test_an_evaluation_settings_file_sets_the_context_too(files, tmp_path):
    settings = tmp_path / "eval.yaml"
    settings.write_text("context: 1\nrope_max_period: 500\n")
    from_file = run_command("librilight", ["--hf-repo", str(files.base), "--config", str(settings)], tmp_path / "a",
                            files)
    from_flags = run_command("librilight", ["--hf-repo", str(files.base), "--context", "1", "--rope-max-period", "500"],
                             tmp_path / "b", files)
    assert from_file["model"]["context"] == 1 and from_file["config"]["context"] == 1
    assert_same(from_file, from_flags)


def test_an_evaluation_refuses_a_context_its_model_was_not_built_with(files):
    from moshi.models.model_flags import ModelRequest
    from moshi_eval.librilight import evaluate_librilight

    lm = ModelRequest(hf_repo=str(files.base)).resolve().load_lm("cpu", torch.float32)
    with pytest.raises(ValueError, match="context is 1 in the settings but the model was built with 6"):
        evaluate_librilight(lm, None, codes=[str(files.codes)], user_stream="zero", positions=[8], window=4,
                            context=1, progress=False)
