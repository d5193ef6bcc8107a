"""A method for the run-safety tests: real distilabel workers that can be slowed, hung
or killed, and rounds that read the previous round's published rows by path.

- ``delay``: seconds each batch of the ``work`` step takes (a signal or a ``kill -9``
  lands mid-run); the worker writes its pid to ``<marker_dir>/round-<r>/work.pid`` and
  every finished batch to ``<marker_dir>/round-<r>/batch-<n>``, so a test acts on what
  happened, never on a sleep;
- ``load_delay``: seconds the ``work`` step takes to load (a stop while models load);
- ``hang_at_batch``: the ``work`` step never returns from that batch (a stall);
- round ``r > 1`` reads round ``r - 1``'s published parquet file (``State.inputs``),
  so a row that crossed from another run or another folder would show.

No model: every case takes seconds.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from datasets import Features, Value
from distilabel.pipeline import Pipeline
from distilabel.steps import Step, StepInput
from echo_method import METHOD as ECHO
from pydantic import Field

from synthalign.cards.base import CardContent
from synthalign.contract import State
from synthalign.recipes import Recipe, SeedData
from synthalign.steps.publish import PublishConfig, drop_features, dropped, kept
from synthalign.steps.seeds import LoadSeeds


class SafetySeeds(SeedData):
    instruction_column: str = "instruction"


class SafetyRecipe(Recipe):
    name: str = "safety"
    seed_data: SafetySeeds
    rounds: int = Field(default=2, ge=1)
    batch_size: int = Field(default=2, ge=1)
    delay: float = Field(default=0.0, ge=0)
    load_delay: float = Field(default=0.0, ge=0, description="seconds the work step takes to load")
    hang_at_batch: int | None = None
    fail_every: int = Field(
        default=0, ge=0, description="every n-th row records a model failure (0: none)"
    )
    marker_dir: str | None = None


class Work(Step):
    """Passes rows through slowly, noting its pid and each finished batch."""

    delay: float = 0.0
    load_delay: float = 0.0
    hang_at_batch: int | None = None
    marker_dir: str | None = None

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["instruction"]

    def load(self) -> None:
        super().load()
        self._batches = 0
        if self.marker_dir:
            Path(self.marker_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.marker_dir) / "work.pid").write_text(str(os.getpid()))
        time.sleep(self.load_delay)  # a model that takes its time to load

    def process(self, inputs: StepInput) -> Any:
        if self.hang_at_batch is not None and self._batches == self.hang_at_batch:
            while True:
                time.sleep(1)
        time.sleep(self.delay)
        if self.marker_dir:
            (Path(self.marker_dir) / f"batch-{self._batches}").touch()
        self._batches += 1
        yield [dict(row) for row in inputs]


class PublishRows(PublishConfig):
    """Tags each row with its round; every ``fail_every``-th row records a model failure."""

    round: int = 1
    fail_every: int = 0

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["instruction", "round", "kept", "drop_stage", "drop_reason"]

    def features(self) -> Features:
        return Features(
            {"instruction": Value("string"), "round": Value("int64"), **drop_features()}
        )

    def process(self, inputs: StepInput) -> Any:
        rows = []
        for row in inputs:
            failed = self.fail_every and sum(map(ord, row["instruction"])) % self.fail_every == 0
            fate = (
                dropped("answer", "no output (the engine failed: see the log)")
                if failed
                else kept()
            )
            rows.append({"instruction": row["instruction"], "round": self.round, **fate})
        yield rows


def _source(recipe: SafetyRecipe, state: State) -> str:
    previous = state.inputs.get("previous")
    if previous is None:
        return recipe.seed_data.source
    return str(next((Path(previous) / "data" / "rows").glob("*.parquet")))


def build_pipeline(recipe: SafetyRecipe, state: State) -> Pipeline:
    with Pipeline(
        name=f"{recipe.name}-round-{state.iteration}", cache_dir=recipe.cache_dir
    ) as pipeline:
        load = LoadSeeds(
            name="load_seeds",
            source=_source(recipe, state),
            columns=["instruction"],
            batch_size=recipe.batch_size,
        )
        work = Work(
            name="work",
            delay=recipe.delay,
            load_delay=recipe.load_delay,
            hang_at_batch=recipe.hang_at_batch,
            marker_dir=f"{recipe.marker_dir}/round-{state.iteration}"
            if recipe.marker_dir
            else None,
            input_batch_size=recipe.batch_size,
        )
        rows = PublishRows(name="rows", round=state.iteration, fail_every=recipe.fail_every)
        load >> work >> rows
    return pipeline


def card_section(datasets: dict[str, Any], info: dict[str, Any]) -> CardContent:
    return CardContent(metadata={"license": "apache-2.0"}, body="# safety\n")


# states, loop and funnel as the echo method's: only the recipe and pipeline differ
METHOD = replace(
    ECHO,
    name="safety",
    recipe_cls=SafetyRecipe,
    build_pipeline=build_pipeline,
    card_section=card_section,
)
