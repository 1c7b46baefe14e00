"""Condition data types (kept) and the conditioning modules (refused: this fork has no conditioned models)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

TextCondition = str | None
"""A text condition: a string, or None when absent."""

CONDITIONING_UNSUPPORTED = "conditioned Moshi models are not supported by this fork (unconditioned models only)"


def refuse_conditioning(what: str) -> None:
    """Raise the one error every conditioning module gives when built."""
    raise NotImplementedError(f"{what}: {CONDITIONING_UNSUPPORTED}")


class ConditionType(NamedTuple):
    """A conditioner's output: `condition` `[B, T, D]` and the mask of its valid positions `[B, T]`."""

    condition: torch.Tensor
    mask: torch.Tensor


ConditionTensors = dict[str, ConditionType]
"""Prepared conditions by name, as `LMModel.forward(codes, condition_tensors)` takes them (always None here)."""


@dataclasses.dataclass(frozen=True)
class TensorCondition:
    """A raw tensor condition: `tensor` `[B | 1, T, D]` and `mask` `[B | 1, T]`."""

    tensor: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def from_tensor(tensor: torch.Tensor) -> TensorCondition:
        """All positions of `tensor` `[B, T, D]` valid."""
        return TensorCondition(tensor, torch.ones(tensor.shape[:2], dtype=torch.bool, device=tensor.device))

    @staticmethod
    def cat(conditions: Sequence[TensorCondition]) -> TensorCondition:
        """Batch single-item conditions `[1, T_i, D]` into `[N, max T_i, D]`, zero-padded and masked at the end."""
        if not conditions:
            raise ValueError("TensorCondition.cat needs at least one condition")
        if any(condition.tensor.shape[0] != 1 for condition in conditions):
            raise ValueError("TensorCondition.cat batches single-item conditions ([1, T, D] each)")
        first = conditions[0].tensor
        length = max(condition.tensor.shape[1] for condition in conditions)
        tensor = first.new_zeros(len(conditions), length, first.shape[-1])
        mask = torch.zeros(len(conditions), length, dtype=torch.bool, device=first.device)
        for index, condition in enumerate(conditions):
            tensor[index, : condition.tensor.shape[1]] = condition.tensor[0]
            mask[index, : condition.mask.shape[1]] = condition.mask[0]
        return TensorCondition(tensor, mask)


@dataclasses.dataclass
class ConditionAttributes:
    """The conditions of one example: `text` conditions by name (None when absent) and `tensor` conditions by name."""

    text: dict[str, TextCondition] = dataclasses.field(default_factory=dict)
    tensor: dict[str, TensorCondition] = dataclasses.field(default_factory=dict)

    @property
    def text_attributes(self) -> Iterable[str]:
        return self.text.keys()

    @property
    def tensor_attributes(self) -> Iterable[str]:
        return self.tensor.keys()

    @staticmethod
    def condition_types() -> frozenset[str]:
        """The attribute names that hold conditions."""
        return frozenset(("text", "tensor"))

    def copy(self) -> ConditionAttributes:
        """A copy whose dicts can be changed without touching this one."""
        return ConditionAttributes(dict(self.text), dict(self.tensor))


def dropout_tensor(condition: TensorCondition) -> TensorCondition:
    """The same condition with zero values and nothing valid."""
    return TensorCondition(torch.zeros_like(condition.tensor), torch.zeros_like(condition.mask))


def dropout_condition_(sample: ConditionAttributes, condition_type: str, condition: str) -> None:
    """Drop one condition of `sample` in place: a text becomes None, a tensor becomes all-masked zeros."""
    if condition_type not in ConditionAttributes.condition_types():
        raise ValueError(f"condition type must be one of {sorted(ConditionAttributes.condition_types())}, "
                         f"got {condition_type!r}")
    conditions = getattr(sample, condition_type)
    if condition not in conditions:
        raise ValueError(f"no {condition_type} condition named {condition!r}; have {sorted(conditions)}")
    conditions[condition] = None if condition_type == "text" else dropout_tensor(conditions[condition])


def dropout_all_conditions(attributes: Sequence[ConditionAttributes]) -> list[ConditionAttributes]:
    """Copies of `attributes` with every condition dropped (the unconditional branch of classifier-free guidance)."""
    dropped = [attribute.copy() for attribute in attributes]
    for attribute in dropped:
        for condition_type in ConditionAttributes.condition_types():
            for condition in list(getattr(attribute, condition_type)):
                dropout_condition_(attribute, condition_type, condition)
    return dropped


class BaseConditioner(nn.Module):
    """Upstream's base of the conditioners; refused here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        refuse_conditioning(type(self).__name__)


class ConditionProvider(nn.Module):
    """Upstream's bundle of conditioners; refused here (`LMModel.condition_provider` is None)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        refuse_conditioning("ConditionProvider")


class ConditionFuser(nn.Module):
    """Upstream's combination of conditions with the model input; refused here (`LMModel.fuser` is None)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        refuse_conditioning("ConditionFuser")
