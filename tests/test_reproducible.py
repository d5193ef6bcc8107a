"""Reproducible runs: the same recipe and seed give the same dataset, and the card says how.

Two ``synthalign generate rdpo`` runs of one recipe on ``builtin:tiny-random`` (seeded
*sampling*, temperature 0.7, so the seed has to do its job) with separate caches, so
the second run cannot reuse the first one's batches: the datasets must be identical row
for row, and so must the cards. Every card's front matter (``reproducibility:``)
records the seed and the versions of the packages that shaped the data (synthalign,
distilabel, transformers, TRL, datasets, torch, and vLLM where installed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rdpo_recipe import write_tiny_rdpo_recipe

CLI = "import sys; from synthalign.cli import app; sys.exit(app())"
REQUIRED_VERSIONS = ("synthalign", "distilabel", "transformers", "trl", "datasets", "torch")


def test_versions_cover_every_package_that_shapes_the_data() -> None:
    from synthalign.cards.base import versions

    found = versions()
    assert set(REQUIRED_VERSIONS) <= set(found)
    assert all(found[name] and found[name][0].isdigit() for name in REQUIRED_VERSIONS)


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_every_card_records_seed_and_versions(tmp_path: Path) -> None:
    from datasets import Dataset

    from synthalign.cards.base import CardContent, versions
    from synthalign.hub import update_card, write_hub_folder

    data = {"sft": Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]})}
    info = {
        "method": "condor",
        "seed": 1234,
        "recipe": {"name": "demo", "seed": 1234},
        "versions": versions(),
    }
    folder = write_hub_folder(
        tmp_path / "out",
        data,
        CardContent(metadata={}, body="# demo\n"),
        pipeline_yaml=None,
        run_info=info,
    )
    recorded = _front_matter(folder / "README.md")["reproducibility"]
    assert (
        recorded["seed"] == 1234 and recorded["method"] == "condor" and recorded["recipe"] == "demo"
    )
    for name in REQUIRED_VERSIONS:
        assert recorded["versions"][name] == versions()[name]

    # `synthalign card DIR` keeps the versions recorded at generation time, not today's
    record = json.loads((folder / "synthalign.json").read_text())
    record["versions"]["distilabel"] = "0.0.1-recorded"
    (folder / "synthalign.json").write_text(json.dumps(record))
    update_card(folder, CardContent(metadata={}, body="# demo\n"))
    assert (
        _front_matter(folder / "README.md")["reproducibility"]["versions"]["distilabel"]
        == "0.0.1-recorded"
    )


def _generate(work: Path, seeds: Path) -> Path:
    work.mkdir()
    # one cache per run (in `work`): the second run recomputes everything
    path = write_tiny_rdpo_recipe(
        work,
        "rdpo-reproducible",
        seeds,
        batch=3,
        teacher={"max_new_tokens": 12, "temperature": 0.7, "top_p": 0.95},
        seed=7,
    )
    out = work / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "generate", "rdpo", "--config", str(path), "-o", str(out)],
        capture_output=True, text=True, timeout=900, cwd=work, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _without_timings(card: str) -> str:
    """The card with its wall-clock seconds masked: the accounting's calls and tokens must
    agree between two runs, the seconds the engines took never do."""
    head, _, rest = card.partition("## Accounting")
    section, sep, tail = rest.partition("\n## ")
    section = " ".join(re.sub(r"\b\d+\.\d+\b", "S", section).split())
    return head + "## Accounting" + section + sep + tail


@pytest.mark.slow
def test_same_recipe_and_seed_give_the_same_dataset(tmp_path: Path) -> None:
    from synthalign.cards.base import versions
    from synthalign.hub import read_hub_folder

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"prompt": f"Give me one tip about topic {i}."}) + "\n" for i in range(6)
        )
    )
    first, second = _generate(tmp_path / "a", seeds), _generate(tmp_path / "b", seeds)

    data_a, info_a = read_hub_folder(first)
    data_b, _ = read_hub_folder(second)
    assert list(data_a) == list(data_b)
    for name in data_a:
        assert data_a[name].to_list() == data_b[name].to_list(), name  # same rows, same order
    assert len(data_a["all"]) == 6
    # sampling really happened (not greedy): the seed is what made the runs agree
    assert json.loads(data_a["all"][0]["generation"])["teacher_kwargs"]["temperature"] == 0.7

    readme_a = _without_timings((first / "README.md").read_text())
    readme_b = _without_timings(
        (second / "README.md").read_text().replace(str(tmp_path / "b"), str(tmp_path / "a"))
    )
    assert readme_a == readme_b
    recorded = _front_matter(first / "README.md")["reproducibility"]
    assert info_a["seed"] == recorded["seed"] == 7 and recorded["method"] == "rdpo"
    for name in REQUIRED_VERSIONS:
        assert info_a["versions"][name] == recorded["versions"][name] == versions()[name]
