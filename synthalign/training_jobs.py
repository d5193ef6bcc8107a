"""Training between the states of a run (SynPO's generator, improver and policy).

A job runs ``synthalign train KIND`` in a fresh process. Not only tidy: distilabel
forks its step workers from the driver's process, and a process that has run torch
threads (training) hangs forked children on their first torch call. The recipe is
written beside the model (``OUTPUT.recipe.yaml``), so the exact training can be rerun
by hand, and a model folder that already holds a finished training is reused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from synthalign.contract import TrainJob
from synthalign.errors import OutputError
from synthalign.trainers.common import RECIPE_FILENAME, read_training_record

__all__ = ["model_done", "run_train_job"]


def model_done(path: Path) -> bool:
    """A training that finished writes its record last."""
    return (path / RECIPE_FILENAME).is_file()


def _recipe(job: TrainJob, dataset: Path, output: Path, seed: int) -> dict[str, Any]:
    data = dict(job.recipe)
    if data.get("lora"):
        data["lora"] = {**data["lora"], "merge": True}  # every backend (vLLM too) must load the result directly
    data.setdefault("seed", seed)
    data.update(model=job.model, dataset=str(dataset), dataset_config=job.config, output_dir=str(output))
    return data


def run_train_job(job: TrainJob, *, dataset: Path, root: Path, seed: int) -> dict[str, Any]:
    """Train ``job`` on ``dataset`` into ``root / job.output``, unless already trained."""
    output = root / job.output
    if not model_done(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        recipe_file = output.with_name(f"{output.name}.recipe.yaml")
        recipe_file.write_text(yaml.safe_dump(_recipe(job, dataset, output, seed), sort_keys=False), encoding="utf-8")
        code = "import sys; from synthalign.cli import app; sys.exit(app())"
        proc = subprocess.run([sys.executable, "-c", code, "train", job.kind, "--config", str(recipe_file)], check=False)
        if proc.returncode != 0 or not model_done(output):
            raise OutputError(
                f"{job.kind} training for {output} failed (exit {proc.returncode}; see the log above): "
                "fix the cause and rerun the same command to resume"
            )
    record = read_training_record(output)
    return {"model": str(output), "base_model": job.model, "rows": record.get("rows"), "metrics": record.get("metrics", {})}
