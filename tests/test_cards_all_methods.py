"""Every method's card, checked the same way on one tiny run each (builtin:tiny-random).

One module-scoped workspace runs ``synthalign generate`` for the four methods as a user
would (a subprocess, from its own working folder, ``--output out/METHOD``), then every
test reads those folders: card parity (front matter, tags, snippets), the diversity
report, the card's commands executed as written, ``synthalign card`` leaving the card
as it was, and no path of the machine in what a reader sees.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from condor_recipe import TINY_CONDOR
from rerun import fresh_home_env

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"
METHODS = ("condor", "gra", "synpo", "rdpo")
TINY = "builtin:tiny-random"


def _recipes(work: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each method's recipe (tiny models, relative cache) and its extra CLI args."""
    gra = yaml.safe_load((RECIPES / "gra-quickstart.yaml").read_text())
    gra.update(
        pool=[{"spec": TINY, "seed": s} for s in (1, 2, 3, 4)],
        samples_per_round=24,
        min_mean_score=0.0,
    )
    gra["seed_data"].update(source=str(ROOT / gra["seed_data"]["source"]), limit=10)
    gra["generation"].update(max_new_tokens=24, structured_max_new_tokens=200)
    synpo = yaml.safe_load((RECIPES / "synpo-quickstart.yaml").read_text())
    for section in ("seed_data", "corpus"):
        synpo[section]["source"] = str(RECIPES / synpo[section]["source"])
    rdpo = yaml.safe_load((RECIPES / "rdpo-quickstart.yaml").read_text())
    rdpo["seed_data"]["source"] = str(RECIPES / rdpo["seed_data"]["source"])
    data = {"condor": dict(TINY_CONDOR), "gra": gra, "synpo": synpo, "rdpo": rdpo}
    out = {}
    for method, recipe in data.items():
        recipe["cache_dir"] = "cache"  # relative: the recorded recipe names no tmp path
        path = work / f"{method}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out[method] = (path, ["--llm", TINY] if method == "rdpo" else [])
    return out


def _cli(work: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthalign.cli", *args],
        env=fresh_home_env(work / "home", OMP_NUM_THREADS="1", TQDM_DISABLE="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cards-all")
    (work / "home").mkdir()
    for method, (recipe, extra) in _recipes(work).items():
        proc = _cli(
            work, "generate", method, "--config", recipe.name, "--output", f"out/{method}", *extra
        )
        assert proc.returncode == 0, (method, proc.stderr[-3000:])
    return work


def _front(folder: Path) -> tuple[dict[str, Any], str]:
    text = (folder / "README.md").read_text()
    _, yaml_text, body = text.split("---\n", 2)
    return yaml.safe_load(yaml_text), body


def _blocks(body: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", body, re.M | re.S)


def _trainable(folder: Path, config: str) -> bool:
    import pyarrow.parquet as pq

    shard = next((folder / "data" / config).glob("*.parquet"))
    columns = set(pq.read_schema(shard).names)
    return "messages" in columns or {"prompt", "chosen", "rejected"} <= columns


def _front_matter_is_the_hubs_own(readme: Path, names: list[str]) -> None:
    """The YAML is exactly what ``huggingface_hub``'s DatasetCardData writes, and
    ``datasets``' public metadata classes read every config and its info back."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    data = DatasetCard.load(readme).data
    written = readme.read_text().split("---\n", 2)[1]
    assert data.to_yaml(line_break="\n").rstrip("\n") == written.rstrip("\n")
    assert list(MetadataConfigs.from_dataset_card_data(data)) == names
    assert sorted(DatasetInfosDict.from_dataset_card_data(data)) == sorted(names)


@pytest.mark.parametrize("method", METHODS)
def test_card_front_matter_and_snippets_are_the_same_for_every_method(
    workspace: Path, method: str
) -> None:
    folder = workspace / "out" / method
    front, body = _front(folder)
    assert front["language"] == ["en"]
    assert {"synthetic", "distilabel", "synthalign", method} <= set(front["tags"])
    assert front["size_categories"] and front["task_categories"] and front["license"]
    counts = json.loads((folder / "synthalign.json").read_text())["rows"]
    names = [c["config_name"] for c in front["configs"]]
    (default,) = [c["config_name"] for c in front["configs"] if c.get("default")]
    first = next(n for n in names if counts[n]["train"] and _trainable(folder, n))
    assert default == first, (names, counts)
    assert f"distilabel pipeline run --config out/{method}/pipeline.yaml" in body
    _front_matter_is_the_hubs_own(folder / "README.md", names)
    assert f'load_dataset("out/{method}", "{default}", split="train")' in body
    assert re.search(rf"^trl (sft|dpo) .*--dataset_name out/{method} ", body, re.M)


@pytest.mark.parametrize("method", METHODS)
def test_every_card_has_the_diversity_report_as_table_and_figure(
    workspace: Path, method: str
) -> None:
    folder = workspace / "out" / method
    _, body = _front(folder)
    section = body.split("## Diversity", 1)[1].split("\n## ", 1)[0]
    for measure in (
        "distinct-1 / distinct-2 (prompts)",
        "distinct-1 / distinct-2 (answers)",
        "output: median nearest-neighbour cosine",
        "seed coverage | not measured"  # its seeds are the knowledge tree's tags
        if method == "condor"
        else "seed prompts with an output prompt within cosine",
    ):
        assert f"| {measure}" in section, (method, section)
    assert "![nearest-neighbour similarity" in section
    assert (folder / "figures" / "diversity_nearest.png").read_bytes()[:4] == b"\x89PNG"
    if method in ("condor", "gra"):  # the paper's categories: domains / task types
        assert "| spread over " in section, section
        assert (folder / "figures" / "diversity_spread.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method", METHODS)
def test_the_cards_python_snippet_runs_as_written(workspace: Path, method: str) -> None:
    _, body = _front(workspace / "out" / method)
    snippets = _blocks(body, "python")
    assert any("load_dataset(" in s for s in snippets)
    for snippet in snippets:
        proc = subprocess.run(
            [sys.executable, "-c", snippet],
            env=fresh_home_env(workspace / "home"),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=workspace,
        )
        assert proc.returncode == 0, (snippet, proc.stderr[-2000:])


def _inline_commands(body: str) -> list[str]:
    """Commands a card gives in running text: a code span with options, e.g.
    `synthalign train sft --config ...` (a bare `synthalign train dpo` names a command)."""
    spans = re.findall(r"`((?:synthalign|trl|distilabel) [^`]*--[^`]*)`", body)
    return [s for s in spans if "\n" not in s]


@pytest.mark.parametrize("method", METHODS)
def test_the_cards_synthalign_commands_run_as_written(workspace: Path, method: str) -> None:
    """Every ``synthalign`` command of the card (bash blocks and running text), run from
    a synthalign checkout as the card says: ``card`` and ``train`` with the shipped
    quickstart recipe (a built-in model). ``distilabel pipeline run`` is each method's
    rerun test (tests/rerun.py); ``trl`` is checked below without a Hub model."""
    if not (workspace / "pipelines").exists():
        (workspace / "pipelines").symlink_to(ROOT / "pipelines")
    _, body = _front(workspace / "out" / method)
    lines = [c for block in _blocks(body, "bash") for c in block.splitlines()]
    commands = [c for c in [*lines, *_inline_commands(body)] if c.startswith("synthalign ")]
    assert any(c.startswith("synthalign train ") for c in commands), commands
    for command in commands:
        proc = _cli(workspace, *shlex.split(command)[1:], timeout=900)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])


@pytest.mark.parametrize("method", METHODS)
def test_the_cards_trl_commands_name_configs_in_trl_formats(workspace: Path, method: str) -> None:
    """TRL itself is not run here (its commands name a Hub model); what it would read is
    checked: each config exists, is not empty and has the columns of that trainer."""
    import pyarrow.parquet as pq

    folder = workspace / "out" / method
    _, body = _front(folder)
    commands = [
        c for block in _blocks(body, "bash") for c in block.splitlines() if c.startswith("trl ")
    ]
    assert commands
    for command in commands:
        args = shlex.split(command)
        config = args[args.index("--dataset_config") + 1]
        table = pq.read_table(next((folder / "data" / config).glob("*.parquet")))
        need = {"messages"} if args[1] == "sft" else {"prompt", "chosen", "rejected"}
        assert need <= set(table.column_names) and table.num_rows, command
        if "kept" in table.column_names:  # a trainer would learn the dropped rows too
            assert all(table.column("kept").to_pylist()), command


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_the_cards_trl_commands_train_as_written(workspace: Path, method: str) -> None:
    """TRL's own CLI runs each command of the card: only the Hub model is swapped for the
    offline built-in one, with one CPU step added (``--use_cpu``: TRL's default bf16
    needs a GPU), so what TRL reads from the folder is what a user's run reads."""
    from synthalign.models import tiny_random_path

    _, body = _front(workspace / "out" / method)
    commands = [
        c for block in _blocks(body, "bash") for c in block.splitlines() if c.startswith("trl ")
    ]
    trl = Path(sys.executable).with_name("trl")
    for command in commands:
        args = shlex.split(command)
        args[args.index("--model_name_or_path") + 1] = str(tiny_random_path())
        args[args.index("--output_dir") + 1] = f"trl-models/{method}/{args[-1]}"
        short = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "64"]
        proc = subprocess.run(
            [str(trl), *args[1:], *short, "--use_cpu", "true", "--report_to", "none"],
            env=fresh_home_env(workspace / "home", HF_HUB_OFFLINE="1", TQDM_DISABLE="1"),
            capture_output=True, text=True, timeout=600, cwd=workspace,
        )  # fmt: skip
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        assert (workspace / args[args.index("--output_dir") + 1] / "model.safetensors").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_card_command_rewrites_the_card_unchanged(workspace: Path, method: str) -> None:
    """``synthalign card DIR`` (the card's own command) rebuilds the same card: same
    ``num_bytes``, same default config, same text."""
    folder = workspace / "out" / method
    before = (folder / "README.md").read_text()
    proc = _cli(workspace, "card", f"out/{method}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = (folder / "README.md").read_text()
    sizes = re.compile(r"num_bytes: \d+")
    assert sizes.findall(after) == sizes.findall(before)
    assert after == before


@pytest.mark.parametrize("method", METHODS)
def test_no_path_of_the_machine_in_what_a_reader_sees(workspace: Path, method: str) -> None:
    """The card, figures and data name no folder of the machine (the run's working
    folder, a temporary folder, HOME); no published file names HOME."""
    folder = workspace / "out" / method
    home = str(workspace / "home")
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert home.encode() not in data, path
        if path.name not in ("pipeline.yaml", "synthalign.json"):
            assert str(workspace).encode() not in data, path
            assert str(ROOT).encode() not in data, path
