"""rDPO end to end: self-critique conversation, pairing into tau, Hub folder, training, rerun."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_checks import generate_ok
from pydantic import Field, SecretStr
from rdpo_recipe import write_tiny_rdpo_recipe
from rerun import assert_rerun_reproduces

from synthalign.llms import apply_api_key
from synthalign.llms.base import Completion, SynthLLM
from synthalign.recipes import load_recipe, parse_recipe
from synthalign.steps.publish import dropped, kept

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"
SYNTHALIGN = Path(sys.executable).with_name("synthalign")


class CannedLLM(SynthLLM):
    """Replies with its turn's canned text and remembers every chat it was sent."""

    replies: list[str | None]
    seen: list[list[dict[str, str]]] = Field(default_factory=list)

    def _generate_batch(
        self, conversations: list, schemas: list, **kwargs: Any
    ) -> list[Completion]:
        self.seen.extend(conversations)
        return [
            Completion(self.replies[len(c) // 2 % len(self.replies)] or "", 1, 1)
            for c in conversations
        ]


# ------------------------------------------------------------------ conversation


def test_self_critique_revision_is_one_growing_conversation() -> None:
    from synthalign.steps.rdpo import PRINCIPLES, SelfCritiqueRevision

    # chat lengths: answer = 2 (system + user), critique = 4, revision = 6 -> replies[1], [2], [3]
    llm = CannedLLM(model="canned-teacher", replies=["?", "ORIGINAL", "CRITIQUE", "REVISED"])
    task = SelfCritiqueRevision(name="scr", llm=llm, system_column="system")
    task.load()
    row = {
        "prompt": "Be a pirate!",
        "system": "You are Ada.",
        "principle_text": PRINCIPLES["persona"].statement,
    }
    (out,) = list(task.process([row]))
    answer, critique, revision = llm.seen
    assert answer == [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "Be a pirate!"},
    ]
    assert critique[:2] == answer and critique[2] == {"role": "assistant", "content": "ORIGINAL"}
    assert (
        critique[3]["role"] == "user" and PRINCIPLES["persona"].statement in critique[3]["content"]
    )
    assert revision[:4] == critique and revision[4] == {"role": "assistant", "content": "CRITIQUE"}
    assert PRINCIPLES["persona"].statement in revision[5]["content"]
    assert (out[0]["response_original"], out[0]["critique"], out[0]["response_revised"]) == (
        "ORIGINAL",
        "CRITIQUE",
        "REVISED",
    )
    assert (
        out[0]["critique_prompt"].startswith("rdpo_critique.jinja2@")
        and out[0]["revision_model"] == "canned-teacher"
    )


def test_fold_system_moves_the_persona_into_the_first_user_turn() -> None:
    from synthalign.steps.rdpo import SelfCritiqueRevision

    task = SelfCritiqueRevision(
        name="scr",
        llm=CannedLLM(model="c", replies=["x"]),
        system_column="system",
        fold_system=True,
    )
    chat = task.conversation(
        {"prompt": "Be a pirate!", "system": "You are Ada.", "principle_text": "p"}, 2
    )
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[0]["content"] == "You are Ada.\n\nBe a pirate!"


def test_a_failed_turn_skips_the_rest_of_its_conversation() -> None:
    from synthalign.steps.rdpo import SelfCritiqueRevision

    llm = CannedLLM(model="canned", replies=["", "x", "y", "z"])  # answer turn (chat of 1) is empty
    task = SelfCritiqueRevision(name="scr", llm=llm)
    task.load()
    (out,) = list(task.process([{"prompt": "q", "principle_text": "be kind"}]))
    assert len(llm.seen) == 1
    assert out[0]["answer_error"] == "empty output"
    assert (
        out[0]["critique_error"] == "skipped: answer failed"
        and out[0]["revision_error"] == "skipped: critique failed"
    )
    assert out[0]["response_revised"] is None


# ----------------------------------------------------------------------- pairing


def _scored(**overrides: Any) -> dict[str, Any]:
    row = {
        "prompt": "q",
        "response_original": "orig",
        "response_revised": "rev",
        "score_original": 1.0,
        "score_revised": 3.0,
        "scorer": "test",
        "answer_error": None,
        "critique_error": None,
        "revision_error": None,
    }
    row.update(overrides)
    return row


def _pair(rows: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    from synthalign.steps.rdpo import PairWithPreferenceProbability

    step = PairWithPreferenceProbability(name="pair", **kwargs)
    step.load()
    return next(iter(step.process(rows)))


def test_revised_is_chosen_and_tau_says_how_sure_the_scorer_is() -> None:
    up, down = _pair(
        [_scored(), _scored(score_original=3.0, score_revised=1.0)], tau_temperature=2.0
    )
    assert (
        up["chosen"] == [{"role": "assistant", "content": "rev"}]
        and up["prompt_messages"][-1]["content"] == "q"
    )
    assert up["tau"] == pytest.approx(1 / (1 + 2.718281828459045**-1))
    assert (
        down["chosen_is"] == "revised" and down["tau"] < 0.5
    )  # a worse revision keeps its place, tau flips
    (higher,) = _pair([_scored(score_original=3.0, score_revised=1.0)], chosen="higher_score")
    assert (
        higher["chosen_is"] == "original" and higher["tau"] > 0.5 and higher["score_chosen"] == 3.0
    )


def test_every_unusable_row_gets_one_counted_reason() -> None:
    rows = _pair(
        [
            _scored(answer_error="empty output"),
            _scored(judge_revised_error="out of scale: 7 not in [0, 5]", score_revised=None),
            _scored(judge_original_error="schema: score: Field required", score_original=None),
            _scored(score_original=2.0, score_revised=2.0),
            _scored(response_revised="orig"),
            _scored(),
        ],
        tie="drop",
        judge_prefixes=["judge_original", "judge_revised"],
    )
    reasons = [r["drop_reason"] for r in rows]
    assert reasons == [
        "answer failed",
        "judge: out of scale",
        "judge: schema",
        "tie",
        "identical responses",
        None,
    ]
    assert [r["drop_stage"] for r in rows] == [
        "generation",
        "scoring",
        "scoring",
        "pairing",
        "pairing",
        None,
    ]
    assert [r["kept"] for r in rows] == [False] * 5 + [True]
    assert rows[1]["drop_detail"].startswith("out of scale") and rows[1]["tau"] is None
    assert rows[5]["tau"] is not None


def test_published_configs_keep_their_schema_when_empty_or_all_none() -> None:
    from datasets import Dataset

    from synthalign.steps.publish import DROP_COLUMNS
    from synthalign.steps.rdpo_publish import (
        SelectAllRows,
        SelectPreferencePairs,
        SelectSFTMessages,
    )

    rows = _pair(
        [_scored(), _scored(answer_error="empty output")],
        judge_prefixes=["judge_original", "judge_revised"],
    )
    leaves = {
        "rdpo": SelectPreferencePairs(
            name="rdpo", judge_prefixes=["judge_original", "judge_revised"]
        ),
        "dpo": SelectPreferencePairs(name="dpo", with_tau=False),
        "sft": SelectSFTMessages(name="sft"),
        "all": SelectAllRows(name="all", judge_prefixes=["judge_original", "judge_revised"]),
    }
    out = {name: next(iter(leaf.process([dict(r) for r in rows]))) for name, leaf in leaves.items()}
    assert [len(out[n]) for n in leaves] == [1, 1, 1, 2]
    for name, leaf in leaves.items():
        features = leaf.features()
        assert list(out[name][0]) == list(features) == leaf.outputs, (
            name
        )  # schema declared once, rows match it
        Dataset.from_list(out[name]).cast(
            features
        )  # all-None judge columns still take their declared types
    assert (
        set(DROP_COLUMNS) <= set(leaves["all"].features()) and "tau" not in leaves["dpo"].features()
    )
    assert (
        out["rdpo"][0]["prompt"] == [{"role": "user", "content": "q"}]
        and out["all"][0]["prompt"] == "q"
    )
    assert out["sft"][0]["messages"][-1] == {"role": "assistant", "content": "rev"}


def test_card_counts_drop_reasons_and_draws_figures() -> None:
    from datasets import Dataset

    from synthalign.pipelines.rdpo import METHOD
    from synthalign.run import make_card

    drops = [kept(), dropped("scoring", "judge: out of scale"), dropped("pairing", "tie")]
    scores = [(0, 5), (1, None), (2, 2)]
    all_rows = Dataset.from_list(
        [
            {"prompt": p, "score_original": o, "score_revised": r, **d}
            for p, (o, r), d in zip("abc", scores, drops, strict=True)
        ]
    )
    pairs = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "a"}], "tau": 0.98, "principle": "persona"}]
    )
    card = make_card(
        METHOD,
        {"rdpo": pairs, "all": all_rows},
        {"recipe": {"behaviour": {"principle": "persona"}}},
        "rdpo",
    )
    # the shared frame's funnel, from the drop columns of `all`
    assert (
        "| scoring | judge: out of scale | 1 |" in card.body
        and "| pairing | tie | 1 |" in card.body
    )
    assert "| (published) | kept | 1 |" in card.body
    assert "| persona | 1 |" in card.body
    assert set(card.figures) == {"tau_hist.png", "scores_scatter.png"}
    assert all(png.startswith(b"\x89PNG") for png in card.figures.values())
    assert "rdpo" in card.metadata["tags"]


def test_card_copes_with_configs_left_out_for_having_no_rows() -> None:
    from datasets import Dataset

    from synthalign.pipelines.rdpo import METHOD
    from synthalign.run import make_card

    row = {"prompt": "a", "score_original": 1.0, "score_revised": None}
    nothing_kept = Dataset.from_list([{**row, **dropped("scoring", "reward model: no score")}])
    card = make_card(METHOD, {"all": nothing_kept}, {"recipe": {}}, "all")
    assert "| rdpo | 0 |" in card.body and "| sft | 0 |" in card.body and "| all | 1 |" in card.body
    assert "| scoring | reward model: no score | 1 |" in card.body and not card.figures


# ----------------------------------------------------------------------- recipes


def test_shipped_recipes_parse() -> None:
    from synthalign.pipelines.rdpo import RDPORecipe
    from synthalign.trainers.rdpo import RDPOTrainRecipe
    from synthalign.trainers.sft import SFTRecipe

    generation = sorted(RECIPES.glob("rdpo-*.yaml"))
    assert {p.name for p in generation} >= {
        "rdpo-safety.yaml",
        "rdpo-persona.yaml",
        "rdpo-sycophancy.yaml",
        "rdpo-quickstart.yaml",
    }
    for path in generation:
        if "-train" in path.name:
            sft = path.stem.endswith(("-sft", "-dsc"))
            load_recipe(path, SFTRecipe if sft else RDPOTrainRecipe)
            continue
        assert load_recipe(path, RDPORecipe).tau_temperature() == "auto"
    persona = load_recipe(RECIPES / "rdpo-persona.yaml", RDPORecipe)
    assert persona.judge_settings()[1] == (0, 5) and persona.teacher.llm.startswith("vllm:")
    assert load_recipe(RECIPES / "rdpo-sycophancy.yaml", RDPORecipe).judge_settings()[1] == (-5, 5)


def test_recipe_errors_are_one_line() -> None:
    from synthalign.errors import RecipeError
    from synthalign.pipelines.rdpo import RDPORecipe, preflight

    with pytest.raises(RecipeError, match="scale"):
        parse_recipe(
            {
                "seed_data": {"source": "x.jsonl"},
                "scoring": {
                    "kind": "judge",
                    "judge": {"llm": "builtin:tiny-random", "scale": "1-10"},
                },
            },
            RDPORecipe,
        )
    with pytest.raises(RecipeError, match="judge"):
        parse_recipe({"seed_data": {"source": "x.jsonl"}, "scoring": {"kind": "judge"}}, RDPORecipe)
    custom = parse_recipe(
        {
            "seed_data": {"source": str(RECIPES / "data" / "rdpo-quickstart.jsonl")},
            "behaviour": {"principle": "kindness"},
            "scoring": {"kind": "judge", "judge": {"llm": "builtin:tiny-random"}},
        },
        RDPORecipe,
    )
    with pytest.raises(RecipeError, match="principle"):
        preflight(custom)


@pytest.mark.parametrize(
    ("old", "where", "new"),
    [
        ({"seeds": {"source": "x.jsonl"}}, "seeds", "seed_data"),
        (
            {"scoring": {"kind": "reward_model", "temperature": 2.0}},
            "scoring.temperature",
            "tau_temperature",
        ),
        ({"input_batch_size": 8}, "input_batch_size", "teacher.batch_size"),
    ],
)
def test_old_recipe_keys_name_their_new_key_in_one_line(
    old: dict[str, Any], where: str, new: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from synthalign.cli import app

    data = {"seed_data": {"source": "x.jsonl"}, **old}
    if "seeds" in old:
        del data["seed_data"]  # an old recipe: its seeds key is why seed_data is missing
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(
        app, ["generate", "rdpo", "--config", str(path), "--output", str(tmp_path / "out")]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and f"key '{where}' was renamed to '{new}'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_role_settings_reach_their_llms_and_the_row_record() -> None:
    from synthalign.pipelines.rdpo import RDPORecipe, build_pipeline

    server = "openai:http://127.0.0.1:9/v1"  # never called: the pipeline is only built
    role = {
        "llm": f"{server}#teacher",
        "api_key": "teacher-key",
        "temperature": 0.3,
        "batch_size": 5,
    }
    recipe = parse_recipe(
        {
            "seed_data": {"source": str(RECIPES / "data" / "rdpo-quickstart.jsonl")},
            "api_key": "recipe-key",
            "teacher": role,
            "scoring": {
                "kind": "judge",
                "judge": {"llm": f"{server}#judge", "batch_size": 7},
                "tau_temperature": 0.5,
            },
        },
        RDPORecipe,
    )
    pipeline = build_pipeline(recipe)
    step = {name: pipeline.dag.get_step(name)["step"] for name in pipeline.dag}
    teacher, judge = step["self_critique_revision"].llm, step["score_with_judge"].llm
    # the role's own key; the driver gives the recipe's key to every openai: LLM still without one
    assert teacher.api_key == SecretStr("teacher-key") and judge.api_key is None
    assert apply_api_key(pipeline, recipe.api_key) == 1
    assert teacher.api_key == SecretStr("teacher-key") and judge.api_key == SecretStr("recipe-key")
    assert (
        teacher.generation_kwargs["temperature"] == 0.3
        and judge.generation_kwargs["temperature"] == 0.0
    )
    assert (
        step["self_critique_revision"].input_batch_size == 5
        and step["score_with_judge"].input_batch_size == 7
    )
    assert step["pair_with_preference_probability"].tau_temperature == 0.5
    generation = step["pair_with_preference_probability"].generation
    assert (
        generation["tau_temperature"] == 0.5 and generation["teacher_kwargs"]["temperature"] == 0.3
    )
    assert generation["scorer"] == {
        "kind": "judge",
        "llm": "openai:http://127.0.0.1:9/v1#judge",
        "scale": [0, 1],
        "max_new_tokens": 256,
        "temperature": 0.0,
    }
    dumped = repr(pipeline.dump())  # what pipeline.yaml holds
    assert "teacher-key" not in dumped and "recipe-key" not in dumped


# ------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def rdpo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synthalign generate rdpo` on offline models (tiny teacher, tiny reward model) -> Hub folder.

    Run as a subprocess, like a user would: distilabel forks its step processes, and
    forking a test process whose torch thread pools are already running (the trainer
    tests) can deadlock the children.
    """
    tmp = tmp_path_factory.mktemp("rdpo")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps(
                {"question": f"Tell me about item {i}. " * (1 + i % 3), "persona": "You are Ada."}
            )
            + "\n"
            for i in range(6)
        )
    )
    path = write_tiny_rdpo_recipe(
        tmp,
        "rdpo-e2e",
        seeds,
        batch=4,
        teacher={"max_new_tokens": 24},
        seed_data={"source": str(seeds), "prompt_column": "question", "system_column": "persona"},
        behaviour={"principle": "persona"},
    )
    out = tmp / "dataset"
    proc = generate_ok("rdpo", path, out, cwd=tmp, timeout=1200)
    assert f"dataset written to {out}" in proc.stdout
    return out


@pytest.mark.slow
def test_generated_folder_loads_with_trl_columns_and_a_card(rdpo_folder: Path) -> None:
    from datasets import load_dataset

    from synthalign.hub import validate_hub_folder

    validate_hub_folder(rdpo_folder)
    pairs = load_dataset(str(rdpo_folder), "rdpo", split="train")
    everything = load_dataset(str(rdpo_folder), "all", split="train")
    assert len(everything) == 6 and len(pairs) == sum(everything["kept"])
    assert len(pairs) > 0
    for is_kept, stage, reason in zip(
        everything["kept"], everything["drop_stage"], everything["drop_reason"], strict=True
    ):
        assert (
            (stage is None and reason is None)
            if is_kept
            else (stage in ("generation", "critique", "revision", "scoring", "pairing") and reason)
        )
    row = pairs[0]
    assert (
        row["prompt"][0] == {"role": "system", "content": "You are Ada."}
        and row["prompt"][-1]["role"] == "user"
    )
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert all(0.0 <= t <= 1.0 for t in pairs["tau"])
    assert (
        row["scorer"] == "reward_model:builtin:tiny-reward"
        and row["principle"] == "persona"
        and row["critique"]
    )
    dpo = load_dataset(str(rdpo_folder), "dpo", split="train")
    assert "tau" not in dpo.column_names and dpo["chosen"] == pairs["chosen"]
    sft = load_dataset(str(rdpo_folder), "sft", split="train")
    assert sft[0]["messages"][-1] == row["chosen"][0]
    assert (
        load_dataset(str(rdpo_folder), split="train").column_names == pairs.column_names
    )  # default = rdpo
    readme = (rdpo_folder / "README.md").read_text()
    assert "figures/tau_hist.png" in readme and (rdpo_folder / "figures" / "tau_hist.png").is_file()
    assert "## Funnel" in readme and f"| (published) | kept | {len(pairs)} |" in readme
    assert (rdpo_folder / "figures" / "scores_scatter.png").is_file()


@pytest.mark.slow
def test_train_rdpo_and_dpo_with_lora_from_the_folder(rdpo_folder: Path, tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from typer.testing import CliRunner

    from synthalign.cli import app

    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "builtin:tiny-random",
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "learning_rate": 1e-3,
                "logging_steps": 1,
                "max_length": 256,
                "precision": "fp32",
                "save_total_limit": 1,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            }
        )
    )
    runner = CliRunner()
    out = tmp_path / "rdpo-model"
    result = runner.invoke(
        app,
        [
            "train",
            "rdpo",
            "--config",
            str(recipe),
            "--dataset",
            str(rdpo_folder),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "adapter_config.json").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained away from the zero init
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "tau" in entry]
    assert logged and all(0.0 <= e["tau"] <= 1.0 for e in logged)
    assert json.loads((out / "synthalign-train.json").read_text())["dataset_config"] == "rdpo"

    baseline = tmp_path / "dpo-model"
    result = runner.invoke(
        app,
        [
            "train",
            "dpo",
            "--config",
            str(recipe),
            "--dataset",
            str(rdpo_folder),
            "--output",
            str(baseline),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((baseline / "synthalign-train.json").read_text())["dataset_config"] == "dpo"


@pytest.mark.slow
def test_pipeline_yaml_reruns_with_the_distilabel_cli(rdpo_folder: Path, tmp_path: Path) -> None:
    """The folder's pipeline.yaml, rerun by distilabel's own CLI from a clean HOME, publishes
    the same configs with the same rows, and (the run being seeded) the same tau values."""
    from datasets import Dataset, load_dataset

    counts = assert_rerun_reproduces(rdpo_folder, tmp_path)
    assert set(counts) - {"dsc"} == {"rdpo", "dpo", "sft", "all"}  # dsc: when a revision wins
    files = sorted(
        tmp_path.glob(
            "home/.cache/distilabel/pipelines/rdpo-e2e/*/executions/*/data/steps_outputs/rdpo/*.parquet"
        )
    )
    rerun = Dataset.from_parquet([str(f) for f in files])
    published = load_dataset(str(rdpo_folder), "rdpo", split="train")
    assert sorted(rerun["tau"]) == pytest.approx(sorted(published["tau"]))
