"""`synthalign loop synpo` and `generate synpo` on the quickstart recipe, end to end.

Runs the real CLI on builtin:tiny-random (policy, generator, improver) and
builtin:tiny-reward (scorer): every stage's folder must load with load_dataset and
rerun from its own ``pipeline.yaml``, SimPO must train and save, iteration 2 must
generate with iteration 1's policy, and a rerun after an interruption must redo only
what was not finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rerun import assert_rerun_reproduces

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "pipelines" / "recipes" / "synpo-quickstart.yaml"
CLI = "import sys; from synthalign.cli import app; sys.exit(app())"
STAGES = ("generator-set", "improver-set", "pairs", "preferences")


def _recipe(tmp_path: Path, **changes: Any) -> Path:
    """The quickstart recipe with absolute data paths and a cache of the test's own."""
    data = yaml.safe_load(RECIPE.read_text())
    for section in ("seed_data", "corpus"):
        data[section]["source"] = str(RECIPE.parent / data[section]["source"])
    data.update(cache_dir=str(tmp_path / "cache"), **changes)
    path = tmp_path / f"synpo-{len(changes)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _loop(recipe: Path, out: Path, iterations: int) -> subprocess.CompletedProcess:
    return _cli(
        "loop",
        "synpo",
        "--config",
        str(recipe),
        "--iterations",
        str(iterations),
        "--output",
        str(out),
    )


def _states(out: Path) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in json.loads((out / "synthalign.json").read_text())["states"]}


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_quickstart_loop_reruns_each_stage_continues_and_resumes(tmp_path: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM

    recipe, out = _recipe(tmp_path), tmp_path / "synpo"
    proc = _loop(recipe, out, 1)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # every config of every stage folder is made by its pipeline: a rerun reproduces it
    for stage in STAGES:
        assert_rerun_reproduces(out / "iter-1" / stage, tmp_path / "rerun" / stage)

    # asking for more iterations continues after the last finished state
    before_1 = _mtimes(out / "iter-1")
    proc = _loop(recipe, out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _mtimes(out / "iter-1") == before_1
    states = _states(out)
    assert list(states) == [f"1:{stage}" for stage in STAGES] + [
        f"2:{stage}" for stage in STAGES[1:]
    ]
    assert all(state["complete"] for state in states.values())
    assert states["1:preferences"]["models"]["policy"] == str(out / "iter-1" / "policy")
    assert not (out / "iter-2" / "generator-set").exists()  # the paper trains the generator once

    # every stage's folder loads, config by config
    for k in (1, 2):
        for stage in STAGES[1:]:
            folder = out / f"iter-{k}" / stage
            for config, rows in json.loads((folder / "synthalign.json").read_text())[
                "rows"
            ].items():
                assert len(load_dataset(str(folder), config, split="train")) == rows["train"] > 0
    generator_set = load_dataset(str(out / "iter-1" / "generator-set"), "generator", split="train")
    assert {"messages", "keywords", "noise_keywords"} <= set(generator_set.column_names)

    # the funnel filters something; every keyword list says where it left, or that it was kept
    candidates = load_dataset(str(out / "iter-2" / "pairs"), "candidates", split="train")
    assert len(candidates) == 12 and 0 < sum(candidates["kept"]) <= 6
    assert all(
        kept == (stage is None)
        for kept, stage in zip(candidates["kept"], candidates["drop_stage"], strict=True)
    )
    assert "## Funnel" in (out / "iter-2" / "pairs" / "README.md").read_text()

    # the pairs are TRL-ready with provenance, and iteration 2 used iteration 1's models
    pairs = load_dataset(str(out / "iter-2" / "pairs"), "pairs", split="train")
    assert len(pairs) == sum(candidates["kept"])
    row = pairs[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["score_gap"] > 0.0 and len(row["keywords"]) == 3 and row["iteration"] == 2
    assert row["policy_model"] == f"transformers:{out / 'iter-1' / 'policy'}"
    assert row["rejected_from"] == "initial" and row["rejected_model"] == "builtin:tiny-random"
    assert row["improver_model"] == f"transformers:{out / 'iter-2' / 'improver'}"
    assert row["generator_model"] == f"transformers:{out / 'iter-1' / 'generator'}"
    prefs = load_dataset(str(out / "iter-2" / "preferences"), split="train")
    assert sorted(set(prefs["iteration"])) == [1, 2]  # the preference set grows
    assert (out / "iter-2" / "preferences" / "figures" / "funnel.png").is_file()
    assert (out / "iter-2" / "pairs" / "figures" / "score_gap_histogram.png").is_file()

    # SimPO trained and saved a model that loads back
    for k in (1, 2):
        record = json.loads((out / f"iter-{k}" / "policy" / "synthalign-train.json").read_text())
        assert record["kind"] == "simpo" and record["rows"] == len(
            load_dataset(str(out / f"iter-{k}" / "preferences"), split="train")
        )
        AutoModelForCausalLM.from_pretrained(out / f"iter-{k}" / "policy")

    # interrupt iteration 2 during SimPO: the saved model is gone, the record says unfinished
    policy2 = out / "iter-2" / "policy"
    (policy2 / "synthalign-train.json").unlink()
    (policy2 / "model.safetensors").unlink()
    record = json.loads((out / "synthalign.json").read_text())
    record["states"][-1].update(complete=False, models={})
    (out / "synthalign.json").write_text(json.dumps(record))
    before_2 = {k: v for k, v in _mtimes(out / "iter-2").items() if not k.startswith("policy")}

    proc = _loop(recipe, out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _mtimes(out / "iter-1") == before_1  # the finished iteration was not redone
    assert {
        k: v for k, v in _mtimes(out / "iter-2").items() if not k.startswith("policy")
    } == before_2
    assert _states(out)["2:preferences"]["complete"] and (policy2 / "model.safetensors").is_file()

    # a changed recipe is refused instead of mixing two runs in one folder
    proc = _loop(_recipe(tmp_path, pairs_per_iteration=5), out, 3)
    assert proc.returncode == 2 and "different synpo recipe" in proc.stderr


def test_generate_writes_one_pairs_folder_that_loads_by_default(tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "pairs"
    proc = _cli("generate", "synpo", "--config", str(_recipe(tmp_path)), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((out / "synthalign.json").read_text())["rows"]
    assert rows["prompts"]["train"] == rows["candidates"]["train"] == 12
    pairs = load_dataset(str(out), split="train")  # the default config: pairs
    assert len(pairs) == rows["pairs"]["train"] > 0
    assert {"prompt", "chosen", "rejected", "score_gap"} <= set(pairs.column_names)
    assert set(pairs["rejected_model"]) == {"builtin:tiny-random"} and set(pairs["iteration"]) == {
        1
    }


def test_an_old_recipe_key_fails_in_one_line_naming_its_new_name(tmp_path: Path) -> None:
    data = yaml.safe_load(_recipe(tmp_path).read_text())
    data["scorer"] = {"model": "builtin:tiny-reward", "pair_threshold": 0.0}
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(data))
    proc = _cli(
        "loop",
        "synpo",
        "--config",
        str(old),
        "--iterations",
        "1",
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().count("\n") == 0
    assert "'scorer.model' was renamed to 'scorer.reward_model.model'" in proc.stderr
