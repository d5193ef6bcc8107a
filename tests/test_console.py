"""What a run shows and counts: progress, a quiet terminal, the log file, token accounting,
``--dry-run``.

The end-to-end checks run the Condor quickstart with ``synthalign generate condor`` as a
user would (on the tiny random model), stdout and stderr pipes as in CI: at most 40
lines, the first and last naming the output folder, every library's log in the run's
log file beside it, the accounting in ``synthalign.json``, the card and one summary line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import fails_in_one_line, generate_args, recipe_with
from rdpo_recipe import write_tiny_rdpo_recipe
from rerun import fresh_home_env

from synthalign import accounting
from synthalign.progress import PipelineProgress

ROOT = Path(__file__).resolve().parents[1]
SYNTHALIGN = Path(sys.executable).with_name("synthalign")
SEEDS = ROOT / "pipelines" / "recipes" / "data" / "rdpo-quickstart.jsonl"
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens


# ------------------------------------------------------------------ accounting


def test_accounting_sums_workers_prices_models_and_says_it_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "status"
    (folder / accounting.ACCOUNTING).mkdir(parents=True)
    worker = [
        {"step": "answer", "model": "m", "calls": 4, "input_tokens": 400, "output_tokens": 100,
         "failures": 1, "retries": 2, "seconds": 1.5},
    ]  # fmt: skip
    (folder / accounting.ACCOUNTING / "1.json").write_text(json.dumps(worker))
    (folder / accounting.ACCOUNTING / "2.json").write_text(json.dumps(worker))
    rows = accounting.collect(folder, ["answer"])
    assert rows == [
        {"step": "answer", "model": "m", "calls": 8, "input_tokens": 800, "output_tokens": 200,
         "failures": 2, "retries": 4, "seconds": 3.0},
    ]  # fmt: skip
    costed = accounting.priced(rows, {"openai:http://h/v1#m": {"input": 1.0, "output": 10.0}})
    assert costed[0]["cost"] == pytest.approx(800 / 1e6 + 2000 / 1e6)
    line = accounting.summary_line(costed)
    assert "8 calls" in line and "800 input + 200 output tokens" in line and "4 retries" in line
    assert "$0.0028" in line
    assert accounting.priced(rows, {})[0]["cost"] is None
    table = accounting.table_rows({"1:main": costed})
    assert table[-1][:4] == ["total", "", "", 8]


def test_a_backend_call_is_counted_with_its_own_token_counts() -> None:
    from synthalign.llms import load_llm

    llm = load_llm("builtin:tiny-random", max_new_tokens=8, temperature=0)
    llm.load()
    before = {(r["step"], r["model"]): r for r in accounting.totals()}
    llm.generate_outputs(inputs=[[{"role": "user", "content": "hello there"}]] * 3)
    after = {(r["step"], r["model"]): r for r in accounting.totals()}
    key = next(k for k in after if k[1] == llm.model_name)
    calls = after[key]["calls"] - (before.get(key) or {}).get("calls", 0)
    assert calls == 3
    assert after[key]["output_tokens"] > (before.get(key) or {}).get("output_tokens", 0)
    assert after[key]["input_tokens"] > (before.get(key) or {}).get("input_tokens", 0)


# ------------------------------------------------------------------ progress estimates


def test_progress_expects_what_the_predecessors_send(tmp_path: Path) -> None:
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepInput, step

    @step(inputs=["x"], outputs=["x"])
    def Triple(inputs: StepInput):  # distilabel names the step class after it
        yield [row for row in inputs for _ in range(3)]

    @step(inputs=["x"], outputs=["x"])
    def Keep(inputs: StepInput):
        yield inputs

    with Pipeline(name="progress-test") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)])
        load >> Triple(name="triple") >> Keep(name="keep")
    status = tmp_path / "status"
    (status / "progress").mkdir(parents=True)
    now = time.time()

    def note(step: str, **counts: object) -> None:
        data = {"step": step, "replica": 0, "started": now - 10, "finished": None, **counts}
        (status / "progress" / f"{step}.0.json").write_text(json.dumps(data))

    note("load", generator=True, rows_in=0, rows_done=10, rows_out=10, total=10, finished=now)
    note("triple", generator=False, rows_in=4, rows_done=2, rows_out=6, total=None)
    by_name = {s.name: s for s in PipelineProgress(pipeline, status).statuses(now)}
    assert by_name["load"].finished and by_name["load"].total == 10
    assert by_name["triple"].total == 10 and by_name["triple"].done == 2
    assert by_name["triple"].eta == pytest.approx(8 / (2 / 10))
    assert by_name["keep"].total == 30 and not by_name["keep"].started  # 10 rows, tripled


# ------------------------------------------------------------------ the run as a user sees it

# The Condor quickstart on the tiny random model: the shipped recipe with the question and
# critique schemas kept short (a random model must close its JSON), a price on two roles.
QUICKSTART = {
    "llm": "builtin:tiny-random",
    "num_samples": 12,
    "question.temperature": 0.7,
    "question.max_new_tokens": 80,
    "question.max_question_chars": 60,
    "question.price_per_million": PRICE,
    "answer.max_new_tokens": 24,
    "answer.price_per_million": PRICE,
    "critique.temperature": 0.7,
    "critique.max_new_tokens": 96,
    "critique.max_field_chars": 40,
    "refine.max_new_tokens": 24,
    "max_failed_fraction": 1.0,  # random text: many rows fail, and are recorded
}


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``synthalign generate condor`` as a user runs it, stdout and stderr pipes (not a TTY)."""
    tmp = tmp_path_factory.mktemp("console")
    recipe = recipe_with(tmp, "condor-quickstart.yaml", **QUICKSTART)
    proc = subprocess.run(
        [str(SYNTHALIGN), "generate", "condor", "--config", str(recipe), "--output", "dataset"],
        capture_output=True, text=True, timeout=1200, cwd=tmp, env=fresh_home_env(tmp / "home"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp / "dataset"


def test_a_run_prints_few_lines_naming_the_folder_first_and_last(quiet_run) -> None:
    proc, out = quiet_run
    assert not proc.stdout.startswith("\x1b") and "\r" not in proc.stderr  # no live bars
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[0] == "synthalign generate condor -> dataset (log: dataset.log)"
    record = json.loads((out / "synthalign.json").read_text())
    counts = ", ".join(f"{k}: {v}" for k, v in record["counts"].items())
    assert proc.stdout.strip().splitlines()[-1] == f"dataset written to dataset ({counts} rows)"
    assert "distilabel" not in proc.stderr and "INFO" not in proc.stderr  # in the file
    log = out.with_name("dataset.log")
    assert log.is_file() and not list(out.rglob("*.log"))  # beside the folder: never pushed
    text = " ".join(log.read_text().split())
    assert "distilabel.pipeline" in text and "Pipeline data will be written" in text


def test_a_run_records_its_usage_in_the_record_the_card_and_one_line(quiet_run) -> None:
    proc, out = quiet_run
    usage = json.loads((out / "synthalign.json").read_text())["usage"]["1:main"]
    by_step = {u["step"]: u for u in usage}
    assert all(u["model"] == "builtin:tiny-random" for u in usage), usage
    assert len(by_step) == 4 and all(u["calls"] > 0 and u["output_tokens"] > 0 for u in usage)
    assert all(u["input_tokens"] > u["calls"] for u in usage)  # prompts of several tokens
    assert all(u["seconds"] > 0 for u in usage)
    calls = sum(u["calls"] for u in usage)
    cost = sum(u["input_tokens"] * 1e-6 + u["output_tokens"] * 2e-6 for u in usage)
    assert sum(u["cost"] for u in usage) == pytest.approx(cost, abs=1e-5)
    summary = next(line for line in proc.stderr.splitlines() if line.startswith("LLM usage:"))
    assert f"{calls:,} calls" in summary and f"${cost:.4f}" in summary
    card = (out / "README.md").read_text()
    section = card.split("## Accounting", 1)[1].split("\n## ", 1)[0]
    assert "| 1:main |" in section and "builtin:tiny-random" in section
    assert f"| total | | | {calls} |" in " ".join(section.split())


def test_two_prices_for_one_model_are_refused_before_the_run(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "condor-quickstart.yaml", **{"question.price_per_million": PRICE,
        "answer.price_per_million": {"input": 5.0, "output": 2.0}},
    )  # fmt: skip
    fails_in_one_line(
        generate_args("condor", recipe, tmp_path / "out"), "price", "builtin:smollm2-135m"
    )
    assert not (tmp_path / "cache").exists()


def test_dry_run_prints_the_plan_and_loads_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthalign.llms.base import SynthLLM
    from synthalign.plan import print_plan

    def refuse(self: SynthLLM) -> None:
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(SynthLLM, "load", refuse)
    recipe = write_tiny_rdpo_recipe(
        tmp_path, "plan", SEEDS, batch=4, teacher={"max_new_tokens": 16},
        seed_data={"source": str(SEEDS), "limit": 3},
    )  # fmt: skip
    print_plan("rdpo", recipe)
    text = capsys.readouterr().out
    assert text.startswith("plan: rdpo (recipe plan), state 1:main; no model was loaded")
    assert "| builtin:tiny-random | 3 | 3 |" in text  # 3 seed rows reach the first teacher turn
    assert "<=48 |" in text  # at most max_new_tokens per call
    assert text.strip().splitlines()[-1].startswith("total: ")
    assert not (tmp_path / "cache").exists()  # nothing ran


def test_generate_dry_run_on_the_command_line_exits_0_with_the_plan(tmp_path: Path) -> None:
    recipe = recipe_with(
        tmp_path, "condor-quickstart.yaml", **{"question.price_per_million": PRICE}
    )
    proc = subprocess.run(
        [str(SYNTHALIGN), *generate_args("condor", recipe, tmp_path / "out"), "--dry-run"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=fresh_home_env(tmp_path / "home"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("plan: condor (recipe condor-quickstart)"), proc.stdout
    question = next(line for line in lines if line.startswith("| generate_questions "))
    # 12 questions: 4 calls writing 3 each, at most 192 new tokens a call
    assert "| builtin:smollm2-135m | 4 | 4 |" in question and "<=768 |" in question, question
    assert "cost <= $" in lines[-1] and lines[-1].startswith("total: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path / "out.log").exists()
