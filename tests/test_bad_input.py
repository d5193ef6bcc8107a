"""The bad-input catalogue: each mistake gives one clear line before any model loads,
or, where it can only be found at run time, a per-row recorded failure.

CLI cases run the real ``synthalign`` command in-process (typer's runner) and assert
exit code 2, a single ``error:`` line naming the problem, and no traceback. They use
the rDPO and GRA recipes because those read seed files; every case fails in preflight,
so no model is loaded (the runs take milliseconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from cli_checks import fails_in_one_line, generate_args, recipe_with
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from synthalign.cli import app
from synthalign.parsing import parse_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"


def _seeds(tmp_path: Path, content: bytes, name: str = "seeds.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


# --- seed data ---------------------------------------------------------------------


def test_seed_file_missing(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": str(tmp_path / "nope.jsonl")}
    )
    fails_in_one_line(generate_args("rdpo", recipe, tmp_path / "o"), "not found", "nope.jsonl")


def test_seed_file_empty(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": _seeds(tmp_path, b"")}
    )
    fails_in_one_line(generate_args("rdpo", recipe, tmp_path / "o"), "empty")


def test_seed_wrong_columns(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path, b'{"question": "hi"}\n')
    recipe = recipe_with(tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(
        generate_args("rdpo", recipe, tmp_path / "o"), "lacks column", "prompt", "question"
    )


def test_seed_wrong_types(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path, b'{"prompt": "fine"}\n{"prompt": 42}\n')
    recipe = recipe_with(tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(
        generate_args("rdpo", recipe, tmp_path / "o"), "row 2", "prompt", "str", "int"
    )


def test_seed_malformed_jsonl_line_reports_line_number(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path, b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n')
    recipe = recipe_with(tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(
        generate_args("rdpo", recipe, tmp_path / "o"), "seeds.jsonl:3", "malformed JSON"
    )


def test_seed_not_utf8(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path, '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    recipe = recipe_with(tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(generate_args("rdpo", recipe, tmp_path / "o"), "not UTF-8", ":1")


def test_seed_unsupported_format(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path, b"a,b", name="seeds.xlsx")
    recipe = recipe_with(tmp_path, "rdpo-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(generate_args("rdpo", recipe, tmp_path / "o"), "unsupported seed format")


# --- recipes -------------------------------------------------------------------------


def test_recipe_missing(tmp_path: Path) -> None:
    fails_in_one_line(
        generate_args("condor", tmp_path / "missing.yaml", tmp_path / "o"), "not found"
    )


def test_recipe_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nllm: [unclosed\nseed: 1\n")
    fails_in_one_line(generate_args("condor", path, tmp_path / "o"), "invalid YAML", "line")


def test_recipe_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    fails_in_one_line(generate_args("condor", path, tmp_path / "o"), "YAML mapping")


@pytest.mark.parametrize(
    ("base", "method", "change", "needles"),
    [
        ("condor-quickstart.yaml", "condor", {"num_sampels": 3}, ["unknown key 'num_sampels'", "did you mean 'num_samples'"]),
        ("rdpo-quickstart.yaml", "rdpo", {"teacher.max_new_token": 12}, ["teacher.max_new_token", "did you mean 'max_new_tokens'"]),
    ],
)  # fmt: skip
def test_recipe_unknown_key_suggests_the_close_match(
    tmp_path: Path, base: str, method: str, change: dict, needles: list[str]
) -> None:
    recipe = recipe_with(tmp_path, base, **change)
    fails_in_one_line(generate_args(method, recipe, tmp_path / "o"), *needles)


def test_recipe_threshold_out_of_range(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "gra-quickstart.yaml", **{"dedup.threshold": 1.7})
    fails_in_one_line(generate_args("gra", recipe, tmp_path / "o"), "dedup.threshold", "1.7")


def test_recipe_negative_count(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml", num_samples=-3)
    fails_in_one_line(generate_args("condor", recipe, tmp_path / "o"), "num_samples", "-3")


def test_recipe_pool_too_small_for_the_roles(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "gra-quickstart.yaml", pool=["builtin:tiny-random", "builtin:tiny-random"]
    )
    fails_in_one_line(generate_args("gra", recipe, tmp_path / "o"), "pool")


def test_unknown_method(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "alpaca", "--config", "x.yaml"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# --- models and backends ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm", "needles"),
    [
        ("ollama:llama3", ["unknown LLM spec", "ollama:llama3"]),
        ("transformers:/models/none/here", ["does not exist"]),
    ],
)
def test_a_bad_llm_spec_is_one_line(tmp_path: Path, llm: str, needles: list[str]) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(generate_args("condor", recipe, tmp_path / "o", "--llm", llm), *needles)


def test_model_spec_in_recipe_unknown_builtin(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml", llm="builtin:llama-70b")
    fails_in_one_line(generate_args("condor", recipe, tmp_path / "o"), "unknown built-in model")


def test_server_unreachable_is_one_line_after_bounded_retries() -> None:
    from synthalign.errors import BackendError
    from synthalign.llms import load_llm

    llm = load_llm(
        "openai:http://127.0.0.1:9/v1#some-model", engine_kwargs={"max_retries": 1, "timeout": 2}
    )
    with pytest.raises(BackendError) as info:
        llm.load()
    assert "\n" not in str(info.value) and "127.0.0.1:9" in str(info.value)


# --- outputs and the Hub -------------------------------------------------------------------


def test_output_folder_exists_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "README.md").write_text("mine")
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(generate_args("condor", recipe, out), "already exists", "--overwrite")
    assert (out / "README.md").read_text() == "mine"


def test_push_without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o", "--push-to-hub", "me/data"),
        "token",
        "hf auth login",
    )
    assert not (tmp_path / "o").exists()


def test_train_recipe_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: builtin:tiny-random\nlearning_rat: 0.1\n")
    fails_in_one_line(["train", "sft", "--config", str(path)], "learning_rat")


# --- LLM output that cannot be used: recorded per row, never raised ----------------------------


class Review(BaseModel):
    score: int = Field(ge=0, le=10)
    verdict: Literal["accept", "reject"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sure! The score is 7.", "not JSON"),
        ('{"score": 7, "verdict": "acc', "truncated JSON"),
        ('{"score": 11, "verdict": "accept"}', "schema: score"),
        ('{"score": 7}', "schema: verdict"),
        ("", "empty output"),
        ("   \n", "empty output"),
        (None, "no output"),
    ],
)
def test_unusable_llm_output_becomes_a_reason(text: str | None, reason: str) -> None:
    record, error = parse_model(text, Review)
    assert record is None and error is not None and reason in error


def test_json_wrapped_in_prose_or_fences_still_parses() -> None:
    good = {"score": 3, "verdict": "reject"}
    for text in [f"```json\n{json.dumps(good)}\n```", f"Here you go: {json.dumps(good)} Thanks!"]:
        record, error = parse_model(text, Review)
        assert error is None and record is not None and record.score == 3
