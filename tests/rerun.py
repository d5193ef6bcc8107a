"""Rerun a published folder's ``pipeline.yaml`` with the real distilabel CLI.

Every method's configs are leaf steps of its pipeline, so the rerun must give the same
config names with the same row counts as the folder it came from. Each method's tests
call :func:`assert_rerun_reproduces` on a folder written by ``synthalign generate`` /
``loop``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

DISTILABEL = Path(sys.executable).with_name("distilabel")


def fresh_home_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh HOME (distilabel's cache starts empty), the real built-in model cache, and
    the tests folder importable (test-only methods such as tests/echo_method.py must
    import in a CLI's process too); ``extra`` variables on top."""
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        SYNTHALIGN_CACHE=os.environ.get(
            "SYNTHALIGN_CACHE", str(Path.home() / ".cache" / "synthalign")
        ),
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p
        ),
    )
    env.update(extra)
    return env


def rerun_counts(folder: Path, work: Path, timeout: int = 1200) -> dict[str, int]:
    """Rows per non-empty leaf step of ``folder/pipeline.yaml`` rerun from a clean HOME."""
    from datasets import Dataset

    home, cwd = work / "home", work / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(DISTILABEL), "pipeline", "run", "--config", str(folder / "pipeline.yaml")],
        env=fresh_home_env(home), cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    name = yaml.safe_load((folder / "pipeline.yaml").read_text())["pipeline"]["name"]
    runs = home / ".cache" / "distilabel" / "pipelines" / name
    counts: dict[str, int] = {}
    for leaf in sorted(
        {p.parent.name for p in runs.glob("*/executions/*/data/steps_outputs/*/*.parquet")}
    ):
        files = sorted(runs.glob(f"*/executions/*/data/steps_outputs/{leaf}/*.parquet"))
        rows = len(Dataset.from_parquet([str(f) for f in files]))
        if rows:
            counts[leaf] = rows
    return counts


def published_counts(folder: Path) -> dict[str, int]:
    """Rows per config, as the folder's own record states them (checked against parquet)."""
    from synthalign.hub import validate_hub_folder

    validate_hub_folder(folder)
    record = json.loads((folder / "synthalign.json").read_text())
    return {name: splits["train"] for name, splits in record["rows"].items()}


def assert_rerun_reproduces(folder: Path, work: Path) -> dict[str, int]:
    """The rerun publishes exactly the folder's configs, each with the same row count."""
    published = published_counts(folder)
    rerun = rerun_counts(folder, work)
    assert rerun == published, f"rerun {rerun} != published {published}"
    return published
