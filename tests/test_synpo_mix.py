"""SynPO's ``mix_iterations``: which iterations' pairs the preference set (and SimPO) gets.

``true`` (default, the paper's growing set) mixes the pairs of iterations 1..k, each row
with its ``iteration``; ``false`` keeps iteration k's own pairs alone. The wiring is
checked on the driver's own :class:`Progress`; the shipped per-iteration recipe runs two
iterations on builtin:tiny-random through the CLI, and the preference folder reruns
from its ``pipeline.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rerun import assert_rerun_reproduces
from test_synpo_loop import RECIPE, _loop

from synthalign.contract import Progress, State
from synthalign.errors import RecipeError
from synthalign.pipelines.synpo import next_state
from synthalign.pipelines.synpo_recipe import SynPORecipe
from synthalign.recipes import load_recipe

PER_ITERATION = RECIPE.with_name("synpo-quickstart-per-iteration.yaml")


def _recipe_file(tmp_path: Path, source: Path = RECIPE, **changes: Any) -> Path:
    data = yaml.safe_load(source.read_text())
    for section in ("seed_data", "corpus"):
        data[section]["source"] = str(source.parent / data[section]["source"])
    data.update(cache_dir=str(tmp_path / "cache"), **changes)
    path = tmp_path / "synpo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _progress(tmp_path: Path, k: int) -> Progress:
    """A run record after iteration k's pairs stage, every iteration with pairs."""
    states = [
        {"key": f"{j}:pairs", "iteration": j, "path": str(tmp_path / f"iter-{j}/pairs"),
         "counts": {"pairs": 3}}
        for j in range(1, k + 1)
    ]  # fmt: skip
    return Progress(states)


@pytest.mark.parametrize(
    ("mix", "expected"), [(True, ["pairs-1", "pairs-2"]), (False, ["pairs-2"])]
)
def test_preference_state_reads_every_iteration_or_its_own(
    tmp_path: Path, mix: bool, expected: list[str]
) -> None:
    recipe = load_recipe(_recipe_file(tmp_path, mix_iterations=mix), SynPORecipe)
    state = next_state(recipe, State(iteration=2, stage="pairs"), _progress(tmp_path, 2))
    assert state is not None and state.stage == "preferences"
    assert sorted(state.inputs) == expected
    assert state.data["mix_iterations"] is mix
    assert state.train[0].config == "preferences"


def test_the_default_mixes_and_a_bad_value_fails_in_one_line(tmp_path: Path) -> None:
    assert load_recipe(_recipe_file(tmp_path), SynPORecipe).mix_iterations is True
    assert load_recipe(PER_ITERATION, SynPORecipe).mix_iterations is False
    with pytest.raises(RecipeError, match="'mix_iterations' input should be a valid boolean") as e:
        load_recipe(_recipe_file(tmp_path, mix_iterations="sometimes"), SynPORecipe)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_per_iteration_recipe_trains_each_iteration_on_its_own_pairs(tmp_path: Path) -> None:
    from datasets import load_dataset

    steps = {"max_steps": 1}
    recipe = _recipe_file(
        tmp_path,
        PER_ITERATION,
        **{
            section: {**yaml.safe_load(PER_ITERATION.read_text())[section], **steps}
            for section in ("generator_training", "improver_training", "simpo_training")
        },
    )
    out = tmp_path / "synpo"
    proc = _loop(recipe, out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]

    for k in (1, 2):
        folder = out / f"iter-{k}" / "preferences"
        prefs = load_dataset(str(folder), "preferences", split="train")
        pairs = load_dataset(str(out / f"iter-{k}" / "pairs"), "pairs", split="train")
        assert set(prefs["iteration"]) == {k} and len(prefs) == len(pairs) > 0
        info = json.loads((folder / "synthalign.json").read_text())
        assert info["mix_iterations"] is False and info["recipe"]["mix_iterations"] is False
        assert "`mix_iterations: false`" in (folder / "README.md").read_text()
        trained = json.loads((out / f"iter-{k}" / "policy" / "synthalign-train.json").read_text())
        assert trained["kind"] == "simpo" and trained["rows"] == len(prefs)

    # the config is made by the pipeline: its pipeline.yaml reruns it, one iteration's pairs
    assert_rerun_reproduces(out / "iter-2" / "preferences", tmp_path / "rerun")


# ------------------------------------------------------------------ mix_prompts (SynPO Mix.)


@pytest.mark.slow  # ~30 s of CPU: one pairs stage on builtin:tiny-random
def test_mix_prompts_adds_the_manual_prompts_and_a_missing_file_fails_before_models(
    tmp_path: Path,
) -> None:
    """The paper's "SynPO Mix." (section 4.1, Table 7): manual prompts go through the
    same pairs stage as the synthetic ones, on builtin:tiny-random (``generate synpo``)."""
    from datasets import load_dataset
    from test_synpo_loop import _cli

    seeds = RECIPE.parent / "data" / "synpo-seed.jsonl"
    mix = {"source": str(seeds), "limit": 3}
    out = tmp_path / "pairs"
    proc = _cli(
        "generate", "synpo", "--config", str(_recipe_file(tmp_path, mix_prompts=mix)),
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    prompts = load_dataset(str(out), "prompts", split="train")
    manual = [r for r in prompts if r["prompt_gen_model"] == "manual:synpo-seed.jsonl"]
    firsts = [json.loads(line)["messages"][0]["content"] for line in seeds.read_text().splitlines()]
    assert [r["prompt"] for r in manual] == firsts[:3]
    assert len(prompts) == 12 + 3 and all(r["keywords"] == [] for r in manual)
    assert all(r["paragraph_position"] < 0 for r in manual)
    candidates = load_dataset(str(out), "candidates", split="train")
    assert sum(r["keywords"] == [] for r in candidates) == 3  # answered, improved, scored too
    answered = [r for r in candidates if r["keywords"] == [] and r["kept"]]
    assert all(r["response_improved"] and r["score_gap"] is not None for r in answered)
    pairs = load_dataset(str(out), "pairs", split="train")
    assert {r["generator_model"] for r in pairs if not r["keywords"]} <= {"manual:synpo-seed.jsonl"}

    missing = {"source": str(tmp_path / "nope.jsonl")}
    proc = _cli(
        "generate", "synpo", "--config", str(_recipe_file(tmp_path, mix_prompts=missing)),
        "--output", str(tmp_path / "never"),
    )  # fmt: skip
    assert proc.returncode != 0 and "nope.jsonl" in proc.stderr
    assert not (tmp_path / "never").exists()
