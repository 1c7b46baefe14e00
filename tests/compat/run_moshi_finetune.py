"""Run kyutai-labs/moshi-finetune's own modules against this package and compare with upstream 0.2.13's numbers.

    MOSHI_FINETUNE_SRC=/path/to/moshi-finetune python tests/compat/run_moshi_finetune.py

The interpreter needs moshi-finetune's import-time dependencies (`simple-parsing`, and for `--import-all`: `fire`,
`sphn`, `tensorboard`); this repository's `moshi` is put first on the path. For each case (LoRA, LoRA with gradient
checkpointing, full fine-tuning) it runs `finetune_client.run_case`, prints the largest difference to the fixtures per
group and exits 1 when one exceeds the tolerance. `--import-all` first imports every module of moshi-finetune, its
`train.py` included.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import finetune_client
import finetune_fixtures
import finetune_scenario as scenario


def import_every_module() -> list[str]:
    """Import `train` and every `finetune.*` module of the checkout; returns their names."""
    finetune_client.import_moshi_finetune()
    import finetune

    names = ["train"] + [info.name for info in pkgutil.walk_packages(finetune.__path__, "finetune.")]
    for name in names:
        importlib.import_module(name)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-all", action="store_true", help="also import every moshi-finetune module")
    args = parser.parse_args()
    import moshi

    print(f"moshi {moshi.__version__} from {Path(moshi.__file__).parent}")
    if args.import_all:
        names = import_every_module()
        print(f"imported {len(names)} moshi-finetune modules: {', '.join(names)}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in scenario.CASES:
            outputs = finetune_client.run_case(case, Path(tmp) / case)
            groups = finetune_fixtures.max_differences(outputs, finetune_fixtures.load_fixture(case))
            worst = max(worst, *groups.values())
            cells = ", ".join(f"{group} {value:.2e}" for group, value in groups.items())
            losses = f"text loss {outputs['loss.text'].item():.6f}  audio loss {outputs['loss.audio'].item():.6f}"
            print(f"{case:8s} {losses}  max |ours - upstream|: {cells}")
    verdict = "OK" if worst <= scenario.TOLERANCE else "FAILED"
    print(f"{verdict}: largest difference {worst:.2e} (tolerance {scenario.TOLERANCE:.0e})")
    return 0 if worst <= scenario.TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
