"""Leaf steps that publish a config, and the one drop convention every method follows.

A published config is the output of a leaf step of the pipeline, never something code
assembles after the run: ``distilabel pipeline run --config DIR/pipeline.yaml`` then
reproduces every config the card lists. The leaf step also declares the config's
schema (:meth:`PublishConfig.features`), once, beside the code that makes the columns:
an all-``None`` column stays typed, a zero-row config keeps its columns, and runs
concatenate.

Every row a method considered says whether it was published and, if not, where and
why: ``kept`` (bool), ``drop_stage`` and ``drop_reason`` (strings, ``None`` when kept).
The card's funnel is built from those three columns alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distilabel.steps import Step

from synthalign.steps.columns import FixedColumns

if TYPE_CHECKING:
    from datasets import Features

__all__ = ["DROP_COLUMNS", "PublishConfig", "chat_feature", "drop_features", "dropped", "kept"]

DROP_COLUMNS: tuple[str, ...] = ("kept", "drop_stage", "drop_reason")


def kept() -> dict[str, Any]:
    """The drop columns of a published row."""
    return {"kept": True, "drop_stage": None, "drop_reason": None}


def dropped(stage: str, reason: str) -> dict[str, Any]:
    """The drop columns of a row that left at ``stage`` because of ``reason``."""
    return {"kept": False, "drop_stage": stage, "drop_reason": reason}


def drop_features() -> dict[str, Any]:
    from datasets import Value  # heavy: datasets

    return {"kept": Value("bool"), "drop_stage": Value("string"), "drop_reason": Value("string")}


def chat_feature() -> Any:
    """TRL's conversational column: a list of ``{role, content}`` messages."""
    from datasets import List, Value  # heavy: datasets

    return List({"role": Value("string"), "content": Value("string")})


class PublishConfig(FixedColumns, Step):
    """A leaf step whose rows are one published config, named after the step.

    Subclasses declare the schema in :meth:`features`; the driver casts the leaf's rows
    to it and writes a zero-row config with it when nothing reached the leaf.
    """

    def features(self) -> Features:
        raise NotImplementedError(f"{type(self).__name__} must declare the features of its config")
