"""The whole path a researcher walks with a TTT checkpoint from training, as the four commands see it.

A run folder written the way the moshi-finetune TTT fork's `Checkpointer` writes it (`checkpoint_000010/` with
`consolidated/{config.json, lora.safetensors, training_config.json}`, the base repository named in `moshi_paths`) is
named once, with `--checkpoint`, in each command: LibriLight with the TTT inner losses, the spoken-LM benchmarks, the
comparison with the base model (intervals paired over the same sequences and pairs), and a spoken reply with its talk
report. Every step reads what the step before it wrote, as the researcher's shell would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from finetune_checkpoints import write_base, write_users_ttt

from moshi import run_inference
from moshi.models import loaders
from moshi_eval.compare import cli as compare_cli
from moshi_eval.librilight import cli as librilight_cli
from moshi_eval.paper_metrics import cli as paper_metrics_cli

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

SWUGGY = Path(__file__).resolve().parent / "moshi_eval" / "data" / "paper_metrics" / "lexical" / "dev"
TTT_LAYERS = ("0", "1")  # the `layers: "0,1"` of the checkpoint's ttt: section
LIBRILIGHT_FLAGS = ["--max-chapters", "2", "--positions", "16", "--window", "8", "--bin-size", "4",
                    "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, parity_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("user_path")
    base = write_base(root / "base", parity_dir)
    write_users_ttt(root / "run", base, {"hf_repo_id": str(base)})
    write_books(root / "books")
    return root


def write_books(root: Path) -> None:
    """Two LibriLight books of two 16 kHz chapters (1.6 s each, so 40 frames per joined sequence)."""
    rng = np.random.default_rng(0)
    for speaker, book in (("10", "first"), ("11", "second")):
        folder = root / speaker / book
        folder.mkdir(parents=True)
        for chapter in range(2):
            t = np.arange(int(16000 * 1.6)) / 16000
            pitch = 120.0 + 40 * chapter + 30 * int(speaker)
            audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.size)
            soundfile.write(folder / f"{chapter:02d}.flac", audio.astype(np.float32), 16000)
            meta = {"speaker": speaker, "book_meta": {"id": speaker, "title": book, "genre": ["Fiction"]},
                    "snr": 20.0, "voice_activity": [[0.0, 1.6]]}
            (folder / f"{chapter:02d}.json").write_text(json.dumps(meta))


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def contacted(*_, **__) -> None:
        pytest.fail("the Hugging Face Hub was contacted")

    monkeypatch.setattr(loaders, "hf_hub_download", contacted)


def checkpoint(walk: Path) -> str:
    return str(walk / "run" / "checkpoints" / "checkpoint_000010")


def test_librilight_of_the_base_and_of_the_checkpoint_compared(walk: Path) -> None:
    base_json, ttt_json = walk / "base_librilight.json", walk / "ttt_librilight.json"
    books = ["--audio-dir", str(walk / "books")]
    assert librilight_cli.main(["--hf-repo", str(walk / "base"), *books, *LIBRILIGHT_FLAGS,
                                "--output", str(base_json)]) == 0
    assert librilight_cli.main(["--checkpoint", checkpoint(walk), *books, *LIBRILIGHT_FLAGS, "--ttt-inner-losses",
                                "--output", str(ttt_json), "--plot", str(walk / "ttt_librilight.png")]) == 0
    base, ttt = json.loads(base_json.read_text()), json.loads(ttt_json.read_text())
    assert ttt["model"]["ttt_layers"] == len(TTT_LAYERS) and base["model"]["ttt_layers"] == 0
    assert ttt["model"]["source"]["checkpoint"] == checkpoint(walk)
    inner = ttt["ttt_inner_losses"]
    assert sorted(inner) == list(TTT_LAYERS)
    for layer in inner.values():
        assert len(layer["position"]) == len(layer["w0"]) == len(layer["before"]) == len(layer["after"]) > 1
        assert all(np.isfinite(layer["w0"] + layer["before"]))
        assert all(value is not None for value in layer["after"][:-1])  # the last mini-batch may not be complete
    assert (walk / "ttt_librilight.png").stat().st_size > 0

    comparison = walk / "librilight_cmp.json"
    assert compare_cli.main([str(base_json), str(ttt_json), "--labels", "base", "ttt", "--output",
                             str(comparison), "--plot", str(walk / "librilight_cmp.png")]) == 0
    result = json.loads(comparison.read_text())
    assert result["runs"] == ["base", "ttt"]
    loss = result["metrics"]["librilight_loss_16"]
    assert loss["values"] == pytest.approx([base["librilight_loss_16"], ttt["librilight_loss_16"]])
    assert loss["difference"][1] == pytest.approx(ttt["librilight_loss_16"] - base["librilight_loss_16"])
    low, high = loss["ci95"][1]
    assert low <= loss["difference"][1] <= high
    assert loss["pairing"] == [None, "paired"]


def test_paper_metrics_of_the_base_and_of_the_checkpoint_compared(walk: Path) -> None:
    outputs = {}
    for label, model in (("base", ["--hf-repo", str(walk / "base")]), ("ttt", ["--checkpoint", checkpoint(walk)])):
        outputs[label] = walk / f"{label}_paper.json"
        assert paper_metrics_cli.main([*model, "--swuggy-dir", str(SWUGGY), "--device", "cpu", "--quiet",
                                       "--cache-dir", str(walk / "codes"), "--output", str(outputs[label])]) == 0
    comparison = walk / "paper_cmp.json"
    assert compare_cli.main([str(outputs["base"]), str(outputs["ttt"]), "--labels", "base", "ttt",
                             "--output", str(comparison)]) == 0
    result = json.loads(comparison.read_text())
    base, ttt = (json.loads(path.read_text()) for path in outputs.values())
    accuracy = result["metrics"]["swuggy_accuracy"]
    assert accuracy["values"] == pytest.approx([base["swuggy_accuracy"], ttt["swuggy_accuracy"]])
    low, high = accuracy["ci95"][1]
    assert low <= accuracy["difference"][1] <= high
    assert accuracy["pairing"] == [None, "paired"]


def test_a_spoken_reply_of_the_checkpoint_with_its_talk_report(walk: Path, capsys: pytest.CaptureFixture) -> None:
    audio = walk / "question.wav"
    t = np.arange(int(24000 * 1.2)) / 24000
    soundfile.write(audio, 0.3 * np.sin(2 * np.pi * 200 * t), 24000)
    report = walk / "talk.json"
    assert run_inference.main(["--checkpoint", checkpoint(walk), "--device", "cpu", "--batch-size", "2",
                               "--report", str(report), "--report-bin-seconds", "0.4", str(audio),
                               str(walk / "reply.wav")]) == 0
    data = json.loads(report.read_text())
    assert len(data["items"]) == 2
    for item in data["items"]:
        assert len(item["seconds"]) == 3
        assert all(0.0 <= value <= 1.0 for value in item["pad_fraction"] + item["silence_fraction"])
    assert soundfile.info(str(walk / "reply-0.wav")).duration == pytest.approx(1.2, abs=0.08)
    assert capsys.readouterr().err.count("talk of item") == 2
