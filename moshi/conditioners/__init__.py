"""Conditioning inputs with upstream's names.

This fork runs unconditioned Moshi models only: `ConditionAttributes`, `TensorCondition` and `ConditionType` are the
plain data types training code passes around (moshi-finetune's batches carry `ConditionAttributes | None`), and
`LMModel.condition_provider` / `LMModel.fuser` are None. Building a conditioner, a `ConditionProvider` or a
`ConditionFuser` raises `NotImplementedError`.
"""

from .base import (
    BaseConditioner,
    ConditionAttributes,
    ConditionFuser,
    ConditionProvider,
    ConditionTensors,
    ConditionType,
    TensorCondition,
    dropout_all_conditions,
)

__all__ = [
    "BaseConditioner",
    "ConditionAttributes",
    "ConditionFuser",
    "ConditionProvider",
    "ConditionTensors",
    "ConditionType",
    "TensorCondition",
    "dropout_all_conditions",
]
