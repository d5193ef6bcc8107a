"""The pairwise scorer: both orders cancel position bias, failures are recorded per row,
and rDPO runs with ``scoring: {kind: pairwise}`` on a real offline model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_checks import generate_ok
from pydantic import Field

from synthalign.errors import RecipeError
from synthalign.llms.base import Completion, SynthLLM
from synthalign.recipes import parse_recipe
from synthalign.steps.pairwise import CompareWithLLM

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"


class ScriptedJudge(SynthLLM):
    """A scripted verdict per chat (parsing unit tests only): ``pick(a, b)`` -> reply."""

    mode: str = "likes_revision"
    seen: list[list[dict[str, str]]] = Field(default_factory=list)

    def _generate_batch(
        self, conversations: list, schemas: list, **kwargs: Any
    ) -> list[Completion]:
        self.seen.extend(conversations)
        replies = []
        for chat in conversations:
            text = chat[-1]["content"]
            a = text.split("[Reply A]")[1].split("[End of reply A]")[0]
            if self.mode == "always_a":
                verdict = {"rationale": "A is first.", "better": "A", "confidence": 80}
            elif self.mode == "broken":
                verdict = None
            else:
                better = "A" if "revised" in a else "B"
                verdict = {"rationale": "The revision.", "better": better, "confidence": 90}
            replies.append(Completion(json.dumps(verdict) if verdict else "not json", 1, 1))
        return replies


def _compare(mode: str) -> list[dict[str, Any]]:
    step = CompareWithLLM(
        name="compare_pairwise", llm=ScriptedJudge(model="scripted", mode=mode), criterion="be safe"
    )
    step.load()
    rows = [
        {"prompt": "q", "response_original": "original text", "response_revised": "revised text"},
        {"prompt": "q", "response_original": "original text", "response_revised": None},
    ]
    return next(iter(step.process(rows)))


def test_both_orders_give_the_probability_and_cancel_position_bias() -> None:
    liked, missing = _compare("likes_revision")
    p = 1 / (1 + math.exp(-liked["score_revised"]))
    assert liked["score_original"] == 0.0 and p == pytest.approx(0.9)
    assert liked["scorer"] == "pairwise_llm:" + liked["pairwise_model"]
    assert liked["pairwise_error"] is None and "reversed" in liked["pairwise_rationale"]
    assert missing["score_revised"] is None and "no response_original" in missing["pairwise_error"]
    (biased, _) = _compare("always_a")  # says "A" whatever it is shown: no preference
    assert biased["score_revised"] == pytest.approx(0.0, abs=1e-12)


def test_a_verdict_that_does_not_parse_is_a_recorded_error() -> None:
    broken, _ = _compare("broken")
    assert broken["score_original"] is None and broken["score_revised"] is None
    assert broken["pairwise_error"].startswith("pairwise verdict:")
    assert "not json" in broken["pairwise_raw"]


def test_pairwise_recipe_needs_its_model_in_one_line() -> None:
    from synthalign.pipelines.rdpo import RDPORecipe

    with pytest.raises(RecipeError, match=r"scoring\.pairwise") as info:
        parse_recipe({"seed_data": {"source": "x"}, "scoring": {"kind": "pairwise"}}, RDPORecipe)
    assert "\n" not in str(info.value)
    recipe = parse_recipe(
        {
            "seed_data": {"source": "x"},
            "scoring": {"kind": "pairwise", "pairwise": {"llm": "builtin:tiny-random"}},
        },
        RDPORecipe,
    )
    assert recipe.llm_specs()[-1] == "builtin:tiny-random" and recipe.tau_scorer() == "pairwise"


@pytest.mark.slow
def test_rdpo_with_a_pairwise_scorer_on_a_real_model(tmp_path: Path) -> None:
    """The quickstart with ``builtin:tiny-random`` as teacher and as pairwise judge: every
    row is scored or dropped with a reason, and tau is the pairwise probability."""
    from datasets import load_dataset

    recipe = yaml.safe_load((RECIPES / "rdpo-quickstart.yaml").read_text())
    recipe["cache_dir"] = str(tmp_path / "cache")
    recipe["seed_data"]["source"] = str(RECIPES / recipe["seed_data"]["source"])
    recipe["teacher"]["llm"] = "builtin:tiny-random"
    recipe["scoring"] = {
        "kind": "pairwise",
        "pairwise": {"llm": "builtin:tiny-random", "max_new_tokens": 96},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "dataset"
    generate_ok("rdpo", path, out, cwd=tmp_path, timeout=900)
    everything = load_dataset(str(out), "all", split="train")
    assert len(everything) == 4 and sum(everything["kept"]) >= 1
    for row in everything:
        assert row["scorer"].startswith("pairwise_llm:") or row["drop_stage"] != "scoring"
        if row["kept"]:
            p = 1 / (1 + math.exp(-(row["score_revised"] - row["score_original"])))
            assert row["tau"] == pytest.approx(p) and row["tau_calibration"] == "pairwise"
        else:
            assert row["drop_reason"]
    assert "pairwise model `builtin:tiny-random`" in (out / "README.md").read_text()


@pytest.mark.slow
def test_synpo_keeps_pairs_by_the_pairwise_preference(tmp_path: Path) -> None:
    """SynPO's quickstart with ``scorer: {kind: pairwise}``: both the improver set and the
    pairs are scored by the pairwise model, and the gap is its log-odds for chosen."""
    from datasets import load_dataset

    source = RECIPES / "synpo-quickstart.yaml"
    recipe = yaml.safe_load(source.read_text())
    for section in ("seed_data", "corpus"):
        recipe[section]["source"] = str(RECIPES / recipe[section]["source"])
    recipe["cache_dir"] = str(tmp_path / "cache")
    recipe["scorer"] = {
        "kind": "pairwise",
        "pairwise": {"llm": "builtin:tiny-random", "max_new_tokens": 96},
        "improver_threshold": -1.0,
        "pair_threshold": -1.0,  # tiny-random has no taste: keep every scored pair
    }
    path = tmp_path / "synpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "pairs"
    generate_ok("synpo", path, out, cwd=tmp_path, timeout=900)
    pairs = load_dataset(str(out), "pairs", split="train")
    assert len(pairs) > 0 and all(s.startswith("pairwise_llm:") for s in pairs["scorer"])
    for chosen, rejected, gap in zip(
        pairs["score_chosen"], pairs["score_rejected"], pairs["score_gap"], strict=True
    ):
        assert chosen == 0.0 and gap == pytest.approx(-rejected)  # logit P(chosen preferred)
