"""Foundation: a real distilabel pipeline per backend -> Hub folder -> load_dataset -> rerun.

The pipeline (tests/demo_pipeline.py) reads seeds from a JSONL file and runs one
schema-forced step, so the folder's pipeline.yaml is enough to rerun it with the real
``distilabel pipeline run`` CLI, from the folder or from the (local test) Hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rerun import fresh_home_env

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SEEDS = TESTS / "data" / "instructions.jsonl"
DISTILABEL = Path(sys.executable).with_name("distilabel")


def _write_folder(spec: str, out: Path, home: Path, **extra: str) -> subprocess.CompletedProcess:
    code = f"import demo_pipeline; demo_pipeline.run({spec!r}, {str(SEEDS)!r}, {str(out)!r})"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=fresh_home_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _rerun(config: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DISTILABEL), "pipeline", "run", "--config", config],
        env=fresh_home_env(home), capture_output=True, text=True, timeout=900, cwd=cwd,
    )  # fmt: skip


def _check_folder(out: Path) -> None:
    from datasets import load_dataset

    from synthalign.hub import validate_hub_folder

    validate_hub_folder(out)
    rows = load_dataset(str(out), "default", split="train")
    assert len(rows) == 4
    assert set(rows.column_names) >= {
        "instruction",
        "score",
        "label",
        "reason",
        "rating_error",
        "rating_model",
    }
    assert all(r["rating_error"] is None for r in rows), rows["rating_error"]
    assert all(len(r["reason"]) <= 60 and 0 <= r["score"] <= 10 for r in rows)


def write_load_and_rerun(spec: str, tmp_path: Path) -> None:
    """Run the demo pipeline on ``spec``, check the Hub folder, rerun its pipeline.yaml."""
    out = tmp_path / "dataset"
    proc = _write_folder(spec, out, tmp_path / "home1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_folder(out)

    rerun_dir = tmp_path / "rerun"
    rerun_dir.mkdir()
    proc = _rerun(str(out / "pipeline.yaml"), tmp_path / "home2", rerun_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:tiny-random",
        pytest.param("builtin:smollm2-135m", marks=pytest.mark.slow),
    ],
)
def test_pipeline_writes_hub_folder_that_loads_and_reruns(spec: str, tmp_path: Path) -> None:
    write_load_and_rerun(spec, tmp_path)
    # the rerun ran the steps from scratch (fresh HOME => fresh distilabel cache)
    assert list(
        (tmp_path / "home2" / ".cache" / "distilabel" / "pipelines").glob(
            "synthalign-demo/*/executions/*/data/steps_outputs/rate_instruction_0/*.parquet"
        )
    )


def test_push_then_load_and_rerun_from_local_hub(local_hub, tmp_path: Path) -> None:
    from datasets import load_dataset

    from synthalign.hub import push_hub_folder

    out = tmp_path / "dataset"
    proc = _write_folder("builtin:tiny-random", out, tmp_path / "home1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    repo = "local-user/demo-roundtrip"
    push_hub_folder(out, repo)
    written = load_dataset(str(out), "default", split="train")
    pulled = load_dataset(repo, "default", split="train")
    assert pulled.features == written.features
    assert pulled.to_list() == written.to_list()

    rerun_dir = tmp_path / "rerun"
    rerun_dir.mkdir()
    proc = _rerun(local_hub.raw_url(repo, "pipeline.yaml"), tmp_path / "home2", rerun_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_run_opens_no_socket_outside_loopback(tmp_path: Path) -> None:
    log = tmp_path / "net.log"
    extra = {
        "NETGUARD_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(
            [str(TESTS / "netguard"), str(TESTS), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = _write_folder("builtin:tiny-random", tmp_path / "out", tmp_path / "home", **extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "README.md").exists()
    assert not log.exists() or log.read_text() == "", log.read_text()


def test_netguard_really_catches_outside_connections(tmp_path: Path) -> None:
    """The guard above would be worthless if it could not see a connection attempt."""
    log = tmp_path / "net.log"
    env = dict(os.environ, NETGUARD_LOG=str(log), PYTHONPATH=str(TESTS / "netguard"))
    code = "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=0.1)\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=True)
    assert "192.0.2.1" in log.read_text()
