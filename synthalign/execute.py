"""Running one distilabel pipeline for the driver, and reading its published leaves.

Kept apart from :mod:`synthalign.run` (the loop over states) because this is the part
that touches distilabel's runtime: the resumable batch store, Ray, the api key, the
load stages, and the leaf steps' parquet files.
"""

from __future__ import annotations

import logging
from logging.handlers import QueueHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import synthalign.compat  # noqa: F401  (distilabel fixes, before any pipeline runs)
from synthalign.distributed import to_ray
from synthalign.llms import apply_api_key
from synthalign.resume import batch_store

if TYPE_CHECKING:
    from datasets import Dataset, Features
    from distilabel.pipeline import Pipeline
    from pydantic import SecretStr

__all__ = ["leaf_datasets", "run_pipeline"]

SEQUENTIAL = "sequential_step_execution"


def run_pipeline(
    pipeline: Pipeline,
    *,
    use_ray: bool = False,
    use_cache: bool = True,
    api_key: SecretStr | None = None,
    sequential: bool = False,
) -> Pipeline:
    """Run resumably and return the pipeline that ran (its leaves hold the outputs).

    A rerun after a crash (even SIGKILL) reuses every finished batch through
    synthalign's batch store (see :mod:`synthalign.resume`). ``api_key`` (the recipe's,
    a ``SecretStr``) goes to every ``openai:`` LLM of the pipeline. ``sequential``
    loads one step at a time (one in-process GPU engine at a time).

    distilabel routes logging through a queue it closes when the run ends but leaves
    its handler on the root logger; every later log line of the process would print
    "--- Logging error ---". The handler is removed here, once, for every method.
    """
    apply_api_key(pipeline, api_key)
    kwargs: dict[str, Any] = {"load_groups": SEQUENTIAL} if sequential else {}
    if use_ray:  # distilabel's RayPipeline; Ray actors are not forked: distilabel's own cache only
        pipeline = to_ray(pipeline)
    try:
        if not use_cache or use_ray:
            pipeline.run(use_cache=use_cache, **kwargs)
        else:
            with batch_store(pipeline):
                pipeline.run(use_cache=False, **kwargs)
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, QueueHandler):
                root.removeHandler(handler)
    return pipeline


def pipeline_yaml_path(pipeline: Pipeline) -> Path:
    """The ``pipeline.yaml`` distilabel wrote for this run (copied into the Hub folder)."""
    return Path(pipeline._cache_location["pipeline"])


def _leaf_files(pipeline: Pipeline, name: str) -> list[str]:
    folder = Path(pipeline._cache_location["data"]) / "steps_outputs" / name
    return sorted(str(p) for p in folder.rglob("*.parquet")) if folder.is_dir() else []


def _typed(data: Dataset, features: Features | None) -> Dataset:
    """Cast to the step's declared schema; all-None columns become strings otherwise, so
    every run's configs share one schema (and concatenate)."""
    from datasets import Value  # heavy: datasets

    if features is not None:
        return data.select_columns(list(features)).cast(features)
    changed = data.features.copy()
    nulls = [name for name, f in changed.items() if isinstance(f, Value) and f.dtype == "null"]
    for name in nulls:
        changed[name] = Value("string")
    return data.cast(changed) if nulls else data


def leaf_datasets(pipeline: Pipeline, names: list[str]) -> dict[str, Dataset]:
    """The published configs: the rows of the leaf steps ``names``, typed by their step.

    Read from the leaves' own parquet files (not the Distiset, which renames a lone
    non-empty leaf to ``default``). A leaf with no rows is left out: ``load_dataset``
    cannot load a zero-row config, and a folder must load whole; the card says which
    configs came out empty.
    """
    from datasets import load_dataset  # heavy: datasets

    out: dict[str, Dataset] = {}
    for name in names:
        step = pipeline.dag.get_step(name)["step"]
        features = step.features() if hasattr(step, "features") else None
        files = _leaf_files(pipeline, name)
        if files:  # as distilabel's own Distiset reads them
            data = load_dataset("parquet", data_files={"train": files}, split="train")
            if "distilabel_metadata" in data.column_names:
                data = data.remove_columns("distilabel_metadata")
            if len(data):
                out[name] = _typed(data, features)
    return out
