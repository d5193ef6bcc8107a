"""A fifth method, defined outside the package: what the driver tests run.

It needs no model (seed rows pass through a real distilabel pipeline, tagged with the
round that published them), so the driver's own behaviour -- states, the run record,
resume, overwrite, the card frame -- is tested in seconds. It is also the worked
example of docs/architecture.md: a recipe model, a pipeline builder, a card section.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from typing import Any

from datasets import Features, Value
from distilabel.pipeline import Pipeline
from distilabel.steps import StepInput
from pydantic import Field

from synthalign.cards.base import CardContent
from synthalign.contract import Method, Progress, State
from synthalign.recipes import Recipe, SeedData
from synthalign.steps.publish import PublishConfig, drop_features, dropped, kept
from synthalign.steps.seeds import LoadSeeds


class EchoRecipe(Recipe):
    name: str = "echo"
    seed_data: SeedData
    rounds: int = Field(default=2, ge=1)
    min_chars: int = Field(default=0, ge=0, description="rows shorter than this are dropped")


class PublishRows(PublishConfig):
    """Tags each seed row with its round; drops rows shorter than ``min_chars``."""

    round: int = 1
    previous: str | None = None
    min_chars: int = 0

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["instruction", "round", "previous", "kept", "drop_stage", "drop_reason"]

    def features(self) -> Features:
        return Features(
            {
                "instruction": Value("string"),
                "round": Value("int64"),
                "previous": Value("string"),
                **drop_features(),
            }
        )

    def process(self, inputs: StepInput) -> Any:
        rows = []
        for row in inputs:
            short = len(row["instruction"]) < self.min_chars
            fate = dropped("length", "too short") if short else kept()
            rows.append(
                {
                    "instruction": row["instruction"],
                    "round": self.round,
                    "previous": self.previous,
                    **fate,
                }
            )
        yield rows


def build_pipeline(recipe: EchoRecipe, state: State) -> Pipeline:
    with Pipeline(
        name=f"{recipe.name}-round-{state.iteration}", cache_dir=recipe.cache_dir
    ) as pipeline:
        load = LoadSeeds(name="load_seeds", source=recipe.seed_data.source, columns=["instruction"])
        rows = PublishRows(
            name="rows",
            round=state.iteration,
            previous=state.inputs.get("previous"),
            min_chars=recipe.min_chars,
        )
        load >> rows
    return pipeline


def card_section(datasets: dict[str, Any], info: dict[str, Any]) -> CardContent:
    rows = datasets.get("rows")
    return CardContent(
        metadata={"license": "apache-2.0"}, body=f"# echo\n\n{len(rows or [])} rows.\n"
    )


def first_state(recipe: EchoRecipe, loop: bool) -> State:
    return State(iteration=1, stage="echo", folder="round-1" if loop else ".")


def next_state(recipe: EchoRecipe, state: State, progress: Progress) -> State:
    r = state.iteration + 1
    return State(
        iteration=r,
        stage="echo",
        folder=f"round-{r}",
        inputs={"previous": progress.folder(state.key)},
    )


METHOD = Method(
    name="echo",
    recipe_cls=EchoRecipe,
    build_pipeline=build_pipeline,
    configs=lambda recipe, state: ["rows"],
    default_config="rows",
    card_section=card_section,
    first_state=first_state,
    next_state=next_state,
    loops=True,
    default_iterations=lambda recipe: recipe.rounds,
    funnel_configs=("rows",),
)
