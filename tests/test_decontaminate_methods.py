"""Decontamination inside every method's pipeline: the step runs, drops or flags, the card counts.

rDPO and Condor run end to end through the CLI on offline models (rDPO's seed prompts
reach the data as they are, so an evaluation item planted among them must be caught).
GRA and SynPO generate their prompts, so for them the tests check where the step sits
in the pipeline and that their publishing steps honour its verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from condor_recipe import TINY_CONDOR
from datasets import load_dataset
from rdpo_recipe import write_tiny_rdpo_recipe
from rerun import fresh_home_env

from synthalign.contract import State
from synthalign.pipelines.gra import GRARecipe
from synthalign.pipelines.gra import build_pipeline as build_gra
from synthalign.pipelines.synpo import pairs_pipeline
from synthalign.pipelines.synpo_recipe import SynPORecipe
from synthalign.steps.synpo_publish import SelectPairs

EVALSETS = Path(__file__).parent / "data" / "evalsets"
ARITH, FACTS = EVALSETS / "mini_arith.jsonl", EVALSETS / "mini_facts.jsonl"


def _generate(method: str, recipe: Path, out: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthalign.cli", "generate", method, "--config", str(recipe), "--output", str(out)],
        env=fresh_home_env(home), capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _pipeline_steps(folder: Path) -> list[str]:
    dump = yaml.safe_load((folder / "pipeline.yaml").read_text())
    return [step["name"] for step in dump["pipeline"]["steps"]]


def test_rdpo_drops_a_planted_eval_item_and_the_card_counts_it(tmp_path: Path) -> None:
    planted = json.loads(ARITH.read_text().splitlines()[3])["question"]
    seeds = tmp_path / "seeds.jsonl"
    prompts = [f"Tell me about item {i}. " * (1 + i % 3) for i in range(7)] + [planted]
    seeds.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    recipe = write_tiny_rdpo_recipe(
        tmp_path,
        "rdpo-decontaminate",
        seeds,
        batch=4,
        teacher={"max_new_tokens": 24},
        decontaminate={"against": [f"{ARITH}:test:question"], "embedding_threshold": None},
    )
    out = tmp_path / "out"
    proc = _generate("rdpo", recipe, out, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = load_dataset(str(out), "all", split="train")
    caught = [r for r in rows if r["prompt"] == planted]
    assert len(caught) == 1
    assert (caught[0]["drop_stage"], caught[0]["drop_reason"]) == (
        "decontaminate",
        "contaminated: mini_arith",
    )
    assert caught[0]["contamination_kind"] == "ngram" and caught[0]["contamination_item"] == planted
    assert all(r["contamination"] is None for r in rows if r["prompt"] != planted)
    for config in ("rdpo", "sft"):
        if (out / "data" / config).is_dir():
            published = load_dataset(str(out), config, split="train")
            assert planted not in json.dumps(published.to_list()), (
                f"{config} published the eval item"
            )
    card = (out / "README.md").read_text()
    assert "## Decontamination" in card and "| mini_arith | 1 | 0 |" in card
    assert "decontaminate" in _pipeline_steps(out)


def test_condor_flags_against_an_eval_set_with_embeddings_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "condor.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                **TINY_CONDOR,
                "num_samples": 6,
                "cache_dir": str(tmp_path / "cache"),
                "decontaminate": {"against": [str(FACTS)], "action": "flag"},
            }
        )
    )
    out = tmp_path / "out"
    proc = _generate("condor", recipe, out, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    generations = load_dataset(str(out), "generations", split="train")
    assert {"contamination", "contamination_kind", "contamination_score"} <= set(
        generations.column_names
    )
    assert "decontaminate" not in set(generations["drop_stage"]), "flag must not drop"
    card = (out / "README.md").read_text()
    assert f"of the {len(generations)} rows considered was checked against 1 evaluation set" in card
    assert "| mini_facts |" in card
    steps = _pipeline_steps(out)
    assert steps.index("refine_response") < steps.index("decontaminate")


def _successors(pipeline: Any, name: str) -> set[str]:
    return set(pipeline.dag.get_step_successors(name))


def test_gra_and_synpo_pipelines_run_the_step_before_publishing() -> None:
    root = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"
    block = {"against": [str(FACTS)], "embedding_threshold": None}
    gra = GRARecipe.model_validate(
        {**yaml.safe_load((root / "gra-quickstart.yaml").read_text()), "decontaminate": block},
        context={"recipe_dir": str(root)},
    )
    pipeline = build_gra(gra, State(iteration=1))
    assert _successors(pipeline, "deduplicate") == {"decontaminate"}
    assert _successors(pipeline, "decontaminate") == {"enrich_samples"}
    synpo = SynPORecipe.model_validate(
        {**yaml.safe_load((root / "synpo-quickstart.yaml").read_text()), "decontaminate": block},
        context={"recipe_dir": str(root)},
    )
    models = dict.fromkeys(("generator", "policy", "improver", "initial"), "builtin:tiny-random")
    data = {
        "models": models,
        "rejected_column": "response_policy",
        "generation_seed": 0,
        "paragraph_skip": 0,
    }
    pairs = pairs_pipeline(synpo, State(iteration=1, data=data))
    assert _successors(pairs, "score_pairs") == {"decontaminate"}
    assert _successors(pairs, "decontaminate") == {"select_pairs"}


def test_synpo_selection_honours_a_contaminated_pair() -> None:
    select = SelectPairs(name="select_pairs", threshold=0.0)
    prompt = {
        "prompt": "p",
        "keywords": ["k"],
        "paragraph_position": 0,
        "kept": True,
        "drop_stage": None,
        "drop_reason": None,
    }
    scored = {
        0: {
            **prompt,
            "response_improved": "better",
            "response_policy": "worse",
            "score_chosen": 1.0,
            "score_rejected": 0.0,
            "decontaminate_error": "contaminated: mini_facts",
        }
    }
    row = select.judge(prompt, scored)
    assert (row["kept"], row["drop_stage"], row["drop_reason"]) == (
        False,
        "decontaminate",
        "contaminated: mini_facts",
    )
