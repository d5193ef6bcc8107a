"""Hub-layout folders on disk: writing them atomically, validating them, rewriting cards.

A folder must never look finished when it is not, must never replace something
synthalign did not write, must carry no secret, and must fail validation with one line
naming the first problem, because a push runs validation first. The card helpers that
fill README.md are checked in tests/test_card_base.py.
Shared fixtures: tests/hub_fixtures.py; shared data and helpers: tests/hub_helpers.py.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset
from hub_helpers import (
    PIPELINE_YAML,
    WriteFolder,
    assert_same,
    hidden_siblings,
    listing,
    miscount_rows,
)
from pydantic import SecretStr

from synthalign.cards.base import CardContent, figure_png, new_figure
from synthalign.errors import OutputError
from synthalign.hub import update_card, validate_hub_folder, write_hub_folder

pytest_plugins = ("hub_fixtures",)
pytestmark = pytest.mark.usefixtures("loopback_only")


# ---------------------------------------------------------------------- writing


def test_existing_folder_is_refused_without_overwrite(
    write: WriteFolder, datasets_: dict[str, Dataset]
) -> None:
    out = write()
    before = {p: (out / p).read_bytes() for p in listing(out)}

    smaller = datasets_["sft"].select(range(3))
    with pytest.raises(OutputError) as caught:
        write(out, {"sft": smaller})
    message = str(caught.value)
    assert "\n" not in message and "--overwrite" in message and str(out) in message
    assert {p: (out / p).read_bytes() for p in listing(out)} == before

    write(out, {"sft": smaller}, overwrite=True)
    assert not (out / "data/preference").exists()
    assert_same(load_dataset(str(out), "sft", split="train"), smaller)
    assert not hidden_siblings(out)


def test_overwrite_never_replaces_a_foreign_folder(tmp_path: Path, write: WriteFolder) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a synthalign output folder"):
        write(precious, overwrite=True)
    assert (precious / "chapter1.tex").read_text() == "years of work"
    assert listing(precious) == {"chapter1.tex"}


def test_failure_midway_leaves_nothing(
    tmp_path: Path, write: WriteFolder, card: CardContent
) -> None:
    broken = CardContent(card.metadata, card.body, {"scores.png": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(OutputError, match="PNG bytes"):
        write(card=broken)
    assert not (tmp_path / "out").exists()
    assert not hidden_siblings(tmp_path / "out")

    # Replacing an existing folder: a failure keeps the old one intact.
    out = write()
    before = {p: (out / p).read_bytes() for p in listing(out)}
    with pytest.raises(OutputError):
        write(out, card=broken, overwrite=True)
    assert {p: (out / p).read_bytes() for p in listing(out)} == before
    assert not hidden_siblings(out)


def test_killed_writer_leaves_no_complete_looking_folder(tmp_path: Path) -> None:
    """SIGKILL just before the run record is written: the target never appears."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time
        from datasets import Dataset
        import synthalign.hub as hub
        import synthalign.hub_write as hub_write
        from synthalign.cards.base import CardContent

        real_write_text = hub_write._write_text

        def stall_before_run_record(path, text):
            if path.name == hub.RUN_INFO_FILENAME:
                print("STALLED", flush=True)
                time.sleep(120)
            real_write_text(path, text)

        hub_write._write_text = stall_before_run_record
        hub.write_hub_folder(
            {str(out)!r}, {{"sft": Dataset.from_dict({{"x": [1, 2, 3]}})}},
            CardContent({{}}, "body"), pipeline_yaml=None, run_info={{"method": "t"}},
        )
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STALLED"
        partial = hidden_siblings(out)
        assert len(partial) == 1 and (partial[0] / "data/sft").is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    with pytest.raises(OutputError, match="not a folder"):
        validate_hub_folder(out)
    # The leftover staging folder does not block the next run.
    write_hub_folder(
        out, {"sft": Dataset.from_dict({"x": [1]})}, CardContent({}, "b"), pipeline_yaml=None,
        run_info={},
    )  # fmt: skip
    assert (out / "synthalign.json").is_file()


def test_bad_names_are_refused_before_writing(
    tmp_path: Path, write: WriteFolder, datasets_: dict[str, Dataset]
) -> None:
    with pytest.raises(OutputError, match="invalid config name"):
        write(datasets={"../evil": datasets_["sft"]}, run_info={})
    with pytest.raises(OutputError, match="not found"):
        write(pipeline_yaml=tmp_path / "missing.yaml", run_info={})
    with pytest.raises(OutputError, match="default config"):
        write(run_info={}, default_config="nope")
    assert not (tmp_path / "out").exists()


def test_secrets_are_scrubbed_from_run_record_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: WriteFolder
) -> None:
    canary = f"canary-{secrets.token_hex(12)}"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    hf_like = "hf_" + "A1b2C3d4" * 4
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE_YAML + f"note: base_url=http://x key {canary}\n")
    run_info = {
        "method": "rdpo",
        "recipe": {
            "llm": {"spec": "openai:http://h/v1#m", "api_key": "typed-in-the-recipe-123"},
            "generation": {"max_new_tokens": 64, "eos_token": "</s>"},
            "notes": f"the key was {canary} and {hf_like}",
        },
        "auth": {"token": "short"},
        "secret_str": SecretStr("shh-very-secret"),
        "headers": ["Authorization: Bearer abcdefghijklmnop"],
        "path": tmp_path,
    }
    out = write(pipeline_yaml=pipeline, run_info=run_info)
    record = json.loads((out / "synthalign.json").read_text())
    assert record["recipe"]["llm"] == {"spec": "openai:http://h/v1#m", "api_key": "<redacted>"}
    assert record["recipe"]["generation"] == {"max_new_tokens": 64, "eos_token": "</s>"}
    assert record["auth"]["token"] == "<redacted>"
    assert record["secret_str"] == "<redacted>"
    assert record["path"] == str(tmp_path)
    for path in listing(out):
        data = (out / path).read_bytes()
        for leaked in (
            canary,
            hf_like,
            "typed-in-the-recipe-123",
            "shh-very-secret",
            "abcdefghijklmnop",
        ):
            assert leaked.encode() not in data, f"{leaked} leaked into {path}"
    assert "<redacted>" in (out / "pipeline.yaml").read_text()


# ---------------------------------------------------------------------- validation


def _break_readme_configs(out: Path) -> None:
    text = (out / "README.md").read_text()
    (out / "README.md").write_text(text.replace("configs:", "old_configs:", 1))


def _point_config_at_nothing(out: Path) -> None:
    text = (out / "README.md").read_text()
    (out / "README.md").write_text(text.replace("data/sft/train-*", "data/sft/missing-*", 1))


def _add_stray_shard(out: Path) -> None:
    (out / "data/extra").mkdir()
    (out / "data/extra/train-00000-of-00001.parquet").write_bytes(
        (out / "data/sft/train-00000-of-00001.parquet").read_bytes()
    )


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda out: (out / "README.md").unlink(), "no README.md"),
        (lambda out: (out / "pipeline.yaml").unlink(), "no pipeline.yaml"),
        (lambda out: (out / "synthalign.json").unlink(), "interrupted"),
        (lambda out: (out / "synthalign.json").write_text("{"), "not valid JSON"),
        (lambda out: (out / "README.md").write_text("# no front matter\n"), "no YAML front matter"),
        (lambda out: (out / "README.md").write_text("---\nconfigs: [\n---\n"), "not valid YAML"),
        (_break_readme_configs, "declares no `configs:`"),
        (_point_config_at_nothing, "matches no file"),
        (_add_stray_shard, "belongs to no config"),
        (miscount_rows, "has 40 rows in its parquet files but synthalign.json records 41"),
        (lambda out: (out / "pipeline.yaml").write_text("- a list\n"), "not a distilabel pipeline"),
        (
            lambda out: (out / "data/sft/train-00000-of-00001.parquet").write_bytes(b"junk"),
            "not a readable parquet file",
        ),
    ],
    ids=[
        "no-card",
        "no-pipeline",
        "no-run-record",
        "bad-run-record",
        "no-front-matter",
        "bad-yaml",
        "no-configs",
        "missing-data",
        "stray-shard",
        "row-count",
        "pipeline-not-mapping",
        "corrupt-parquet",
    ],
)
def test_validation_failures_are_one_line(
    write: WriteFolder, breakage: Callable[[Path], object], expected: str
) -> None:
    out = write()
    breakage(out)
    with pytest.raises(OutputError) as caught:
        validate_hub_folder(out)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_update_card_rewrites_card_and_figures_only(
    write: WriteFolder, datasets_: dict[str, Dataset]
) -> None:
    out = write(default_config="preference")
    data_before = {p: (out / p).read_bytes() for p in listing(out) if p.startswith("data/")}
    new_card = CardContent(
        {"license": "mit"}, "# Rewritten\n", {"other.png": figure_png(new_figure())}
    )
    update_card(out, new_card)
    assert (out / "README.md").read_text().endswith("# Rewritten\n")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["other.png"]
    assert {p: (out / p).read_bytes() for p in listing(out) if p.startswith("data/")} == data_before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    validate_hub_folder(out)
    # The default config survives a card rewrite.
    assert_same(load_dataset(str(out), split="train"), datasets_["preference"])
