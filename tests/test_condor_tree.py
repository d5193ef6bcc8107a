"""Condor's tree settings: recipe checks and a tiny-random run that grows the tree first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from condor_recipe import TINY_CONDOR
from rerun import fresh_home_env

from synthalign.llms import load_llm


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tag_sampling": "equal"}, "tag_sampling"),
        ({"tag_fraction": 0}, "tag_fraction"),
        ({"tag_fraction": 1.5}, "tag_fraction"),
        ({"knowledge_tree": {"expand_to": 0}}, "expand_to"),
        ({"knowledge_tree": {"expand_to": 2000, "size": 3}}, "size"),
    ],
)
def test_bad_tree_settings_fail_at_recipe_load(change: dict, message: str) -> None:
    from pydantic import ValidationError

    from synthalign.pipelines.condor import CondorRecipe

    with pytest.raises(ValidationError, match=message):
        CondorRecipe.model_validate({**TINY_CONDOR, **change})


def test_growth_target_below_the_base_tree_fails_in_preflight() -> None:
    from synthalign.errors import RecipeError
    from synthalign.pipelines.condor import CondorRecipe, preflight

    recipe = CondorRecipe.model_validate({**TINY_CONDOR, "knowledge_tree": {"expand_to": 500}})
    with pytest.raises(RecipeError, match=r"expand_to \(500\) must be above .* 1028 leaf tags"):
        preflight(recipe)


GROWN = {
    **TINY_CONDOR,
    "name": "condor-tiny-grown",
    "num_samples": 9,
    "knowledge_tree": {"expand_to": 1040, "num_new": 6, "llm": {"max_new_tokens": 200}},
    "tag_fraction": 0.5,
    "tag_sampling": "proportional",
}


def test_run_with_tree_growth_end_to_end(tmp_path: Path) -> None:
    """grow_tree is the pipeline's first stage: the rows draw from the grown tree, the card
    reports the growth, and pipeline.yaml holds it (a rerun reuses the cached tree)."""
    from datasets import load_dataset
    from distilabel.pipeline import Pipeline

    from synthalign.steps.knowledge_tree import load_tree

    recipe = tmp_path / "grown.yaml"
    recipe.write_text(yaml.safe_dump({**GROWN, "cache_dir": str(tmp_path / "cache")}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.cli", "generate", "condor", "--config", str(recipe),
         "--output", str(out)],
        env=fresh_home_env(tmp_path / "home"), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    [grown_file] = (tmp_path / "cache" / "knowledge_trees").glob("*.yaml")
    grown = load_tree(grown_file)
    gen = load_dataset(str(out), "generations", split="train")
    stats = gen[0]["knowledge_tree_stats"]
    assert stats["base_leaf_tags"] == 1028 and 1028 < stats["leaf_tags"] <= 1040
    assert stats["leaf_tags"] == grown.counts()["leaf_tags"] == 1028 + stats["added_tags"]
    assert stats["sampled_leaf_tags"] == round(0.5 * stats["leaf_tags"])
    assert set(gen["knowledge_tree"]) == {grown.fingerprint()}
    assert {tuple(p) for p in gen["tag_path"]} <= set(grown.leaf_paths())
    card = (out / "README.md").read_text()
    assert f"1028 -> {stats['leaf_tags']} leaf tags, {stats['added_tags']} tags added" in card
    assert "Tag sampling `proportional`" in card and "`tag_fraction: 0.5`" in card
    # pipeline.yaml carries the growth stage with its model and cached file (the CLI rerun of
    # a whole Condor pipeline is test_pipeline_yaml_reruns_from_a_clean_directory)
    rerun = Pipeline.from_yaml(out / "pipeline.yaml")
    grow = rerun.dag.get_step("grow_tree")["step"]
    assert list(rerun.dag.get_step_successors("grow_tree")) == ["sample_tags"]
    assert grow.tree_file == str(grown_file) and grow.expand_to == 1040
    assert grow.llm.model_name == load_llm("builtin:tiny-random").model_name
