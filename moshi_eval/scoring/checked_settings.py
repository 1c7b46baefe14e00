"""The base of every evaluation's settings dataclass: checked when built and when copied with changes."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from typing_extensions import Self

Settings = TypeVar("Settings", bound="CheckedSettings")


class CheckedSettings:
    """Mixed into a settings dataclass: `validate()` runs when it is built and when `replace` copies it; `to_dict()`
    lists every field (as the results record them)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
