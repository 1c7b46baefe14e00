"""`moshi.conditioners`: upstream's condition data types work; conditioning modules refuse to be built."""

from __future__ import annotations

import pytest
import torch

import moshi
from moshi.conditioners import (
    ConditionAttributes,
    ConditionFuser,
    ConditionProvider,
    TensorCondition,
    dropout_all_conditions,
)
from moshi.conditioners.tensors import TensorConditioner
from moshi.conditioners.text import LUTConditioner


def test_tensor_conditions_batch_with_padding_masks() -> None:
    short = TensorCondition.from_tensor(torch.ones(1, 2, 3))
    long = TensorCondition.from_tensor(torch.full((1, 4, 3), 2.0))
    batch = TensorCondition.cat([short, long])
    assert batch.tensor.shape == (2, 4, 3)
    assert batch.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert (batch.tensor[0, 2:] == 0).all() and (batch.tensor[1] == 2).all()


def test_dropping_all_conditions_leaves_the_originals() -> None:
    condition = TensorCondition.from_tensor(torch.ones(1, 2, 3))
    attributes = ConditionAttributes(text={"speaker": "alice"}, tensor={"style": condition})
    (dropped,) = dropout_all_conditions([attributes])
    assert dropped.text == {"speaker": None}
    assert not dropped.tensor["style"].mask.any() and not dropped.tensor["style"].tensor.any()
    assert attributes.text == {"speaker": "alice"} and attributes.tensor["style"] is condition
    assert list(attributes.tensor_attributes) == ["style"] and list(attributes.text_attributes) == ["speaker"]


@pytest.mark.parametrize("module", [ConditionProvider, ConditionFuser, LUTConditioner, TensorConditioner])
def test_conditioning_modules_refuse_with_one_sentence(module: type) -> None:
    with pytest.raises(NotImplementedError, match="conditioned Moshi models are not supported"):
        module({})


def test_the_package_is_reachable_from_moshi() -> None:
    assert moshi.conditioners.ConditionAttributes is ConditionAttributes
