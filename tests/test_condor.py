"""Condor: parsers, gating, the tiny-random pipeline end to end, rerun, training, quickstart."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from condor_recipe import TINY_CONDOR
from rerun import assert_rerun_reproduces, fresh_home_env

from synthalign.llms import load_llm
from synthalign.steps.condor import (
    DIFFICULTIES,
    AnswerQuestion,
    CritiqueResponse,
    GenerateQuestions,
    drop_reason,
    format_row,
    split_question_row,
)
from synthalign.steps.knowledge_tree import TASK_TYPES

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"


def _cli(
    args: list[str], home: Path, cwd: Path | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthalign.cli", *args],
        env=fresh_home_env(home), cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _task(cls, **kwargs):
    return cls(name=cls.__name__.lower(), llm=load_llm("builtin:tiny-random"), **kwargs)


# ------------------------------------------------------------------ question parser

ROW = {"tag_path": ["Physics", "Waves and optics", "Lasers"], "task_type": "Domain QA"}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            '{"easy": "What is a laser?", "medium": "How does a laser pump work?", "hard": "Derive the threshold gain."}',
            None,
        ),
        ('{"easy": "What is a laser?", "medium": "How does a la', "truncated JSON"),
        ("1. What is a laser?\n2. How does it work?", "not JSON"),
        ('{"easy": "What is a laser?", "medium": "How?"}', "schema: hard"),
        ('{"easy": "   ", "medium": "How?", "hard": "Why?"}', "schema: easy"),
        ('{"easy": "' + "a" * 61 + '", "medium": "How?", "hard": "Why?"}', "schema: easy"),
        ("", "empty output"),
        (None, "no output"),
    ],
)
def test_question_parser(raw: str | None, error: str | None) -> None:
    out = _task(GenerateQuestions, max_question_chars=60).format_output(raw, ROW)
    if error is None:
        assert out["question_error"] is None and out["question_raw"] is None
        assert out["question_easy"] == "What is a laser?"
        assert out["question_hard"] == "Derive the threshold gain."
    else:
        assert out["question_error"].startswith(error), out["question_error"]
        assert out["question_easy"] is None and out["question_hard"] is None
        assert out["question_raw"] == raw
    assert out["question_model"] == "builtin:tiny-random"
    assert out["question_prompt"].startswith("condor_question.jinja2@")


def test_question_prompt_puts_variable_parts_last_and_enforces_schema() -> None:
    task = _task(GenerateQuestions, max_question_chars=300)
    chat, structured = task.format_input(ROW)
    other, _ = task.format_input({"tag_path": ["Music", "Genres", "Jazz"], "task_type": "Creation"})
    text, text2 = chat[-1]["content"], other[-1]["content"]
    static, variable = text.split("\nTopic: ")
    assert text2.startswith(static + "\nTopic: ")  # one shared prefix for the engine's prefix cache
    assert variable.startswith("Physics > Waves and optics > Lasers\nTask type: Domain QA")
    assert TASK_TYPES["Domain QA"] in text
    schema = structured["schema"]
    assert schema["required"] == ["easy", "medium", "hard"]
    assert schema["properties"]["easy"]["maxLength"] == 300


def test_split_makes_one_row_per_difficulty() -> None:
    row = {
        **ROW,
        "sample_index": 4,
        "question_easy": "What is a laser?",
        "question_medium": " How is a laser pumped? ",
        "question_hard": "Why are lasers coherent?",
        "question_error": None,
        "question_raw": None,
        "question_model": "m",
        "question_prompt": "p",
    }
    rows = split_question_row(row)
    assert [r["difficulty"] for r in rows] == list(DIFFICULTIES)
    assert [r["question"] for r in rows] == [
        "What is a laser?",
        "How is a laser pumped?",
        "Why are lasers coherent?",
    ]
    assert all(
        r["question_error"] is None and r["sample_index"] == 4 and r["question_model"] == "m"
        for r in rows
    )
    assert not any(
        k in r for r in rows for k in ("question_easy", "question_medium", "question_hard")
    )


def test_split_keeps_failures_and_flags_unusable_questions() -> None:
    failed = split_question_row(
        {
            **ROW,
            "question_easy": None,
            "question_medium": None,
            "question_hard": None,
            "question_error": "truncated JSON: x",
            "question_raw": "{",
        }
    )
    assert [r["question_error"] for r in failed] == ["truncated JSON: x"] * 3
    assert all(r["question"] is None and r["question_raw"] == "{" for r in failed)
    mixed = split_question_row(
        {
            **ROW,
            "question_easy": "What is a laser?",
            "question_medium": "what is a laser ?",
            "question_hard": "",
            "question_error": None,
        }
    )
    assert mixed[0]["question_error"] is None
    assert mixed[1]["question_error"].startswith("duplicate question")
    assert mixed[2]["question_error"] == "empty question"
    weak = split_question_row(
        {
            **ROW,
            "question_easy": "Hard",
            "question_medium": "Waves and optics > Lasers, explained simply",
            "question_hard": "Is x > 3 when x is 4?",
            "question_error": None,
        }
    )
    assert [r["question_error"] for r in weak] == [
        "too short (1 words)",
        "echoes the topic path",
        None,
    ]


# ------------------------------------------------------------------ critique parser

QA = {"question": "What is a laser?", "response": "Light amplification."}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            '{"strengths": "Short.", "weaknesses": "No mechanism.", "suggestions": "Explain stimulated emission."}',
            None,
        ),
        ('{"strengths": "Short.", "weaknesses": "No mech', "truncated JSON"),
        ("Strengths: short. Weaknesses: vague.", "not JSON"),
        ('{"strengths": "Short.", "weaknesses": "", "suggestions": "More."}', "schema: weaknesses"),
        (
            '{"strengths": "Short.", "weaknesses": "Vague.", "suggestions": 3}',
            "schema: suggestions",
        ),
    ],
)
def test_critique_parser(raw: str, error: str | None) -> None:
    out = _task(CritiqueResponse).format_output(raw, QA)
    if error is None:
        assert (out["critique_strengths"], out["critique_weaknesses"], out["critique_suggestions"]) == (
            "Short.", "No mechanism.", "Explain stimulated emission.",
        )  # fmt: skip
        assert out["critique_error"] is None
    else:
        assert out["critique_error"].startswith(error), out["critique_error"]
        assert out["critique_strengths"] is None and out["critique_raw"] == raw


def test_a_critique_cut_at_its_budget_is_kept_with_the_cut_marked() -> None:
    """The decoder closed a looping field (``[truncated]``): the text written so far is
    the field, ``critique_cut`` names it, and the refine step gets a full row. A field
    left unwritten, or cut before any text, still fails the row with its reason."""
    task = _task(CritiqueResponse)
    cut = task.format_output(
        '{"strengths": "Clear.", "weaknesses": "It never explains gain, gain, gain[truncated]", '
        '"suggestions": "Explain stimulated emission."}',
        QA,
    )
    assert cut["critique_error"] is None and cut["critique_cut"] == ["weaknesses"]
    assert cut["critique_weaknesses"] == "It never explains gain, gain, gain"
    assert cut["critique_strengths"] == "Clear." and cut["critique_suggestions"]
    whole = task.format_output('{"strengths": "a", "weaknesses": "b", "suggestions": "c"}', QA)
    assert whole["critique_error"] is None and whole["critique_cut"] is None
    unwritten = task.format_output(
        '{"strengths": "Clear, clear, clear[truncated]", "weaknesses": null, "suggestions": null}',
        QA,
    )
    assert unwritten["critique_error"].startswith("truncated: reached max_new_tokens")
    assert "'weaknesses' not written" in unwritten["critique_error"]
    assert unwritten["critique_strengths"] is None
    empty = task.format_output(
        '{"strengths": "[truncated]", "weaknesses": "b", "suggestions": "c"}', QA
    )
    assert empty["critique_error"].startswith("schema: strengths")
    strict = _task(CritiqueResponse, keep_cut_fields=False).format_output(
        '{"strengths": "a", "weaknesses": "b, b, b[truncated]", "suggestions": "c"}', QA
    )
    assert strict["critique_error"] == "truncated: reached max_new_tokens ('weaknesses' truncated)"


# ------------------------------------------------------------------ gating and truncation (real tiny model)


def test_answer_skips_rows_without_question_and_marks_cut_off_answers() -> None:
    task = AnswerQuestion(
        name="answer_question",
        llm=load_llm("builtin:tiny-random", max_new_tokens=6, temperature=0),
        truncated_is_error=True,
    )
    task.load()
    rows = next(
        task.process([{"question": "What is a laser?"}, {"question": None}, {"question": "  "}])
    )
    assert len(rows) == 3
    assert (
        rows[0]["response"] is None
        and rows[0]["response_error"] == "truncated: reached max_new_tokens=6"
    )
    assert rows[0]["response_raw"] and rows[0]["response_model"] == "builtin:tiny-random"
    for row in rows[1:]:
        assert row["response"] is None and row["response_model"] is None
        assert row["response_error"] == "skipped: no question (an earlier stage failed)"
        assert row["response_prompt"].startswith("condor_answer.jinja2@")

    task.truncated_is_error = False
    kept = next(task.process([{"question": "What is a laser?"}]))[0]
    assert kept["response"] and kept["response_error"] is None


def test_format_row_publishes_messages_only_for_rows_that_passed_every_stage() -> None:
    good = {
        **ROW, "question": "Q?", "response": "A.", "refined_response": "Better A.", "difficulty": "Easy",
        "critique_strengths": "s", "critique_weaknesses": "w", "critique_suggestions": "g",
        **{f"{s}_error": None for s in ("question", "response", "critique", "refine")},
    }  # fmt: skip
    settings = {"answer": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95, "seed": 0}}
    assert format_row(good, "refined", settings)["messages"] == [
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Better A."},
    ]  # fmt: skip
    assert format_row(good, "void", settings)["messages"][1]["content"] == "A."
    assert format_row(good, "generations", settings)["kept"] is True
    bad = {
        **good,
        "critique_error": "truncated JSON: x",
        "refine_error": "skipped: no critique_strengths",
    }
    assert drop_reason(bad) == ("critique", "truncated JSON: x")
    assert (
        format_row(bad, "refined", settings) is None and format_row(bad, "void", settings) is None
    )
    record = format_row(bad, "generations", settings)
    assert (record["kept"], record["drop_stage"], record["drop_reason"]) == (
        False,
        "critique",
        "truncated JSON: x",
    )
    assert drop_reason({**good, "refined_response": " "}) == ("refine", "empty refined_response")


# ------------------------------------------------------------------ recipes


def test_recipes_load_and_describe_the_paper_setup() -> None:
    from synthalign.pipelines.condor import CondorRecipe, override_llms
    from synthalign.recipes import load_recipe

    paper = load_recipe(RECIPES / "condor.yaml", CondorRecipe)
    assert paper.num_samples == 20_000 and paper.num_calls == 6667
    assert paper.llm_specs() == [paper.llm] and paper.llm.startswith("vllm:")
    assert paper.sequential() and paper.task_types == list(TASK_TYPES)
    tree = paper.knowledge_tree  # the paper's tree size, grown by the paper's model first
    assert tree.base == "default" and tree.expand_to == 8400 and tree.llm.llm is None
    assert paper.role_spec("knowledge_tree") == paper.llm and paper.tag_sampling == "proportional"
    quick = load_recipe(RECIPES / "condor-quickstart.yaml", CondorRecipe)
    assert (
        quick.llm == "builtin:smollm2-135m"
        and 9 <= quick.num_samples <= 15
        and not quick.sequential()
    )
    four = override_llms(
        quick, ["builtin:tiny-random", "a:b", "builtin:smollm2-135m", "builtin:tiny-random"]
    )
    assert four.role_spec("answer") == "a:b" and four.llm_specs()[0] == "builtin:tiny-random"
    one = override_llms(four, ["builtin:tiny-random"])
    assert one.llm_specs() == ["builtin:tiny-random"]
    grown = override_llms(paper, ["builtin:tiny-random"])
    assert grown.llm_specs() == ["builtin:tiny-random"]  # --llm serves the tree's growth too


def test_pipeline_shape_and_load_stages() -> None:
    from synthalign.pipelines.condor import CONFIGS, CondorRecipe, build_pipeline

    recipe = CondorRecipe.model_validate({**TINY_CONDOR, "load_stages": "auto"})
    pipeline = build_pipeline(recipe)
    assert not recipe.sequential()
    order = [
        "sample_tags",
        "generate_questions",
        "split_by_difficulty",
        "answer_question",
        "critique_response",
        "refine_response",
        "clean_outputs",
    ]
    for a, b in pairwise(order):
        assert list(pipeline.dag.get_step_successors(a)) == [b]
    assert sorted(pipeline.dag.get_step_successors("clean_outputs")) == sorted(CONFIGS)
    sample = pipeline.dag.get_step("sample_tags")["step"]
    assert sample.num_items == 7 and sample.tree == "default"
    assert sample.tag_sampling == recipe.tag_sampling and sample.tag_fraction == 1.0
    assert CondorRecipe.model_validate({**TINY_CONDOR, "load_stages": "sequential"}).sequential()


def test_bad_recipe_values_fail_before_any_model_loads(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_CONDOR, "task_types": ["Domain QA", "Haiku"]}))
    proc = _cli(
        ["generate", "condor", "--config", str(recipe), "--output", str(tmp_path / "o")],
        tmp_path / "home",
        timeout=300,
    )
    assert (
        proc.returncode == 2
        and "unknown task type" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    recipe.write_text(yaml.safe_dump({**TINY_CONDOR, "root_domains": ["Alchemy"]}))
    proc = _cli(
        ["generate", "condor", "--config", str(recipe), "--output", str(tmp_path / "o")],
        tmp_path / "home",
        timeout=300,
    )
    assert proc.returncode == 2 and "Alchemy" in proc.stderr


# ------------------------------------------------------------------ end to end on tiny-random


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("condor-tiny")
    recipe = work / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_CONDOR, "cache_dir": str(work / "cache")}))
    proc = _cli(
        ["generate", "condor", "--config", str(recipe), "--output", str(work / "out")],
        work / "home",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work / "out"


def test_tiny_random_run_exercises_every_step_and_records_failures(tiny_run: Path) -> None:
    from datasets import load_dataset

    from synthalign.hub import validate_hub_folder

    validate_hub_folder(tiny_run)
    generations = load_dataset(str(tiny_run), "generations", split="train")
    refined = load_dataset(str(tiny_run), "refined", split="train")
    void = load_dataset(str(tiny_run), "void", split="train")
    default = load_dataset(str(tiny_run), split="train")

    assert len(generations) == 21  # 7 calls x 3 difficulties, failures included
    assert sorted(set(generations["task_type"])) == sorted(
        TASK_TYPES
    )  # 7 calls cover all 7 task types
    assert sorted(generations["difficulty"]) == sorted(list(DIFFICULTIES) * 7)
    # parse failures are recorded (raw text kept), not raised; their rows skip later stages
    failed = [r for r in generations if r["question_error"]]
    assert any(r["question_raw"] for r in failed), (
        "the tight question budget should cut some JSON off"
    )
    assert all(r["question"] is None for r in failed)
    assert all(
        r["response_error"].startswith("skipped") and r["response_model"] is None for r in failed
    )
    assert all(not r["kept"] and r["drop_stage"] == "question" for r in failed)
    # every step ran on the rows that survived
    kept = [r for r in generations if r["kept"]]
    assert kept and len(kept) == len(refined) == len(void) == len(default)
    for r in kept:
        for stage in ("question", "response", "critique", "refine"):
            assert r[f"{stage}_model"] == "builtin:tiny-random" and r[f"{stage}_error"] is None
            assert "@" in r[f"{stage}_prompt"]
        assert r["critique_strengths"] and r["critique_weaknesses"] and r["critique_suggestions"]
    # void and refined: same rows, TRL messages from the original vs refined answer
    assert refined["question"] == void["question"] == default["question"]
    for rr, vr in zip(refined, void, strict=True):
        assert rr["messages"] == [
            {"role": "user", "content": rr["question"]},
            {"role": "assistant", "content": rr["refined_response"]},
        ]
        assert (
            vr["messages"][1]["content"] == vr["response"]
            and vr["messages"][0]["content"] == vr["question"]
        )
        assert rr["tag_path"] == [rr["root_domain"], rr["sub_domain"], rr["tag"]]
        assert rr["generation_settings"]["question"]["max_new_tokens"] == 80
        assert rr["knowledge_tree"].startswith("synthalign-default-en@")
        assert not any(c.endswith(("_error", "_raw")) for c in rr)


def test_tiny_random_card_reports_counts_failures_and_figures(tiny_run: Path) -> None:
    from synthalign.hub import read_hub_folder

    readme = (tiny_run / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert {"synthetic", "distilabel", "condor"} <= set(front["tags"])
    assert (
        front["license"]
        and front["task_categories"] == ["text-generation"]
        and front["size_categories"] == ["n<1K"]
    )
    assert {c["config_name"] for c in front["configs"]} == {"refined", "void", "generations"}
    assert next(c for c in front["configs"] if c.get("default"))["config_name"] == "refined"
    figures = sorted(p.name for p in (tiny_run / "figures").glob("*.png"))
    assert {"task_difficulty_heatmap.png", "length_shift.png"} <= set(figures)
    for name in figures:
        assert f"figures/{name}" in readme
    assert "condor_question.jinja2@" in readme and "builtin:tiny-random" in readme
    datasets, info = read_hub_folder(tiny_run)
    failed = sum(1 for e in datasets["generations"]["question_error"] if e)
    assert f"| question generation | generate_questions (3 per call) | 21 | {failed} |" in readme
    assert "root_domain | task_type | difficulty" in readme
    assert "original answer (chars)" in readme and "refined answer (chars)" in readme
    assert info["method"] == "condor"


def test_card_rebuilds_from_the_folder_alone(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    before = (copy / "README.md").read_text()
    (copy / "README.md").write_text("---\nlicense: x\n---\n")
    proc = _cli(["card", str(copy)], tmp_path / "home", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = (copy / "README.md").read_text()
    assert (
        after.split("\n---\n", 1)[1] == before.split("\n---\n", 1)[1]
    )  # the same body, figures included

    def front(text: str) -> dict:
        meta = yaml.safe_load(text.split("---")[1])
        meta["configs"] = sorted(meta["configs"], key=lambda c: c["config_name"])
        meta.pop("dataset_info", None)
        return meta

    assert front(after) == front(before)
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(
        p.name for p in (tiny_run / "figures").iterdir()
    )


def test_pipeline_yaml_reruns_from_a_clean_directory(tiny_run: Path, tmp_path: Path) -> None:
    counts = assert_rerun_reproduces(tiny_run, tmp_path)
    assert set(counts) == {"refined", "void", "generations"} and counts["refined"] == counts["void"]


def test_sft_trains_on_the_refined_config_and_the_model_loads(
    tiny_run: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "sft.yaml"
    base = yaml.safe_load((RECIPES / "condor-sft.yaml").read_text())
    assert (
        base["learning_rate"] == 2e-5
        and base["num_train_epochs"] == 3
        and base["dataset_config"] == "refined"
    )
    base.update(model="builtin:tiny-random", max_steps=2, per_device_train_batch_size=2, max_length=256,
                gradient_checkpointing=False, gradient_accumulation_steps=1, logging_steps=1)  # fmt: skip
    recipe.write_text(yaml.safe_dump(base))
    out = tmp_path / "model"
    proc = _cli(
        ["train", "sft", "--config", str(recipe), "--dataset", str(tiny_run), "--output", str(out)],
        tmp_path / "home",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 0


# ------------------------------------------------------------------ quickstart on SmolLM2


def _setup_quickstart_output() -> Path | None:
    """``scripts/setup.sh`` ends by running this very recipe into ``quickstart-output``.

    When that folder is newer than the recipe and every source file (always so in CI's
    fresh clone), the test checks it instead of spending five more minutes of 2 cores on
    the same run; after any edit it runs the recipe itself.
    """
    record = ROOT / "quickstart-output" / "synthalign.json"
    if not record.exists():
        return None
    sources = [
        path
        for folder in (ROOT / "synthalign", ROOT / "pipelines")
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    newest = max(path.stat().st_mtime for path in sources)
    return record.parent if record.stat().st_mtime > newest else None


@pytest.mark.slow
def test_quickstart_recipe_end_to_end_on_smollm2(tmp_path: Path) -> None:
    from datasets import load_dataset

    out = _setup_quickstart_output()
    if out is None:
        out = tmp_path / "condor"
        proc = _cli(
            [
                "generate",
                "condor",
                "--config",
                str(RECIPES / "condor-quickstart.yaml"),
                "--output",
                str(out),
            ],
            tmp_path / "home",
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    refined = load_dataset(str(out), "refined", split="train")
    void = load_dataset(str(out), "void", split="train")
    assert len(refined) > 0 and refined["question"] == void["question"]
    for rr, vr in zip(refined, void, strict=True):
        assert rr["question"].strip() and rr["response"].strip() and rr["refined_response"].strip()
        assert (
            rr["messages"][1]["content"] == rr["refined_response"]
            and vr["messages"][1]["content"] == vr["response"]
        )
        assert rr["response_model"] == "builtin:smollm2-135m"
    info = json.loads((out / "synthalign.json").read_text())
    assert info["recipe"]["llm"] == "builtin:smollm2-135m"
    # no row lost to a token budget (issue 16): cut critiques are kept and marked
    generations = load_dataset(str(out), "generations", split="train")
    lost = [
        r["drop_reason"]
        for r in generations
        if r["drop_reason"] and ("max_new_tokens" in r["drop_reason"] or "JSON" in r["drop_reason"])
    ]
    assert lost == []


def test_when_every_row_fails_the_run_fails_with_the_funnel_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Every question call cut off: the default config ``refined`` would be empty, so the
    run exits 1 with the funnel in one line and publishes no folder (the failed rows are
    in distilabel's cache and the batch store for the rerun, not in a dataset)."""
    recipe = tmp_path / "r.yaml"
    tight = {
        **TINY_CONDOR,
        "num_samples": 6,
        "question": {**TINY_CONDOR["question"], "max_new_tokens": 3},
    }
    recipe.write_text(yaml.safe_dump({**tight, "cache_dir": str(tmp_path / "cache")}))
    out = tmp_path / "out"
    proc = _cli(
        ["generate", "condor", "--config", str(recipe), "--output", str(out)], tmp_path / "home"
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'refined' came out empty" in last and "question" in last
    assert "Traceback" not in proc.stderr and not out.exists()
