"""Training between the states of a run (SynPO's generator, improver and policy).

A job runs ``synthalign train KIND`` in a fresh process. Not only tidy: distilabel
forks its step workers from the driver's process, and a process that has run torch
threads (training) hangs forked children on their first torch call. The recipe is
written beside the model (``OUTPUT.recipe.yaml``), so the exact training can be rerun
by hand, and a model folder that already holds a finished training is reused.

The training process has its own process group and dies with the driver
(:mod:`synthalign.signals`): Ctrl-C ends it with the run, and its checkpoints make the
rerun resume. It touches a heartbeat file at every optimizer step
(:data:`synthalign.trainers.common.HEARTBEAT_ENV`); no beat for the recipe's
``stall_timeout`` ends the run with one line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from synthalign.console import RunConsole
from synthalign.contract import TrainJob
from synthalign.errors import RESUME_HINT, RunFailed
from synthalign.signals import PARENT_ENV, wait_child
from synthalign.trainers.common import HEARTBEAT_ENV, RECIPE_FILENAME, read_training_record
from synthalign.watchdog import DEFAULT_STALL_TIMEOUT, exit_description

__all__ = ["model_done", "run_train_job"]


def model_done(path: Path) -> bool:
    """A training that finished writes its record last."""
    return (path / RECIPE_FILENAME).is_file()


def _recipe(job: TrainJob, dataset: Path, output: Path, seed: int) -> dict[str, Any]:
    data = dict(job.recipe)
    if data.get("lora"):
        data["lora"] = {
            **data["lora"],
            "merge": True,
        }  # every backend (vLLM too) must load the result directly
    data.setdefault("seed", seed)
    data.update(
        model=job.model, dataset=str(dataset), dataset_config=job.config, output_dir=str(output)
    )
    return data


def _stall_check(heartbeat: Path, output: Path, stall_timeout: float) -> Any:
    def check() -> None:
        idle = time.time() - heartbeat.stat().st_mtime
        if idle > stall_timeout:
            raise RunFailed(
                f"training for {output} made no progress for {idle:.0f}s "
                f"(stall_timeout: {stall_timeout:g}s); "
                f"its checkpoints are kept: {RESUME_HINT}, or raise stall_timeout in the recipe"
            )

    return check


def _train(
    command: list[str],
    env: dict[str, str],
    stall: Any,
    console: RunConsole | None,
    label: str,
    heartbeat: Path,
) -> int:
    """The training process, waited on (its output in the run's log when quiet)."""
    log = console.quiet_children if console is not None else None
    with contextlib.ExitStack() as stack:
        streams: dict[str, Any] = {}
        if log is not None:
            sink = stack.enter_context(log.open("ab"))
            streams = {"stdout": sink, "stderr": subprocess.STDOUT}
        proc = subprocess.Popen(command, env=env, start_new_session=True, **streams)
        if console is None:
            return wait_child(proc.pid, poll=proc.poll, check=stall)
        monitor = stack.enter_context(console.training(label.strip(), heartbeat).watching())

        def check() -> None:
            stall()
            monitor.tick()

        return wait_child(proc.pid, poll=proc.poll, check=check)


def run_train_job(
    job: TrainJob,
    *,
    dataset: Path,
    root: Path,
    seed: int,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    console: RunConsole | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Train ``job`` on ``dataset`` into ``root / job.output``, unless already trained.

    With ``console``, the training's output goes to the run's log (unless verbose) and
    its optimizer steps show as a bar."""
    output = root / job.output
    if not model_done(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        recipe_file = output.with_name(f"{output.name}.recipe.yaml")
        recipe_file.write_text(
            yaml.safe_dump(_recipe(job, dataset, output, seed), sort_keys=False), encoding="utf-8"
        )
        heartbeat = output.with_name(f".{output.name}.heartbeat")
        heartbeat.touch()
        env = {**os.environ, PARENT_ENV: str(os.getpid()), HEARTBEAT_ENV: str(heartbeat)}
        code = "import sys; from synthalign.cli import app; sys.exit(app())"
        command = [sys.executable, "-c", code, "train", job.kind, "--config", str(recipe_file)]
        stall = _stall_check(heartbeat, output, stall_timeout)
        try:
            returncode = _train(
                command, env, stall, console, f"{label} train {job.name}", heartbeat
            )
        finally:
            heartbeat.unlink(missing_ok=True)
        if returncode != 0 or not model_done(output):
            raise RunFailed(
                f"{job.kind} training for {output} failed "
                f"({exit_description(returncode)}; see the log): "
                f"fix the cause and {RESUME_HINT}"
            )
    record = read_training_record(output)
    return {
        "model": str(output),
        "base_model": job.model,
        "rows": record.get("rows"),
        "metrics": record.get("metrics", {}),
    }
