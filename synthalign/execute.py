"""Running one distilabel pipeline for the driver, and reading its published leaves.

Kept apart from :mod:`synthalign.run` (the loop over states) because this is the part
that touches distilabel's runtime: the resumable batch store, Ray, the api key, the
load stages, the leaf steps' parquet files, and the process the pipeline runs in.

A local pipeline runs in a forked runner process with its own process group, never in
the driver: the driver waits on it with a deadline (:mod:`synthalign.watchdog`), ends
the whole group on Ctrl-C or SIGTERM (:mod:`synthalign.signals`), and every worker dies
with the runner. distilabel's threads, queues and signal handlers never touch the
driver, so a stopped or failed run leaves nothing behind in it. A ``--ray`` pipeline
runs in the driver (its actors belong to Ray, which supervises them), under the same
stop handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from logging.handlers import QueueHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import synthalign.compat  # noqa: F401  (distilabel fixes, before any pipeline runs)
from synthalign import accounting
from synthalign.console import PipelineMonitor, redirect_output
from synthalign.distributed import to_ray
from synthalign.llms import apply_api_key
from synthalign.resume import batch_store
from synthalign.signals import die_with_parent, wait_child
from synthalign.watchdog import (
    DEFAULT_STALL_TIMEOUT,
    Watchdog,
    arm_runner,
    report_error,
    report_result,
)

if TYPE_CHECKING:
    from datasets import Dataset, Features
    from distilabel.pipeline import Pipeline
    from pydantic import SecretStr

__all__ = ["DEFAULT_STALL_TIMEOUT", "PipelineRun", "leaf_datasets", "run_pipeline"]

SEQUENTIAL = "sequential_step_execution"


@dataclass(frozen=True)
class PipelineRun:
    """A finished pipeline: its DAG (the leaf steps and their schemas), its files, and
    what its model calls used (:mod:`synthalign.accounting`, one entry per step and model)."""

    pipeline: Pipeline
    data_dir: Path
    pipeline_yaml: Path
    usage: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(
    pipeline: Pipeline,
    *,
    use_ray: bool = False,
    use_cache: bool = True,
    api_key: SecretStr | None = None,
    sequential: bool = False,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    monitor: PipelineMonitor | None = None,
    log_file: Path | None = None,
) -> PipelineRun:
    """Run resumably in a runner process; return where the outputs are.

    A rerun after a crash (even SIGKILL) reuses every finished batch through
    synthalign's batch store (see :mod:`synthalign.resume`). ``api_key`` (the recipe's,
    a ``SecretStr``) goes to every ``openai:`` LLM of the pipeline. ``sequential``
    loads one step at a time (one in-process GPU engine at a time). A worker that dies,
    or no step event for ``stall_timeout`` seconds, raises
    :class:`~synthalign.errors.RunFailed` with one line; a stop signal raises
    :class:`~synthalign.errors.RunStopped`. Either way the runner's whole process group
    is gone when this returns. ``monitor`` shows the steps' progress while the driver
    waits; ``log_file`` receives everything the runner and its workers print.
    """
    apply_api_key(pipeline, api_key)
    kwargs: dict[str, Any] = {"load_groups": SEQUENTIAL} if sequential else {}
    if use_ray:
        return _run_on_ray(pipeline, use_cache=use_cache, kwargs=kwargs)
    watchdog = Watchdog(stall_timeout)
    try:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the runner (covered through its effects)
            try:
                if log_file is not None:
                    redirect_output(log_file)
                _runner(pipeline, watchdog, parent, use_cache=use_cache, kwargs=kwargs)
            finally:
                os._exit(1)  # never back into the driver's code, whatever happened
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        with contextlib.ExitStack() as stack:
            check = watchdog.check
            if monitor is not None:
                stack.enter_context(monitor.watching(watchdog.folder))

                def check() -> None:
                    watchdog.check()
                    monitor.tick()

            code = wait_child(pid, check=check)
        result = watchdog.finish(code)
        order = [step for level in pipeline.dag.iter_based_on_trophic_levels() for step in level]
        usage = accounting.collect(watchdog.folder, order)
    finally:
        watchdog.close()
    return PipelineRun(pipeline, Path(result["data"]), Path(result["pipeline"]), usage)


def _run_on_ray(pipeline: Pipeline, *, use_cache: bool, kwargs: dict[str, Any]) -> PipelineRun:
    """distilabel's RayPipeline, in this process: its actors are Ray's, not forked workers
    (Ray supervises them, distilabel's own cache resumes). The driver keeps its stop
    handler (distilabel would install its graceful one and return as if finished)."""
    ray_pipeline = to_ray(pipeline)
    ray_pipeline._handle_keyboard_interrupt = lambda: None  # type: ignore[method-assign]
    try:
        ray_pipeline.run(use_cache=use_cache, **kwargs)
    finally:
        root = logging.getLogger()  # distilabel leaves its closed queue handler on the root
        for handler in list(root.handlers):
            if isinstance(handler, QueueHandler):
                root.removeHandler(handler)
    location = ray_pipeline._cache_location
    return PipelineRun(ray_pipeline, Path(location["data"]), Path(location["pipeline"]))


def _runner(
    pipeline: Pipeline,
    watchdog: Watchdog,
    parent: int,
    *,
    use_cache: bool,
    kwargs: dict[str, Any],
) -> None:
    """The runner process: its own group, dies with the driver, reports, never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent(parent)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        arm_runner(pipeline, watchdog.folder)
        if not use_cache:
            pipeline.run(use_cache=use_cache, **kwargs)
        else:
            with batch_store(pipeline):
                pipeline.run(use_cache=False, **kwargs)
        report_result(watchdog.folder, pipeline)
        code = 0
    except BaseException as exc:
        report_error(watchdog.folder, exc)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream must not keep the runner alive
                stream.flush()
        os._exit(code)


def pipeline_yaml_path(ran: PipelineRun) -> Path:
    """The ``pipeline.yaml`` distilabel wrote for this run (copied into the Hub folder)."""
    return ran.pipeline_yaml


def _leaf_files(ran: PipelineRun, name: str) -> list[str]:
    folder = ran.data_dir / "steps_outputs" / name
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


def leaf_datasets(ran: PipelineRun, names: list[str]) -> dict[str, Dataset]:
    """The published configs: the rows of the leaf steps ``names``, typed by their step.

    Read from the leaves' own parquet files (not the Distiset, which renames a lone
    non-empty leaf to ``default``). A leaf with no rows is left out: ``load_dataset``
    cannot load a zero-row config, and a folder must load whole; the card says which
    configs came out empty.
    """
    from datasets import load_dataset  # heavy: datasets

    out: dict[str, Dataset] = {}
    for name in names:
        step = ran.pipeline.dag.get_step(name)["step"]
        features = step.features() if hasattr(step, "features") else None
        files = _leaf_files(ran, name)
        if files:  # as distilabel's own Distiset reads them
            data = load_dataset("parquet", data_files={"train": files}, split="train")
            if "distilabel_metadata" in data.column_names:
                data = data.remove_columns("distilabel_metadata")
            if len(data):
                out[name] = _typed(data, features)
    return out
