"""Comparing outputs of the moshi-finetune scenario with the upstream 0.2.13 fixtures, key by key."""

from __future__ import annotations

from collections.abc import Mapping

import finetune_scenario as scenario
import torch
from safetensors.torch import load_file


def load_fixture(case: str) -> dict[str, torch.Tensor]:
    """Upstream's outputs for `case` (see `gen_fixtures.py` for the keys)."""
    return load_file(scenario.fixture_path(case))


def max_differences(outputs: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference per key group: `loss.text`, `loss.audio`, `grad` (over every parameter),
    `reload.lora`, `reload.merged`. NaN (masked logits) must sit at the same places; masks must be equal.

    Raises AssertionError naming the keys when the two sets of keys, a mask or a NaN pattern differ.
    """
    if outputs.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - outputs.keys()), sorted(outputs.keys() - expected.keys())
        raise AssertionError(f"outputs lack {missing} and have unexpected {extra}")
    groups: dict[str, float] = {}
    for key, want in expected.items():
        got = outputs[key].detach().to(want.dtype)
        if got.shape != want.shape:
            raise AssertionError(f"{key}: shape {list(got.shape)}, upstream {list(want.shape)}")
        if want.dtype == torch.bool:
            if not torch.equal(got, want):
                raise AssertionError(f"{key}: differs from upstream at {int((got != want).sum())} positions")
            continue
        if not torch.equal(got.isnan(), want.isnan()):
            raise AssertionError(f"{key}: NaN (masked) positions differ from upstream")
        difference = float((got.double() - want.double()).nan_to_num().abs().max())
        group = key.split(".")[0] if key.startswith("grad.") else ".".join(key.split(".")[:2])
        groups[group] = max(groups.get(group, 0.0), difference)
    return groups
