"""ZeroSpeech 2021 submission files for the official evaluator: `lexical/<split>.txt` (sWUGGY) and
`syntactic/<split>.txt` (sBLIMP), one `<filename> <score>` line per file, the file name without its extension and the
score the run's normalisation compares (higher: more probable). The split is the benchmark folder's name (`dev` or
`test`, as in the sLM21 layout); the evaluator also wants every file of the split, so no `max_pairs` subset.
"""

from __future__ import annotations

from pathlib import Path

from moshi.utils.files import write_text_atomic

from .pairs import SPLITS
from .results import PaperMetricsResult

SUBMISSION_FOLDERS = {"swuggy": "lexical", "sblimp": "syntactic"}


def check_submission_splits(directories: dict[str, str]) -> None:
    """ValueError when a sWUGGY or sBLIMP folder (`{benchmark: folder}`) is not a `dev` or `test` split folder."""
    for name, directory in directories.items():
        if name in SUBMISSION_FOLDERS and Path(directory).name not in SPLITS:
            raise ValueError(f"{directory}: a ZeroSpeech submission needs the {name} folder to be the split folder "
                             "itself (.../dev or .../test)")


def write_submission(result: PaperMetricsResult, directory: str | Path) -> list[Path]:
    """Write the score files of the run's sWUGGY and sBLIMP; returns their paths."""
    written = []
    for benchmark in result.benchmarks:
        if benchmark.name not in SUBMISSION_FOLDERS or benchmark.split is None:
            continue
        lines = []
        for utterance in benchmark.utterances:
            score = result.scores[utterance.utterance_id].value(result.normalization)
            lines.append(f"{Path(utterance.file).stem} {score!r}\n")
        path = Path(directory) / SUBMISSION_FOLDERS[benchmark.name] / f"{benchmark.split}.txt"
        write_text_atomic(path, "".join(lines))
        written.append(path)
    return written
