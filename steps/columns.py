"""Columns declared as class attributes, for steps whose columns never change.

distilabel asks every step for its columns through the ``inputs`` and ``outputs``
properties. Most synthalign steps read and write the same columns whatever their
settings, so they declare them once, beside ``template``, as ``input_columns`` and
``output_columns``; a step whose columns depend on its settings overrides the property.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from distilabel.typing import StepColumns

__all__ = ["FixedColumns"]


class FixedColumns:
    """Mixin placed before the distilabel step class: ``class S(FixedColumns, Step)``."""

    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ()

    @property
    def inputs(self) -> StepColumns:
        return list(self.input_columns)

    @property
    def outputs(self) -> StepColumns:
        return list(self.output_columns)
