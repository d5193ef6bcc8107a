"""`synthalign loop synpo` on the quickstart recipe: two iterations end to end, then resume.

Runs the real CLI on builtin:tiny-random (policy, generator, improver) and
builtin:tiny-reward (scorer): every stage's folder must load with load_dataset,
SimPO must train and save, iteration 2 must generate with iteration 1's policy, and a
rerun after an interruption must redo only what was not finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "pipelines" / "recipes" / "synpo-quickstart.yaml"
CLI = "import sys; from synthalign.cli import app; sys.exit(app())"


def _loop(recipe: Path, out: Path, iterations: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-c", CLI, "loop", "synpo", "--config", str(recipe), "--iterations", str(iterations), "--output", str(out)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env,
    )  # fmt: skip


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_quickstart_loop_runs_two_iterations_and_resumes(tmp_path: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM

    out = tmp_path / "synpo"
    proc = _loop(RECIPE, out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["iteration"] for i in manifest["iterations"]] == [1, 2]
    assert all(i["status"] == "done" for i in manifest["iterations"])
    first, second = manifest["iterations"]
    assert first["policy_in"] == "builtin:tiny-random"
    assert second["policy_in"] == first["policy_out"] == str(out / "iter-1" / "policy")
    assert manifest["thresholds"]["pair_score_gap"] == 0.0

    # every stage's folder loads, config by config
    for k in (1, 2):
        for stage in ("improver-set", "pairs", "preferences"):
            folder = out / f"iter-{k}" / stage
            record = json.loads((folder / "synthalign.json").read_text())
            for config, rows in record["rows"].items():
                data = load_dataset(str(folder), config, split="train")
                assert len(data) == rows["train"] > 0
    generator_set = load_dataset(str(out / "iter-1" / "generator-set"), "generator", split="train")
    assert {"messages", "keywords", "noise_keywords"} <= set(generator_set.column_names)
    assert not (out / "iter-2" / "generator-set").exists()  # the paper trains the generator once

    # the funnel filters something and the pairs are TRL-ready with provenance
    funnel = second["stages"]["pairs"]["funnel"]
    assert funnel["keyword lists"] == 12 and 0 < funnel["pairs sampled"] <= 6
    pairs = load_dataset(str(out / "iter-2" / "pairs"), "pairs", split="train")
    row = pairs[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["score_gap"] > 0.0 and len(row["keywords"]) == 3 and row["iteration"] == 2
    assert row["policy_model"] == f"transformers:{out / 'iter-1' / 'policy'}"  # iteration 2 used iteration 1's model
    assert row["rejected_from"] == "initial" and row["rejected_model"] == "builtin:tiny-random"
    assert row["improver_model"] == f"transformers:{out / 'iter-2' / 'improver'}"
    prefs = load_dataset(str(out / "iter-2" / "preferences"), split="train")
    assert sorted(set(prefs["iteration"])) == [1, 2]  # the preference set grows
    assert (out / "iter-2" / "preferences" / "figures" / "funnel.png").is_file()
    assert (out / "iter-2" / "pairs" / "figures" / "score_gap_histogram.png").is_file()

    # SimPO trained and saved a model that loads back
    for k in (1, 2):
        record = json.loads((out / f"iter-{k}" / "policy" / "synthalign-train.json").read_text())
        assert record["kind"] == "simpo" and record["rows"] == len(load_dataset(str(out / f"iter-{k}" / "preferences"), split="train"))
        AutoModelForCausalLM.from_pretrained(out / f"iter-{k}" / "policy")

    # interrupt iteration 2 during SimPO: the saved model is gone, the manifest says running
    policy2 = out / "iter-2" / "policy"
    (policy2 / "synthalign-train.json").unlink()
    (policy2 / "model.safetensors").unlink()
    manifest["iterations"][1]["status"] = "running"
    del manifest["iterations"][1]["stages"]["simpo"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    before_1 = _mtimes(out / "iter-1")
    before_2 = {k: v for k, v in _mtimes(out / "iter-2").items() if not k.startswith("policy")}

    proc = _loop(RECIPE, out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _mtimes(out / "iter-1") == before_1  # the finished iteration was not redone
    after_2 = {k: v for k, v in _mtimes(out / "iter-2").items() if not k.startswith("policy")}
    assert after_2 == before_2  # nor the finished stages of the interrupted one
    resumed = json.loads((out / "manifest.json").read_text())["iterations"][1]
    assert resumed["status"] == "done" and (policy2 / "model.safetensors").is_file()

    # a changed recipe is refused instead of mixing two runs in one folder
    changed = tmp_path / "changed.yaml"
    data = yaml.safe_load(RECIPE.read_text())
    data["pairs_per_iteration"] = 5
    for section in ("seed_data", "corpus"):
        data[section]["source"] = str(RECIPE.parent / data[section]["source"])
    changed.write_text(yaml.safe_dump(data))
    proc = _loop(changed, out, 3)
    assert proc.returncode == 2 and "different recipe" in proc.stderr
