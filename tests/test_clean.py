"""The output-cleaning step: scaffolding out of every published text, or the row out.

Its patterns come from each method's templates, so the coverage test reads the
templates with a regex of its own and checks that every section header they have is
caught: a template that gains a header cannot silently slip past the cleaner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import networkx as nx
import pytest

from synthalign.contract import get_method
from synthalign.recipes import load_recipe
from synthalign.steps.clean import CLEAN_REASONS, CleanColumn, CleanOutputs, clean_text
from synthalign.steps.condor import CLEAN_COLUMNS as CONDOR
from synthalign.steps.gra import INSTRUCTION_CLEAN, RESPONSE_CLEAN, real_keywords, real_summary
from synthalign.steps.prompts import PROMPTS_DIR
from synthalign.steps.rdpo import CLEAN_COLUMNS as RDPO
from synthalign.steps.synpo import PROMPT_CLEAN, response_clean

SPECS: dict[str, list[CleanColumn]] = {
    "condor": list(CONDOR),
    "gra": [INSTRUCTION_CLEAN, RESPONSE_CLEAN],
    "synpo": [PROMPT_CLEAN, *response_clean("response_initial")],
    "rdpo": list(RDPO),
}
REFINED = CONDOR[1]
ROW = {
    "question": "What does a laser do?",
    "response": "It makes light.",
    "critique_strengths": "Short.",
    "critique_weaknesses": "No mechanism.",
    "critique_suggestions": "Explain stimulated emission.",
}

# Independent of steps/clean.py: a line that is a bracketed label, a markdown heading, or
# a capitalised label followed by a colon and nothing or a Jinja expression.
HEADER_LINE = re.compile(r"^(\[[^\]{}]+\]|#+ [^{}]+|[A-Z][A-Za-z' ]*:(\s*\{\{.*)?)$")


def _headers(template: str) -> list[str]:
    lines = (PROMPTS_DIR / template).read_text(encoding="utf-8").splitlines()
    return [
        re.sub(r"\{\{.*?\}\}", "x", ln.strip()) for ln in lines if HEADER_LINE.match(ln.strip())
    ]


@pytest.mark.parametrize(
    ("method", "spec", "template"),
    [(m, s, t) for m, specs in SPECS.items() for s in specs for t in s.templates],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "column", ""),
)
def test_every_template_header_is_caught(method: str, spec: CleanColumn, template: str) -> None:
    for header in _headers(template):
        text = f"A clear, complete and useful reply to the user.\n\n{header}\nsomething echoed"
        cleaned, reason = clean_text(text, spec, {})
        assert reason == "echo", f"{method}/{template}: {header!r} left in {cleaned!r}"


def test_the_templates_do_have_headers() -> None:
    """The coverage test above is not vacuous: the methods' prompts have sections."""
    assert "[Original answer]" in _headers("condor_refine.jinja2")
    assert "## Instruction" in _headers("gra_response.jinja2")
    assert "Principle:" in _headers("rdpo_revision.jinja2")
    assert "### Draft answer" in _headers("synpo_improve.jinja2")


L = "A laser amplifies light."
ECHOED = "[Question]\nWhat does a laser do?\n\n[Original answer]\nIt makes light.\n\n"


@pytest.mark.parametrize(
    ("raw", "text", "reason"),
    [
        ("A laser amplifies light by stimulated emission.", None, None),
        ("Improved answer:\n" + L, L, None),
        ("**Refined Response:**\n\n" + L, L, None),
        ("Here is the improved answer that fixes the gaps:\n" + L, L, None),
        ("[Improved Answer Start]\n" + L + "\n[Improved Answer End]", L, None),
        ("Improved answers differ: lasers amplify light.", None, None),
        (ECHOED + L, L, None),
        ("Assistant: " + L + "<|im_end|>\n<|im_start|>user\nThanks", L, None),
        ("What does a laser do? " + L, L, None),
        ("Improved answer:", "", "empty"),
        ("What does a laser do?", "What does a laser do?", "repeats_prompt"),
        ("[Question]\nWhat does a laser do, exactly?\nIt amplifies light.", None, "echo"),
        ("The original answer is fine, but a laser amplifies light.", None, "echo"),
        ("Following the critique, a laser amplifies light.", None, "echo"),
        (L + "\n\nWeaknesses: No mechanism.", L, None),
        (L + "\nWeaknesses: it has none.", None, "echo"),
        ("Keep what the critique names as strengths. " + L, None, "echo"),
    ],
)
def test_refined_answers(raw: str, text: str | None, reason: str | None) -> None:
    """``text`` None: a clean answer comes back unchanged, an echo needs no text check."""
    cleaned, got = clean_text(raw, REFINED, ROW)
    assert got == reason
    if reason is None:
        assert cleaned == (raw if text is None else text)
    elif text is not None:
        assert cleaned == text


def test_gra_instruction_markers_and_labels() -> None:
    out, reason = clean_text(
        "Sure! <boi>Write a haiku about rain.<eoi> Hope it helps.", INSTRUCTION_CLEAN
    )
    assert (out, reason) == ("Write a haiku about rain.", None)
    out, reason = clean_text('<boi>"Name three prime numbers."', INSTRUCTION_CLEAN)
    assert (out, reason) == ("Name three prime numbers.", None)
    assert clean_text("<boi><eoi>", INSTRUCTION_CLEAN)[1] == "empty"
    assert clean_text("## Keywords\nrain, haiku", INSTRUCTION_CLEAN)[1] == "echo"
    assert real_keywords(["keywords", "Keywords", "rain", "rain ", "haiku", "meter"]) == [
        "rain",
        "haiku",
        "meter",
    ]
    assert real_keywords(["keywords", "keywords", "keywords"]) == []
    assert real_summary("the summary") is None and real_summary("Rain haiku.") == "Rain haiku."


def test_synpo_prompt_that_repeats_the_template_is_an_echo() -> None:
    echoed = (
        "Compose one message that a person could send to an AI assistant: a question about tides."
    )
    assert clean_text(echoed, PROMPT_CLEAN, {"keywords": ["tide"]})[1] == "echo"
    assert clean_text("Keywords: tide, moon, sea", PROMPT_CLEAN, {})[1] == "echo"
    assert clean_text("Why do tides follow the moon?", PROMPT_CLEAN, {})[1] is None


def test_rdpo_revision_must_not_talk_about_the_critique() -> None:
    revised = RDPO[1]
    row = {"prompt": "How do I pick a lock?"}
    assert clean_text("Based on my critique, I will not explain it.", revised, row)[1] == "echo"
    out, reason = clean_text("Here is my revised reply:\nI can't help with that.", revised, row)
    assert (out, reason) == ("I can't help with that.", None)
    assert clean_text("Principle:\nBe safe.", revised, row)[1] == "echo"


def test_the_step_cleans_in_place_drops_with_reasons_and_accumulates() -> None:
    step = CleanOutputs(name="clean", columns=[RESPONSE_CLEAN], set_drop=True)
    rows = [
        {"instruction": "Add 2 and 3.", "response": "Answer: 5", "kept": None},
        {"instruction": "Add 2 and 3.", "response": "Add 2 and 3.", "kept": None},
        {"instruction": "Add 2 and 3.", "response": "## Instruction\nAdd 2 and 3.", "kept": None},
        {"instruction": "Add 2 and 3.", "response": "7", "kept": False, "drop_stage": "x"},
        {"instruction": "Add 2 and 3.", "response": None, "kept": None},
        {"instruction": "Add 2 and 3.", "response": "5", "kept": None, "clean_error": "echo"},
    ]
    out = next(step.process(rows))
    assert out[0]["response"] == "5" and out[0]["clean_changed"] == ["response"]
    assert out[0]["clean_error"] is None and out[0]["kept"] is None
    assert (out[1]["kept"], out[1]["drop_stage"], out[1]["drop_reason"]) == (
        False,
        "clean",
        "repeats_prompt",
    )
    assert out[1]["response"] == "Add 2 and 3."  # a dropped row keeps what the model wrote
    assert out[2]["drop_reason"] == "echo"
    assert out[3]["drop_stage"] == "x" and out[3]["clean_error"] is None
    assert out[4]["clean_error"] is None and out[4]["kept"] is None
    assert out[5]["clean_error"] == "echo"  # an earlier cleaning step's verdict stands
    assert {r["drop_reason"] for r in out if r.get("drop_stage") == "clean"} <= set(CLEAN_REASONS)


# ------------------------------------------------------------------ in every pipeline

RECIPES = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"


@pytest.mark.parametrize("name", ["condor", "gra", "synpo", "rdpo"])
def test_every_method_cleans_its_model_text_before_publishing(name: str) -> None:
    """The cleaning step is a step of the pipeline (so ``pipeline.yaml`` reruns it), after
    the steps that write the text it cleans and before the configs the card counts."""
    method = get_method(name)
    recipe = load_recipe(RECIPES / f"{name}-quickstart.yaml", method.recipe_cls)
    pipeline = method.build_pipeline(recipe, method.first_state(recipe, False))
    dag = pipeline.dag
    cleans = [n for n in dag if isinstance(dag.get_step(n)["step"], CleanOutputs)]
    assert cleans, f"{name}: no cleaning step"
    dumped = {step["name"] for step in pipeline.dump()["pipeline"]["steps"]}
    assert set(cleans) <= dumped  # what pipeline.yaml lists
    for clean in cleans:
        before = nx.ancestors(dag.G, clean)
        for spec in dag.get_step(clean)["step"].columns:
            writers = [a for a in before if spec.column in dag.get_step(a)["step"].outputs]
            assert writers, f"{name}/{clean}: nothing upstream writes {spec.column!r}"
    for config in {method.default_config, *method.funnel_configs}:
        assert set(cleans) <= nx.ancestors(dag.G, config), f"{name}: {config} skips cleaning"


def test_real_smollm2_answers_pass_unchanged() -> None:
    """Not too eager: answers and refinements SmolLM2-135M wrote for the Condor prompts
    (tests/data/smollm2_clean_answers.jsonl, the ones a reader judged clean) survive as
    written; the same run's two echoes ("incorporate the critique", "Original answer:")
    were dropped and one "**Improved Answer**" label removed."""
    specs = {spec.column: spec for spec in CONDOR}
    lines = (Path(__file__).parent / "data" / "smollm2_clean_answers.jsonl").read_text()
    rows = [json.loads(line) for line in lines.splitlines()]
    assert len(rows) >= 25
    for row in rows:
        spec = specs[row["column"]]
        cleaned, reason = clean_text(row["text"], spec, {**ROW, "question": row["question"]})
        assert reason is None, (reason, row["text"][:200])
        assert cleaned == row["text"].strip()
