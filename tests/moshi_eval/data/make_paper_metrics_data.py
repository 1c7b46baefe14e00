"""Regenerate the small spoken benchmark sets under `paper_metrics/` with espeak-ng (Debian package `espeak-ng`).

    python tests/moshi_eval/data/make_paper_metrics_data.py

Four folders in the layouts `moshi_eval.paper_metrics` reads, each gold file with its columns in a shuffled order:
`lexical/dev` (sWUGGY: words and non-words, two voices), `syntactic/dev` (sBLIMP: grammatical and ungrammatical
sentences, two types), `sstory` and `tstory` (StoryCloze: `<n>_<uuid>_correct.wav` / `_incorrect.wav`, short stories).
Speech is synthesised, resampled with soxr and written as 16-bit WAV: 16 kHz as in ZeroSpeech, the stories at 8 kHz to
keep the files small. The output is deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parent / "paper_metrics"
VOICES = {"Alex": "en-us", "Bea": "en-gb+f3"}
WORDS = [  # (id, word, non-words)
    ("1", "brick", ["blick", "bnick"]),
    ("2", "garden", ["gardel"]),
    ("3", "window", ["windoke"]),
]
SENTENCES = [  # (id, type, subtype, grammatical, ungrammatical)
    ("1", "anaphor_agreement", "anaphor_gender_agreement", "She saw herself.", "She saw himself."),
    ("2", "determiner_noun_agreement", "determiner_noun_agreement_1", "This dog runs.", "These dog runs."),
    ("3", "determiner_noun_agreement", "determiner_noun_agreement_2", "Those cats sleep.", "That cats sleep."),
]
STORIES = {  # folder: [(number, uuid, story, real ending, wrong ending)]
    "sstory": [
        ("1", "0a1b2c3d-0001", "Tom was hungry.", "He ate some bread.", "He sold his car."),
        ("2", "0a1b2c3d-0002", "It rained all day.", "We stayed inside.", "The sun burned us."),
        ("3", "0a1b2c3d-0003", "Ann lost her keys.", "She looked for them.", "She sang a song."),
    ],
    "tstory": [
        ("1", "9f8e7d6c-0001", "Sam planted seeds.", "Flowers grew in spring.", "Snow fell in his cup."),
        ("2", "9f8e7d6c-0002", "The baby cried.", "Her mother fed her.", "The train left early."),
    ],
}
LEXICAL_COLUMNS = ["word", "correct", "voice", "filename", "id", "frequency"]
SYNTACTIC_COLUMNS = ["transcription", "voice", "subtype", "correct", "filename", "type", "id"]


def speak(text: str, voice: str, rate: int) -> np.ndarray:
    """espeak-ng's rendering of `text`, resampled to `rate` Hz, float32 mono."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "190", "-w", str(path), text], check=True)
        audio, source_rate = soundfile.read(str(path), dtype="float32")
    return soxr.resample(audio, source_rate, rate, quality="HQ").astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, rate, subtype="PCM_16")


def write_gold(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def make_lexical(folder: Path) -> None:
    rows = []
    for voice_name, voice in VOICES.items():
        for item, word, non_words in WORDS:
            for index, text in enumerate([word, *non_words]):
                name = f"w{item}_{voice_name.lower()}_{index}"
                write_wav(folder / f"{name}.wav", speak(text, voice, 16000), 16000)
                rows.append({"id": item, "filename": name, "voice": voice_name, "frequency": "oov" if index else "12",
                             "word": text, "correct": "1" if index == 0 else "0"})
    write_gold(folder / "gold.csv", LEXICAL_COLUMNS, rows)


def make_syntactic(folder: Path) -> None:
    rows = []
    for voice_name, voice in VOICES.items():
        for item, type_name, subtype, good, bad in SENTENCES:
            for correct, text in (("1", good), ("0", bad)):
                name = f"s{item}_{voice_name.lower()}_{correct}"
                write_wav(folder / f"{name}.wav", speak(text, voice, 16000), 16000)
                rows.append({"id": item, "filename": name, "type": type_name, "subtype": subtype, "correct": correct,
                             "voice": voice_name, "transcription": text})
    write_gold(folder / "gold.csv", SYNTACTIC_COLUMNS, rows)


def make_stories(folder: Path, stories: list[tuple[str, str, str, str, str]]) -> None:
    for number, uuid, story, real, wrong in stories:
        for ending, text in (("correct", real), ("incorrect", wrong)):
            write_wav(folder / f"{number}_{uuid}_{ending}.wav", speak(f"{story} {text}", "en-us", 8000), 8000)


def main() -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    if ROOT.exists():
        shutil.rmtree(ROOT)
    make_lexical(ROOT / "lexical" / "dev")
    make_syntactic(ROOT / "syntactic" / "dev")
    for name, stories in STORIES.items():
        make_stories(ROOT / name, stories)
    total = sum(path.stat().st_size for path in ROOT.rglob("*") if path.is_file())
    print(f"wrote {ROOT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
