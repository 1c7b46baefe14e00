"""Generate `tests/fixtures/compat/finetune_<case>.safetensors` by running moshi-finetune's code on upstream 0.2.13.

`tests/fixtures/regenerate.py compat` runs it in an environment where `import moshi` gives the PyPI wheel
`moshi==0.2.13` (not this fork), with simple-parsing and MOSHI_FINETUNE_SRC naming a kyutai-labs/moshi-finetune tree:

    MOSHI_FINETUNE_SRC=/path/to/moshi-finetune /tmp/upstream_venv/bin/python tests/compat/gen_fixtures.py [OUT_DIR]

(OUT_DIR defaults to `tests/fixtures/compat`.) Each fixture holds `loss.text`, `loss.audio` `[1]`, `grad.<parameter>`
for every trainable parameter, `forward.mask` / `forward.text_mask` and `reload.<lora|merged>.<logits|text_logits>`;
`meta.json` records the versions and the scenario constants."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import finetune_client
import finetune_scenario as scenario
import safetensors.torch
import torch


def _drop_editable_moshi_finders() -> None:
    """An editable install of this fork hooks `import moshi` ahead of site-packages; the generator needs upstream."""
    sys.meta_path[:] = [
        finder for finder in sys.meta_path if "__editable__" not in type(finder).__module__ or "moshi" not in
        type(finder).__module__
    ]


def _require_upstream_moshi() -> str:
    _drop_editable_moshi_finders()
    import moshi

    if moshi.__version__ != "0.2.13":
        raise SystemExit(f"error: expected upstream moshi 0.2.13, imported {moshi.__version__} from {moshi.__file__}")
    return moshi.__version__


def _moshi_finetune_commit() -> str | None:
    head = Path(os.environ["MOSHI_FINETUNE_SRC"]) / "COMMIT"
    return head.read_text().strip() if head.is_file() else None


def _max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    if first.keys() != second.keys():
        raise SystemExit(f"error: the two runs returned different keys: {sorted(first.keys() ^ second.keys())}")
    return max(float((first[key].double() - second[key].double()).nan_to_num().abs().max()) for key in first)


def main(out: Path) -> None:
    version = _require_upstream_moshi()
    torch.use_deterministic_algorithms(True)
    sizes, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in scenario.CASES:
            results[case] = outputs = finetune_client.run_case(case, Path(tmp) / case)
            print(f"{case}: text loss {outputs['loss.text'].item():.6f}, audio loss {outputs['loss.audio'].item():.6f},"
                  f" {sum(key.startswith('grad.') for key in outputs)} gradients")
    checkpointing_difference = _max_difference(results["lora"], results["lora_gc"])
    if checkpointing_difference > 1e-6:
        raise SystemExit(f"error: upstream's LoRA outputs change with checkpointing: {checkpointing_difference}")
    for case in ("lora", "full"):
        path = out / scenario.fixture_path(case).name
        out.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file({key: value.contiguous() for key, value in results[case].items()}, path)
        sizes[path.name] = path.stat().st_size
    meta = {
        "generator": "tests/compat/gen_fixtures.py",
        "upstream_moshi": version,
        "torch": torch.__version__,
        "moshi_finetune_commit": _moshi_finetune_commit(),
        "batch_size": scenario.BATCH_SIZE,
        "num_frames": scenario.NUM_FRAMES,
        "lora_rank": scenario.LORA_RANK,
        "lora_scaling": scenario.LORA_SCALING,
        "text_padding_weight": scenario.TEXT_PADDING_WEIGHT,
        "first_codebook_weight_multiplier": scenario.FIRST_CODEBOOK_WEIGHT_MULTIPLIER,
        "sgd_learning_rate": scenario.SGD_LEARNING_RATE,
        "lora_gc_max_abs_difference_to_lora": checkpointing_difference,
        "fixture_bytes": sizes,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else scenario.FIXTURES_DIR)
