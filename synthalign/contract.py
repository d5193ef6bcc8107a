"""The method contract: what a method module declares, and nothing it has to run.

A method (``pipelines/<name>.py``) exports ``METHOD = Method(...)``. It says how to
read its recipe, which distilabel pipeline one state of the run is, which leaf steps
of that pipeline are the published configs, what its card adds, and -- for methods
that iterate (GRA rounds, SynPO iterations) -- which state follows a finished one and
which models to train in between. Everything around that (preflight, caching,
resume, writing, the card frame, pushing, the loop itself) belongs to the driver,
:mod:`synthalign.run`, once for every method.

A run is a sequence of :class:`State` s. ``generate`` runs the first state only;
``loop --iterations N`` runs states until ``next_state`` returns ``None`` or a state
of iteration ``N + 1`` comes up. Each state runs one pipeline and writes one Hub
folder (``State.folder``, relative to the run's output), then trains the models its
``train`` jobs name; the driver records each finished state, so a rerun resumes
after the last one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthalign.errors import RecipeError

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.pipeline import Pipeline

    from synthalign.cards.base import CardContent
    from synthalign.recipes import Recipe

__all__ = ["METHOD_MODULES", "Method", "Progress", "State", "TrainJob", "get_method"]

METHOD_MODULES = {
    "condor": "synthalign.pipelines.condor",
    "gra": "synthalign.pipelines.gra",
    "synpo": "synthalign.pipelines.synpo",
    "rdpo": "synthalign.pipelines.rdpo",
}


@dataclass(frozen=True)
class TrainJob:
    """One model the driver trains after a state's folder is written.

    ``recipe`` holds the trainer's recipe keys except the four the driver fills in:
    ``model``, ``dataset`` (the state's folder), ``dataset_config`` and ``output_dir``
    (``output``, relative to the run's output folder). A job whose config came out
    empty is skipped, and :meth:`Progress.model` keeps answering the earlier model.
    """

    kind: str
    name: str
    model: str
    config: str
    output: str
    recipe: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class State:
    """One pipeline run of a method: which iteration, which stage, what it reads.

    ``inputs`` maps names the pipeline builder understands to earlier outputs (Hub
    folders, model folders) as absolute paths, so a pipeline reads exactly the files
    an earlier state wrote, never through a cache keyed by a folder name.
    """

    iteration: int = 1
    stage: str = "main"
    folder: str = "."
    inputs: Mapping[str, str] = field(default_factory=dict)
    train: tuple[TrainJob, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The name the run record knows this state by."""
        return f"{self.iteration}:{self.stage}"


class Progress:
    """What earlier states of this run produced: folders, trained models, counts.

    ``next_state`` reads it to wire the next pipeline to the outputs it needs.
    """

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self._states = states

    def record(self, key: str) -> dict[str, Any] | None:
        return next((s for s in self._states if s["key"] == key), None)

    def folder(self, key: str) -> str | None:
        found = self.record(key)
        path = found.get("path") if found else None
        return os.path.expanduser(path) if path else None  # a published record writes ~

    def model(self, name: str) -> str | None:
        """The path of a model trained by a :class:`TrainJob` named ``name``."""
        for state in reversed(self._states):
            if name in (state.get("models") or {}):
                return os.path.expanduser(state["models"][name])
        return None

    def counts(self, key: str) -> dict[str, int]:
        found = self.record(key)
        return dict(found.get("counts") or {}) if found else {}

    @property
    def states(self) -> list[dict[str, Any]]:
        return list(self._states)


@dataclass(frozen=True)
class Method:
    """What a method module declares (see the module docstring).

    - ``build_pipeline(recipe, state)``: the distilabel pipeline of one state; its leaf
      steps named in ``configs(recipe, state)`` are the published configs, in order.
    - ``default_config``: the config ``load_dataset(DIR)`` gives when it has rows.
    - ``card_section(datasets, info)``: the method's part of the card; the driver adds
      the frame (front matter, funnel, reproducibility, usage snippets).
    - ``first_state(recipe, loop)`` / ``next_state(recipe, state, progress)``: the
      run's states (default: one state, no loop).
    - ``override_llms(recipe, specs)``: what ``--llm`` means for this method.
    - ``preflight(recipe)``: method checks that need no model (seeds, trees, pools).
    - ``sequential(recipe)``: load one step at a time (in-process GPU engines).
    - ``funnel_configs``: the configs that together hold every row the run considered,
      each with ``kept`` / ``drop_stage`` / ``drop_reason``; the card's funnel counts them.
    - ``record_fields(datasets)``: facts of one state that the pipeline computed over its
      published configs (rDPO's tau temperature), added to ``synthalign.json`` and to
      the card's ``info``, so a reader need not recompute them from the rows.
    """

    name: str
    recipe_cls: type[Recipe]
    build_pipeline: Callable[[Any, State], Pipeline]
    configs: Callable[[Any, State], list[str]]
    default_config: str
    card_section: Callable[[dict[str, Dataset], dict[str, Any]], CardContent]
    override_llms: Callable[[Any, list[str]], Any] | None = None
    preflight: Callable[[Any], None] | None = None
    first_state: Callable[[Any, bool], State] = lambda recipe, loop: State()
    next_state: Callable[[Any, State, Progress], State | None] | None = None
    sequential: Callable[[Any], bool] = lambda recipe: False
    funnel_configs: tuple[str, ...] = ()
    loops: bool = False
    default_iterations: Callable[[Any], int] = lambda recipe: 1
    record_fields: Callable[[dict[str, Dataset]], dict[str, Any]] | None = None


def get_method(name: str) -> Method:
    """The ``METHOD`` of a method module, by name."""
    if name not in METHOD_MODULES:
        raise RecipeError(f"unknown method {name!r}: choose one of {', '.join(METHOD_MODULES)}")
    module = importlib.import_module(METHOD_MODULES[name])
    return module.METHOD
