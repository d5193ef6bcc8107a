"""Published files name no user: the home folder is written ``~`` and read back expanded.

A user's seeds, recipe and output usually live under ``/home/NAME``. ``pipeline.yaml``
must still name the seed file (the distilabel CLI reruns from it) and ``synthalign.json``
the state folders (a resume reads them), so those paths are kept, home-relative: the
same user reruns and resumes (a loop's next state reads them expanded), and a reader of
the Hub repo learns no user name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rdpo_recipe import write_tiny_rdpo_recipe
from rerun import DISTILABEL

from synthalign.contract import Progress
from synthalign.secrets import home_relative, scrub

CLI = "import sys; from synthalign.cli import app; sys.exit(app())"


def test_home_relative_rewrites_paths_under_home_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    assert home_relative("source: /home/alice/data/seeds.jsonl") == "source: ~/data/seeds.jsonl"
    assert home_relative("/home/alicebob/x and /data/alice") == "/home/alicebob/x and /data/alice"
    record = scrub({"states": [{"path": "/home/alice/out", "models": {"m": "/home/alice/m"}}]}, [])
    assert record == {"states": [{"path": "~/out", "models": {"m": "~/m"}}]}
    monkeypatch.setenv("HOME", "/")
    assert home_relative("/data/x") == "/data/x"  # a root HOME rewrites nothing


def test_a_resume_expands_the_recorded_folders_and_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    progress = Progress(
        [{"key": "1:round", "path": "~/out", "models": {"policy": "~/out/iter-1/policy"}}]
    )
    assert progress.folder("1:round") == "/home/alice/out"
    assert progress.model("policy") == "/home/alice/out/iter-1/policy"


@pytest.mark.slow
def test_a_run_under_home_publishes_no_user_name_and_still_reruns(
    tmp_path: Path,
) -> None:
    home = tmp_path / "alice"
    (home / "data").mkdir(parents=True)
    seeds = home / "data" / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"prompt": f"How do I water plant number {i}?"}) + "\n" for i in range(4)
        )
    )
    recipe = write_tiny_rdpo_recipe(home, "home-paths", seeds, batch=2)
    out = home / "out"
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.setdefault("SYNTHALIGN_CACHE", str(Path.home() / ".cache" / "synthalign"))
    generate = [sys.executable, "-c", CLI, "generate", "rdpo", "-c", str(recipe), "-o", str(out)]
    proc = subprocess.run(
        generate, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    for path in out.rglob("*"):
        if path.is_file():
            assert str(home).encode() not in path.read_bytes(), path
    pipeline = (out / "pipeline.yaml").read_text()
    assert "~/data/seeds.jsonl" in pipeline
    record = json.loads((out / "synthalign.json").read_text())
    assert record["recipe"]["seed_data"]["source"] == "~/data/seeds.jsonl"
    assert [s["path"] for s in record["states"]] == ["~/out"]

    # the same user reruns the published pipeline.yaml from another folder: ~ is expanded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rerun = subprocess.run(
        [str(DISTILABEL), "pipeline", "run", "--config", str(out / "pipeline.yaml")],
        capture_output=True, text=True, timeout=900, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    name = yaml.safe_load(pipeline)["pipeline"]["name"]
    assert list((home / ".cache" / "distilabel" / "pipelines" / name).rglob("*.parquet"))
