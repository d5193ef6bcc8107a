"""The registry of methods and the one generate path they all share.

Each ``pipelines/<method>.py`` defines ``METHOD = Method(...)``: its recipe class,
``build_pipeline``, how the distilabel output becomes the published configs, and its
card. :func:`generate` does the rest identically for every method: validate (recipe,
LLM specs, seeds, output folder, Hub token) before any model loads, run with
distilabel's cache (a rerun resumes), write the Hub folder atomically, push.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import synthalign.compat  # noqa: F401  (distilabel fixes, before any pipeline runs)
from synthalign.errors import OutputError, RecipeError
from synthalign.llms import apply_api_key
from synthalign.recipes import Recipe, load_recipe

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.distiset import Distiset
    from distilabel.pipeline import Pipeline
    from pydantic import SecretStr

    from synthalign.cards.base import CardContent

METHOD_MODULES = {
    "condor": "synthalign.pipelines.condor",
    "gra": "synthalign.pipelines.gra",
    "synpo": "synthalign.pipelines.synpo",
    "rdpo": "synthalign.pipelines.rdpo",
}


@dataclass
class Method:
    """What a method module provides to the shared generate path."""

    name: str
    recipe_cls: type[Recipe]
    build_pipeline: Callable[[Any], Pipeline]
    to_datasets: Callable[[Distiset, Any], dict[str, Dataset]]
    build_card: Callable[[dict[str, Dataset], dict[str, Any]], CardContent]
    default_config: str
    override_llms: Callable[[Any, list[str]], Any] | None = None
    preflight: Callable[[Any], None] | None = None
    loop: Callable[..., Path] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def get_method(name: str) -> Method:
    if name not in METHOD_MODULES:
        raise RecipeError(f"unknown method {name!r}: choose one of {', '.join(METHOD_MODULES)}")
    module = importlib.import_module(METHOD_MODULES[name])
    return module.METHOD


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise OutputError(f"output folder {output} already exists: pass --overwrite or choose another --output")


def check_push_token(push_to_hub: str | None) -> None:
    if not push_to_hub:
        return
    if os.environ.get("HF_TOKEN"):
        return
    from huggingface_hub import get_token

    if not get_token():
        raise OutputError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")


def preflight(method: Method, recipe: Recipe) -> None:
    """Everything checkable without loading a model."""
    from synthalign.llms import check_spec

    for spec in recipe.llm_specs():
        check_spec(spec)
    if method.preflight:
        method.preflight(recipe)


def run_info(method: Method, recipe: Recipe, **extra: Any) -> dict[str, Any]:
    from synthalign.cards.base import versions

    return {
        "method": method.name,
        "recipe": recipe.model_dump(mode="json"),
        "seed": recipe.seed,
        "versions": versions(),
        **extra,
    }


def run_pipeline(
    pipeline: Pipeline, *, use_ray: bool = False, use_cache: bool = True, api_key: SecretStr | None = None
) -> Distiset:
    """Run resumably: a rerun after a crash (even SIGKILL) reuses every finished batch.

    ``api_key`` (the recipe's, a ``SecretStr``) goes to every ``openai:`` LLM of the
    pipeline, so loop rounds and iterations get it as ``generate`` does.

    distilabel routes logging through a queue it closes when the run ends but leaves
    its handler on the root logger; every later log line of the process would print
    "--- Logging error ---". The handler is removed here, once, for every method.
    """
    import logging
    from logging.handlers import QueueHandler

    apply_api_key(pipeline, api_key)
    if use_ray:  # distilabel's RayPipeline, keeping the method's load stages
        from synthalign.distributed import to_ray

        pipeline = to_ray(pipeline)
    try:
        if not use_cache or use_ray:  # Ray actors are not forked: distilabel's own cache only
            return pipeline.run(use_cache=use_cache)
        # Resume from synthalign's per-batch store, not distilabel's batch manager (which a
        # SIGKILL leaves waiting forever for in-flight batches): see synthalign/resume.py.
        from synthalign.resume import batch_store

        with batch_store(pipeline):
            return pipeline.run(use_cache=False)
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, QueueHandler):
                root.removeHandler(handler)


def generate(
    method_name: str,
    recipe_path: str | Path,
    *,
    llms: list[str] | None = None,
    output: str | Path,
    push_to_hub: str | None = None,
    use_ray: bool = False,
    overwrite: bool = False,
) -> Path:
    """Run one method end to end and return the written Hub-layout folder."""
    from synthalign.hub import push_hub_folder, write_hub_folder
    from synthalign.llms import check_spec

    for spec in llms or []:
        check_spec(spec)
    method = get_method(method_name)
    recipe = load_recipe(recipe_path, method.recipe_cls)
    if llms:
        if method.override_llms is None:
            raise RecipeError(f"{method.name} takes its LLMs from the recipe only; drop --llm")
        recipe = method.override_llms(recipe, llms)
    output = Path(output)
    check_output(output, overwrite)
    check_push_token(push_to_hub)
    preflight(method, recipe)

    pipeline = method.build_pipeline(recipe)
    distiset = run_pipeline(pipeline, use_ray=use_ray, api_key=recipe.api_key)
    datasets = method.to_datasets(distiset, recipe)
    info = run_info(method, recipe, counts={k: len(v) for k, v in datasets.items()})
    card = method.build_card(datasets, info)
    folder = write_hub_folder(
        output,
        datasets,
        card,
        pipeline_yaml=distiset.pipeline_path,
        run_info=info,
        default_config=method.default_config if len(datasets.get(method.default_config, ())) else None,
        overwrite=overwrite,
    )
    if push_to_hub:
        push_hub_folder(folder, push_to_hub)
    return folder


def rewrite_card(folder: str | Path) -> Path:
    """Rebuild a folder's card from its data and ``synthalign.json`` (``synthalign card DIR``)."""
    from synthalign.hub import read_hub_folder, update_card

    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder: pass a folder written by `synthalign generate`")
    datasets, info = read_hub_folder(folder)
    method_name = info.get("method")
    if method_name not in METHOD_MODULES:
        raise OutputError(f"{folder}/synthalign.json names no known method ({method_name!r}); was it written by synthalign?")
    method = get_method(method_name)
    update_card(folder, method.build_card(datasets, info), default_config=method.default_config)
    return folder / "README.md"
