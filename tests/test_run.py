"""The run driver, method-agnostic: states, the run record, resume, overwrite, the frame.

Driven with tests/echo_method.py, a method defined outside the package (a real
distilabel pipeline that needs no model), so these checks take seconds and prove that
a fifth method needs no change to the driver.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from echo_method import METHOD as ECHO
from rerun import assert_rerun_reproduces

from synthalign.contract import Method, State
from synthalign.errors import OutputError, RecipeError
from synthalign.run import choose_default, generate, loop

SEEDS = Path(__file__).parent / "data" / "instructions.jsonl"


def _recipe(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "echo.yaml"
    data = {
        "name": "echo-test",
        "seed_data": {"source": str(SEEDS)},
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _record(folder: Path) -> dict:
    return json.loads((folder / "synthalign.json").read_text())


def test_generate_writes_one_state_as_a_hub_folder_with_the_shared_card_frame(
    tmp_path: Path,
) -> None:
    from datasets import load_dataset

    out = generate(ECHO, _recipe(tmp_path, min_chars=30), output=tmp_path / "out")
    rows = load_dataset(str(out), split="train")
    n_seeds = sum(1 for _ in SEEDS.open())
    assert len(rows) == n_seeds and set(rows["round"]) == {1}
    assert rows["previous"] == [None] * n_seeds
    record = _record(out)
    assert record["method"] == "echo" and [s["key"] for s in record["states"]] == ["1:echo"]
    readme = (out / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert {"synthetic", "distilabel", "synthalign", "echo"} <= set(front["tags"])
    assert front["reproducibility"]["method"] == "echo"
    short = sum(1 for r in rows if not r["kept"])
    assert (
        short and f"| length | too short | {short} |" in readme
    )  # the funnel, from the drop columns
    assert "distilabel pipeline run --config out/pipeline.yaml" in readme  # never an absolute path


def test_generate_pipeline_yaml_reruns_to_the_same_configs(tmp_path: Path) -> None:
    out = generate(ECHO, _recipe(tmp_path), output=tmp_path / "out")
    assert assert_rerun_reproduces(out, tmp_path / "rerun") == {
        "rows": sum(1 for _ in SEEDS.open())
    }


def test_loop_runs_states_wires_outputs_and_resumes_after_the_last_finished(tmp_path: Path) -> None:
    recipe, out = _recipe(tmp_path), tmp_path / "loop"
    loop(ECHO, recipe, iterations=2, output=out)
    record = _record(out)
    assert [s["key"] for s in record["states"]] == ["1:echo", "2:echo"]
    from datasets import load_dataset

    second = load_dataset(str(out / "round-2"), "rows", split="train")
    assert set(second["previous"]) == {
        str(out / "round-1")
    }  # read by path, the folder state 1 wrote
    first_mtime = (out / "round-1" / "README.md").stat().st_mtime_ns
    loop(ECHO, recipe, iterations=3, output=out)  # resumes: rounds 1-2 untouched, round 3 added
    assert (out / "round-1" / "README.md").stat().st_mtime_ns == first_mtime
    assert [s["key"] for s in _record(out)["states"]] == ["1:echo", "2:echo", "3:echo"]


def test_resume_refuses_another_recipe_and_overwrite_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "loop"
    loop(ECHO, _recipe(tmp_path), iterations=1, output=out)
    with pytest.raises(OutputError, match="different echo recipe"):
        loop(ECHO, _recipe(tmp_path, min_chars=5), iterations=1, output=out)
    loop(ECHO, _recipe(tmp_path, min_chars=5), iterations=1, output=out, overwrite=True)
    assert _record(out)["recipe"]["min_chars"] == 5


def test_outputs_the_driver_must_not_touch(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    with pytest.raises(OutputError, match="is a file"):
        generate(ECHO, recipe, output=a_file)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        generate(ECHO, recipe, output=foreign)
    with pytest.raises(OutputError, match="not a synthalign output"):
        generate(ECHO, recipe, output=foreign, overwrite=True)
    assert (foreign / "notes.md").read_text() == "mine"


def test_loop_needs_a_method_that_iterates_and_a_positive_count(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="has no rounds"):
        loop("condor", _recipe(tmp_path), iterations=1, output=tmp_path / "o")
    with pytest.raises(RecipeError, match="--iterations"):
        loop(ECHO, _recipe(tmp_path), iterations=0, output=tmp_path / "o")


def test_the_default_config_is_never_empty() -> None:
    from datasets import Dataset

    method = Method(
        name="m", recipe_cls=object, build_pipeline=lambda r, s: None, configs=lambda r, s: [],  # type: ignore[arg-type]
        default_config="train", card_section=lambda d, i: None,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    rows = Dataset.from_dict({"x": [1]})
    assert choose_default(method, {"train": rows, "all": rows}, ["train", "all"]) == "train"
    assert choose_default(method, {"all": rows}, ["train", "all"]) == "all"
    assert choose_default(method, {}, ["train", "all"]) is None
    assert State().key == "1:main"
