"""The run driver: one path from a recipe to published folders, for every method.

``synthalign generate`` and ``synthalign loop`` both come here. The driver

1. reads the recipe and applies ``--llm`` (the method says what it means);
2. checks everything that needs no model (specs, the method's own checks, the output
   folder, the Hub token) before anything loads;
3. opens the run record (:mod:`synthalign.record`), resuming a loop after its last
   finished state;
4. for each state (:class:`synthalign.contract.State`): builds the method's pipeline,
   runs it resumably (:mod:`synthalign.execute`), reads the configs from its leaf
   steps, frames the method's card, writes the Hub folder atomically, trains what the
   state asks for, records the state;
5. pushes the output folder when asked.

A method never runs anything itself: ``generate`` is the first state alone, ``loop``
follows ``next_state`` for the iterations asked.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthalign.accounting import priced, role_prices, summary_line
from synthalign.cards.frame import frame_card
from synthalign.cards.sections import trl_format
from synthalign.console import RunConsole, log_path
from synthalign.contract import METHOD_MODULES, Method, State, get_method
from synthalign.errors import OutputError, RecipeError, RunFailed
from synthalign.execute import leaf_datasets, pipeline_yaml_path, run_pipeline
from synthalign.hub import push_hub_folder, read_hub_folder, update_card, write_hub_folder
from synthalign.llms import check_spec
from synthalign.outcome import Funnel
from synthalign.preflight import preflight as run_checks
from synthalign.recipes import Recipe, load_recipe
from synthalign.record import RUN_RECORD, RunRecord
from synthalign.signals import critical, stop_guard
from synthalign.training_jobs import run_train_job

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["generate", "loop", "rewrite_card", "run"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ preflight


def prepare_recipe(method: Method, config: str | Path, llms: list[str] | None) -> Recipe:
    """The recipe as the run will use it: read, validated, ``--llm`` applied."""
    for spec in llms or []:
        check_spec(spec)
    recipe = load_recipe(config, method.recipe_cls)
    if llms:
        if method.override_llms is None:
            raise RecipeError(f"{method.name} takes its LLMs from the recipe only; drop --llm")
        recipe = method.override_llms(recipe, llms)
    role_prices(recipe)  # two prices for one model: refused before anything runs
    return recipe


def _is_synthalign_output(output: Path) -> bool:
    return (output / RUN_RECORD).is_file()


def check_output(output: Path, *, overwrite: bool, resumable: bool) -> bool:
    """Whether the run resumes in ``output``; refuses what it must not touch.

    A loop resumes in its own folder; ``generate`` writes a new one (its interrupted
    run resumes from the batch store, since its folder only appears when complete).
    """
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file, not a folder: choose a folder path")
    if not output.exists() or not any(output.iterdir()):
        return False
    if overwrite:
        return False
    if resumable and _is_synthalign_output(output):
        return True
    raise OutputError(
        f"output folder {output} already exists: pass --overwrite or choose another --output"
    )


def preflight(
    method: Method,
    recipe: Recipe,
    output: Path,
    *,
    overwrite: bool,
    resumable: bool,
    push_to_hub: str | None,
) -> bool:
    """Everything checkable without loading a model; returns whether the run resumes.

    Specs, the method's own checks, the output folder, then what every run needs
    (:mod:`synthalign.preflight`: every seed row, writable folders with room, servers
    and their keys, model folders, the repo id and token).
    """
    for spec in recipe.llm_specs():
        check_spec(spec)
    if method.preflight:
        method.preflight(recipe)
    resume = check_output(output, overwrite=overwrite, resumable=resumable)
    run_checks(recipe, output, push_to_hub)
    return resume


# ------------------------------------------------------------------ one state


def check_outcome(
    method: Method, recipe: Recipe, state: State, datasets: dict[str, Dataset], order: list[str]
) -> Funnel:
    """Refuse to publish a state whose default config is empty or whose rows failed past
    ``max_failed_fraction`` (one line with the funnel); warn about a partial failure."""
    funnel = Funnel.of(datasets, [c for c in method.funnel_configs if c in order])
    what = f"{method.name} {state.key}"
    nothing = "nothing was written or pushed: see the log for the failures, fix the cause and rerun"
    if method.default_config in order and not len(datasets.get(method.default_config, ())):
        counts = ", ".join(f"{name}: {len(datasets.get(name, ()))}" for name in order)
        raise RunFailed(
            f"{what}: the default config '{method.default_config}' came out empty "
            f"({funnel.line()}; {counts}); {nothing}"
        )
    if funnel.failed_fraction > recipe.max_failed_fraction:
        failed = sum(funnel.failed.values())
        raise RunFailed(
            f"{what}: {failed} of {funnel.considered} rows failed ({funnel.failed_fraction:.0%} > "
            f"max_failed_fraction {recipe.max_failed_fraction:g}; {funnel.line()}); {nothing}"
        )
    if funnel.lost:
        logger.warning(
            "%s: %d of %d rows published; lost per stage: %s",
            what,
            funnel.kept,
            funnel.considered,
            funnel.stages(),
        )
    return funnel


def choose_default(method: Method, datasets: dict[str, Dataset], order: list[str]) -> str | None:
    """The method's default config when it has rows, else the first training config with
    rows, else the first config with rows: ``load_dataset(DIR)`` never meets an empty one."""
    if len(datasets.get(method.default_config, ())):
        return method.default_config
    filled = [name for name in order if len(datasets.get(name, ()))]
    training = [name for name in filled if trl_format(datasets[name])]  # as the card's TRL lines
    return next(iter(training or filled), None)


def _clear(output: Path) -> None:
    """``--overwrite``: remove an earlier synthalign output (never anything else)."""
    if output.is_dir() and any(output.iterdir()):
        if not _is_synthalign_output(output):
            raise OutputError(
                f"{output} is not a synthalign output; refusing to delete it: "
                "choose another --output"
            )
        shutil.rmtree(output)


def make_card(
    method: Method, datasets: dict[str, Dataset], info: dict[str, Any], default: str | None
) -> Any:
    """The method's card section in the shared frame."""
    section = method.card_section(datasets, info)
    return frame_card(method.name, section, datasets, info, default, method.funnel_configs)


class Driver:
    """One run: the method, its recipe, the output folder and its record."""

    def __init__(
        self,
        method: Method,
        recipe: Recipe,
        output: Path,
        *,
        use_ray: bool,
        resume: bool,
        console: RunConsole | None = None,
        push_to_hub: str | None = None,
    ) -> None:
        self.method = method
        self.push_to_hub = push_to_hub
        self.recipe = recipe
        self.output = output
        self.use_ray = use_ray
        self.record = RunRecord.open(output, method, recipe, resume=resume)
        self.console = console
        self.usage: list[dict[str, Any]] = []  # this run's model calls, every state

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.line(text)
        else:
            logger.info(text)

    def run_state(self, state: State) -> None:
        """Pipeline -> configs -> card -> atomic folder -> training -> record."""
        target = (self.output / state.folder).absolute()
        if self.record.written(state) is None:
            self._publish(state, target)
        counts = self.record.written(state)["counts"]
        models = {}
        for job in state.train:
            if not counts.get(job.config):
                logger.info(
                    "%s: nothing to train %s on (config %r is empty); skipped",
                    state.key,
                    job.name,
                    job.config,
                )
                continue
            trained = run_train_job(
                job,
                dataset=target,
                root=self.output,
                seed=self.recipe.seed,
                stall_timeout=self.recipe.stall_timeout,
                console=self.console,
                label=f"[{state.key}]",
            )
            models[job.name] = trained["model"]
            self.say(
                f"[{state.key}] trained {job.name} ({job.kind}) -> {_shown(Path(trained['model']))}"
            )
        self.record.complete(state, models)
        self.record.save()

    def _publish(self, state: State, target: Path) -> None:
        pipeline = self.method.build_pipeline(self.recipe, state)
        monitor = self.console.pipeline(state.key, pipeline) if self.console else None
        ran = run_pipeline(
            pipeline,
            use_ray=self.use_ray,
            api_key=self.recipe.api_key,
            sequential=self.method.sequential(self.recipe),
            stall_timeout=self.recipe.stall_timeout,
            monitor=monitor,
            log_file=self.console.quiet_children if self.console else None,
        )
        usage = priced(ran.usage, role_prices(self.recipe))
        self.usage.extend(usage)
        order = self.method.configs(self.recipe, state)
        datasets = leaf_datasets(ran, order)
        counts = {name: len(data) for name, data in datasets.items()}
        check_outcome(self.method, self.recipe, state, datasets, order)
        default = choose_default(self.method, datasets, order)
        if default is None:
            raise RunFailed(
                f"{self.method.name} {state.key} produced no rows in any config ({counts}): "
                "nothing was written or pushed: see the log for the failures, "
                "fix the cause and rerun"
            )
        facts = self.method.record_fields(datasets) if self.method.record_fields else {}
        self.record.begin(state, target, counts, usage, facts)
        info = self.record.state_info(state, counts)
        info["folder"] = _relative(target)  # where the card's snippets point (never absolute)
        if self.push_to_hub and state.folder == ".":
            info["repo_id"] = self.push_to_hub
        card = make_card(self.method, datasets, info, default)
        with critical():  # a stop waits for the folder to be in place, whole
            write_hub_folder(
                target,
                datasets,
                card,
                pipeline_yaml=pipeline_yaml_path(ran),
                run_info=info,
                default_config=default,
                overwrite=True,
            )
        took = f" in {monitor.seconds():.1f} s" if monitor else ""
        rows = ", ".join(f"{k}: {v}" for k, v in counts.items())
        self.say(f"[{state.key}] pipeline done{took} -> {_shown(target)} ({rows})")
        self.record.save()  # a kill while training resumes at the training, not the pipeline

    def states(self, iterations: int, loop: bool) -> list[State]:
        """Run states in order until the method stops or iteration ``iterations`` ends."""
        ran: list[State] = []
        state: State | None = self.method.first_state(self.recipe, loop)
        while state is not None and state.iteration <= iterations:
            if self.record.done(state):
                logger.info("%s already finished in %s; skipping", state.key, self.output)
            else:
                self.run_state(state)
            ran.append(state)
            if not loop or self.method.next_state is None:
                break
            state = self.method.next_state(self.recipe, state, self.record.progress)
        return ran


# ------------------------------------------------------------------ entry points


def run(
    method_name: str | Method,
    config: str | Path,
    *,
    output: str | Path,
    loop: bool = False,
    iterations: int | None = None,
    llms: list[str] | None = None,
    push_to_hub: str | None = None,
    hub_options: Mapping[str, Any] | None = None,
    use_ray: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
    console: RunConsole | None = None,
) -> Path:
    """Run a method (``generate``: its first state; ``loop``: ``iterations`` of them).

    ``method_name`` is a registered method's name or a :class:`Method` of your own
    (see docs/architecture.md: a fifth method needs no change here). The run shows
    its progress on ``console`` (default: stderr; libraries' logs go to
    ``<output>.log``, and to the terminal too with ``verbose``). ``hub_options``
    (``private``, ``revision``, ``create_pr``) are :func:`push_hub_folder`'s.
    """
    with stop_guard():  # Ctrl-C / SIGTERM: every phase, every child, one way out
        method = method_name if isinstance(method_name, Method) else get_method(method_name)
        if loop and not method.loops:
            raise RecipeError(
                f"{method.name} has no rounds or iterations: "
                f"use `synthalign generate {method.name}`"
            )
        if iterations is not None:
            _check_iterations(iterations)
        recipe = prepare_recipe(method, config, llms)
        hub = check_hub_options(push_to_hub, hub_options)
        if push_to_hub and loop:
            _check_loop_push(method, recipe)
        total = iterations if iterations is not None else method.default_iterations(recipe)
        _check_iterations(total)
        out = Path(output).expanduser().absolute()
        resume = preflight(
            method, recipe, out, overwrite=overwrite, resumable=loop, push_to_hub=push_to_hub
        )
        if overwrite:
            _clear(out)
        with console or RunConsole(out, verbose=verbose) as shown:
            command = "loop" if loop else "generate"
            given = Path(output)  # the first and last lines name the folder as the user did
            shown.line(f"synthalign {command} {method.name} -> {given} (log: {log_path(given)})")
            if resume:
                logger.warning(
                    "resuming the %s run in %s after its last finished state", method.name, out
                )
            driver = Driver(
                method,
                recipe,
                out,
                use_ray=use_ray,
                resume=resume,
                console=shown,
                push_to_hub=push_to_hub,
            )
            driver.states(total, loop)
            shown.line(summary_line(driver.usage))
            if push_to_hub:
                url = push_hub_folder(out, push_to_hub, **hub)
                shown.line(f"pushed {_shown(out)} to {url}")
        return out


def _check_loop_push(method: Method, recipe: Recipe) -> None:
    """A loop pushes its output folder, which must be one dataset (GRA's rounds are; a
    SynPO loop writes a Hub folder per stage): refused before any model loads."""
    folder = method.first_state(recipe, True).folder
    if folder != ".":
        raise RecipeError(
            f"{method.name}'s loop writes one dataset folder per stage ({folder}, ...), not "
            "one dataset to push: drop --push-to-hub and push the folder you want after the "
            "loop (`huggingface-cli upload REPO DIR --repo-type dataset`), or push "
            f"`synthalign generate {method.name}`'s output"
        )


def check_hub_options(push_to_hub: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The push options, checked before the run (they mean nothing without a push)."""
    given = {  # what the user asked for; --public is private=False, an explicit choice
        k: v for k, v in (options or {}).items() if v is not None and (v or k == "private")
    }
    unknown = set(given) - {"private", "revision", "create_pr"}
    if unknown:
        raise RecipeError(f"unknown Hub option(s) {sorted(unknown)}")
    if given and not push_to_hub:
        flags = {"private": "--private" if given.get("private") else "--public"}
        named = ", ".join(flags.get(k, "--" + k.replace("_", "-")) for k in given)
        raise RecipeError(f"{named} only apply to a push: add --push-to-hub NAMESPACE/NAME")
    revision = given.get("revision")
    if revision is not None and given.get("create_pr"):
        raise RecipeError(
            "--create-pr opens a pull request against the repo's default branch: drop --revision"
        )
    if revision is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", str(revision)):
        raise RecipeError(
            f"--revision {revision!r} is not a branch name: use letters, digits, '.', '_', '-', '/'"
        )
    hub: dict[str, Any] = {"private": (options or {}).get("private")}  # None: the Hub's default
    hub.update((k, v) for k, v in given.items() if k != "private")
    return hub


def _shown(path: Path) -> str:
    """A path as the user wrote it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _relative(path: Path) -> str:
    """A path fit for a published file: relative to the working folder, else its name."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _check_iterations(total: object) -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise RecipeError(f"--iterations must be a whole number >= 1, got {total}")


def generate(method_name: str | Method, config: str | Path, **kwargs: Any) -> Path:
    """``synthalign generate METHOD``: the method's first state, written to ``output``."""
    return run(method_name, config, loop=False, **kwargs)


def loop(method_name: str | Method, config: str | Path, *, iterations: int, **kwargs: Any) -> Path:
    """``synthalign loop METHOD``: ``iterations`` rounds / iterations, resuming."""
    return run(method_name, config, loop=True, iterations=iterations, **kwargs)


def rewrite_card(folder: str | Path) -> Path:
    """Rebuild a folder's card from its data and ``synthalign.json`` (``synthalign card DIR``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(
            f"{folder} is not a folder: pass a folder written by `synthalign generate`"
        )
    datasets, info = read_hub_folder(folder)
    method_name = info.get("method")
    if method_name not in METHOD_MODULES:
        raise OutputError(
            f"{folder}/{RUN_RECORD} names no known method ({method_name!r}); "
            "was it written by synthalign?"
        )
    method = get_method(method_name)
    order = list(datasets)
    default = choose_default(method, datasets, order)
    card = make_card(method, datasets, info, default)
    update_card(folder, card, default_config=default)
    return folder / "README.md"
