"""rDPO's calibrated tau: invariance of the calibration, the judge level map, the recipe
switch, and the quickstart recipe (tiny-reward) end to end with its ``dsc`` config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_checks import generate_ok

from synthalign.errors import RecipeError
from synthalign.recipes import parse_recipe
from synthalign.steps.scoring import calibrated_temperature, coarse_tau
from synthalign.steps.tau import CalibrateTau, calibrated_taus

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"
SYNTHALIGN = Path(sys.executable).with_name("synthalign")

GAPS = [0.031, -0.012, 0.004, 0.027, -0.02, 0.0, 0.015]  # ArmoRM-scale gaps


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (5.0, 1.0), (-3.0, 40.0), (0.7, 0.01)])
def test_tau_is_the_same_when_scores_are_shifted_or_scaled(shift: float, scale: float) -> None:
    original = [0.5 + 0.01 * i for i in range(len(GAPS))]
    revised = [o + g for o, g in zip(original, GAPS, strict=True)]
    moved = [
        (scale * r + shift) - (scale * o + shift) for o, r in zip(original, revised, strict=True)
    ]
    reference, t_ref = calibrated_taus(GAPS)
    taus, temperature = calibrated_taus(moved)
    assert taus == pytest.approx(reference, abs=1e-9)
    assert temperature == pytest.approx(scale * t_ref)


def test_calibration_spreads_small_gaps_and_survives_no_spread() -> None:
    at_t1 = [1 / (1 + 2.718281828459045**-g) for g in GAPS]
    taus, _ = calibrated_taus(GAPS)
    spread = max(taus) - min(taus)  # type: ignore[operator]
    assert max(at_t1) - min(at_t1) < 0.02 and spread > 0.5
    assert calibrated_temperature([0.03, 0.03, 0.03]) == pytest.approx(0.03)  # tau = sigmoid(1)
    assert calibrated_temperature([0.0, 0.0]) == 1.0 and calibrated_temperature([]) == 1.0
    assert calibrated_temperature([None, float("nan"), 2.0, 4.0]) == pytest.approx(1.0)


def test_coarse_judge_levels_do_not_tie_at_one_half() -> None:
    assert coarse_tau(0) == pytest.approx(0.6)
    assert coarse_tau(1) == pytest.approx(0.9) and coarse_tau(-1) == pytest.approx(0.2)
    assert coarse_tau(2) > 0.9 > 0.6 > 0.2 > coarse_tau(-2)


def _row(s_orig: float, s_rev: float, chosen_is: str = "revised", **extra: Any) -> dict[str, Any]:
    s_c, s_r = (s_rev, s_orig) if chosen_is == "revised" else (s_orig, s_rev)
    return {
        "kept": True, "chosen_is": chosen_is, "score_original": s_orig, "score_revised": s_rev,
        "score_chosen": s_c, "score_rejected": s_r, "tau": 0.5, **extra,
    }  # fmt: skip


def _calibrate(rows: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    step = CalibrateTau(name="calibrate_tau", **kwargs)
    step.load()
    return next(iter(step.process(rows)))


def test_calibrate_step_uses_every_kept_pair_of_the_run() -> None:
    rows = [_row(1.0, 1.0 + g) for g in GAPS]
    rows.append({"kept": False, "tau": None, "score_original": 9.0, "score_revised": -9.0})
    out = _calibrate(rows)
    expected, temperature = calibrated_taus(GAPS)
    assert [r["tau"] for r in out[:-1]] == pytest.approx(expected)
    assert [r["tau_temperature"] for r in out[:-1]] == pytest.approx([temperature] * len(GAPS))
    assert {r["tau_calibration"] for r in out[:-1]} == {"auto"}
    assert out[-1]["tau"] is None and out[-1]["tau_temperature"] is None  # a drop stays one
    assert all(abs(r["tau_t1"] - 0.5) < 0.01 for r in out[:-1])  # before: no signal

    fixed = _calibrate([_row(0.0, 2.0)], tau_temperature=2.0)
    assert fixed[0]["tau"] == pytest.approx(1 / (1 + 2.718281828459045**-1))
    assert fixed[0]["tau_calibration"] == "fixed"


def test_binary_judge_gets_the_level_map_oriented_to_chosen() -> None:
    rows = [_row(1, 1), _row(0, 1), _row(1, 0), _row(1, 0, chosen_is="original")]
    out = _calibrate(rows, scorer="coarse_judge", clip=[0.05, 0.95])
    assert [r["tau"] for r in out] == pytest.approx([0.6, 0.9, 0.2, 0.8])
    assert {r["tau_calibration"] for r in out} == {"judge levels"}
    assert out[0]["tau_temperature"] is None


@pytest.mark.parametrize("bad", [0, -1.5, "sometimes", None, True])
def test_tau_temperature_is_auto_or_positive_in_one_line(bad: Any) -> None:
    from synthalign.pipelines.rdpo import RDPORecipe

    data = {"seed_data": {"source": "x.jsonl"}, "scoring": {"kind": "reward_model"}}
    assert parse_recipe(data, RDPORecipe).tau_temperature() == "auto"  # the default
    data["scoring"]["tau_temperature"] = 0.25
    assert parse_recipe(data, RDPORecipe).tau_temperature() == 0.25
    data["scoring"]["tau_temperature"] = bad
    with pytest.raises(RecipeError, match="tau_temperature") as info:
        parse_recipe(data, RDPORecipe)
    assert "\n" not in str(info.value) and "'auto' or a positive number" in str(info.value)


def test_judge_scale_picks_the_calibration() -> None:
    from synthalign.pipelines.rdpo import RDPORecipe, build_pipeline

    server = "openai:http://127.0.0.1:9/v1#m"  # never called: the pipeline is only built

    def calibrate_step(scale: str) -> CalibrateTau:
        recipe = parse_recipe(
            {
                "seed_data": {"source": str(RECIPES / "data" / "rdpo-quickstart.jsonl")},
                "teacher": {"llm": server},
                "scoring": {"kind": "judge", "judge": {"llm": server, "scale": scale}},
            },
            RDPORecipe,
        )
        return build_pipeline(recipe).dag.get_step("calibrate_tau")["step"]

    assert calibrate_step("0/1").scorer == "coarse_judge"
    assert calibrate_step("0-5").scorer == "judge"


# ------------------------------------------------------------------ quickstart


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped quickstart recipe (4 prompts, tiny-reward), its teacher swapped for
    ``builtin:tiny-random`` so it takes seconds; the cache in the test's folder."""
    tmp = tmp_path_factory.mktemp("rdpo-quickstart")
    recipe = yaml.safe_load((RECIPES / "rdpo-quickstart.yaml").read_text())
    recipe["cache_dir"] = str(tmp / "cache")
    recipe["seed_data"]["source"] = str(RECIPES / recipe["seed_data"]["source"])
    recipe["teacher"]["llm"] = "builtin:tiny-random"
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp / "dataset"
    generate_ok("rdpo", path, out, cwd=tmp, timeout=900)
    return out


@pytest.mark.slow
def test_quickstart_tau_spreads_and_the_card_shows_before_and_after(
    quickstart_folder: Path,
) -> None:
    from datasets import load_dataset

    pairs = load_dataset(str(quickstart_folder), "rdpo", split="train")
    everything = load_dataset(str(quickstart_folder), "all", split="train")
    taus = pairs["tau"]
    mean = sum(taus) / len(taus)
    std = (sum((t - mean) ** 2 for t in taus) / len(taus)) ** 0.5
    assert len(taus) >= 3 and std >= 0.1
    kept = everything.filter(lambda r: r["kept"])
    gaps = [r - o for o, r in zip(kept["score_original"], kept["score_revised"], strict=True)]
    assert pairs["tau_temperature"] == pytest.approx([calibrated_temperature(gaps)] * len(pairs))
    assert set(kept["tau_calibration"]) == {"auto"}
    readme = (quickstart_folder / "README.md").read_text()
    assert "std of tau at T = 1 (before)" in readme and "tau_temperature: auto" in readme
    generation = yaml.safe_load(pairs[0]["generation"])
    assert generation["tau_temperature"] == "auto"
    # synthalign.json records T and the spread before/after (Method.record_fields)
    record = json.loads((quickstart_folder / "synthalign.json").read_text())
    calibration = record["tau_calibration"]
    assert calibration["mode"] == "auto" and calibration["pairs"] == len(pairs)
    assert calibration["temperature"] == pytest.approx(calibrated_temperature(gaps))
    assert calibration["std_after"] == pytest.approx(std, abs=1e-3)
    assert calibration["std_before"] < calibration["std_after"]
    assert record["states"][0]["facts"] == {"tau_calibration": calibration}


@pytest.mark.slow
def test_quickstart_publishes_dsc_for_sft(quickstart_folder: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    from synthalign.trainers.sft import SFTRecipe

    dsc = load_dataset(str(quickstart_folder), "dsc", split="train")
    pairs = load_dataset(str(quickstart_folder), "rdpo", split="train")
    better = [r for r in pairs if r["score_revised"] > r["score_original"]]
    assert len(dsc) == len(better) > 0
    assert [m["messages"][-1]["content"] for m in dsc] == [
        r["chosen"][0]["content"] for r in better
    ]  # chosen = the revision in the quickstart
    assert dsc[0]["messages"][0]["role"] == "user" and dsc[0]["messages"][-1]["role"] == "assistant"
    counts = yaml.safe_load((quickstart_folder / "pipeline.yaml").read_text())
    assert "dsc" in {s["name"] for s in counts["pipeline"]["steps"]}  # a leaf of pipeline.yaml
    train = yaml.safe_load((RECIPES / "rdpo-train-quickstart-dsc.yaml").read_text())
    assert parse_recipe(train, SFTRecipe).dataset_config == "dsc"
    # `synthalign train sft` on it from the plain SFT recipe: --dataset-config picks dsc
    train = yaml.safe_load((RECIPES / "rdpo-train-quickstart-sft.yaml").read_text())
    assert train["dataset_config"] == "sft"
    train.update(max_steps=1, lora={"r": 2, "alpha": 4, "dropout": 0.0}, save_total_limit=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    out = tmp_path / "dsc-model"
    proc = subprocess.run(
        [str(SYNTHALIGN), "train", "sft", "--config", str(tmp_path / "train.yaml"),
         "--dataset", str(quickstart_folder), "--dataset-config", "dsc", "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((out / "synthalign-train.json").read_text())["dataset_config"] == "dsc"


def test_dataset_config_flag_overrides_the_training_recipe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthalign.cli import app
    from synthalign.trainers.common import load_train_recipe
    from synthalign.trainers.sft import SFTRecipe

    recipe = RECIPES / "rdpo-train-quickstart-sft.yaml"
    assert load_train_recipe(recipe, SFTRecipe).dataset_config == "sft"
    picked = load_train_recipe(recipe, SFTRecipe, dataset=str(tmp_path), dataset_config="dsc")
    assert picked.dataset_config == "dsc" and picked.dataset == str(tmp_path)
    assert "--dataset-config" in CliRunner().invoke(app, ["train", "--help"]).output
