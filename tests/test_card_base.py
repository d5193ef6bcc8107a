"""The card helpers of :mod:`synthalign.cards.base` that every method's README.md uses:
Hub size labels, escaped Markdown tables, count tables, deterministic PNG figures, the
version record and base metadata, and the YAML front matter."""

from __future__ import annotations

import pytest
from datasets import Dataset

from synthalign.cards import base


def test_size_category_uses_hub_labels() -> None:
    assert [base.size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 999_999, 1_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
    ]
    assert base.size_category(10**13) == "n>1T"


def test_markdown_table_escapes_cells() -> None:
    table = base.markdown_table(
        [["a|b", 0.123456, None], {"x": "line\nbreak", "y": 2, "z": True}], ["x", "y", "z"]
    )
    assert table.splitlines() == [
        "| x | y | z |",
        "| --- | --- | --- |",
        "| a\\|b | 0.1235 |  |",
        "| line break | 2 | true |",
    ]
    with pytest.raises(ValueError):
        base.markdown_table([[1]], ["a", "b"])


def test_counts_table_groups_and_orders() -> None:
    ds = Dataset.from_dict({"task": ["qa", "code", "qa", "qa", None], "lvl": [1, 2, 1, 2, 1]})
    lines = base.counts_table(ds, ["task"]).splitlines()
    assert lines[0] == "| task | rows | share |"
    assert lines[2] == "| qa | 3 | 60.0% |"
    assert len(lines) == 5
    assert "| qa | 1 | 2 | 40.0% |" in base.counts_table(ds, ["task", "lvl"])
    with pytest.raises(ValueError, match="not in the dataset"):
        base.counts_table(ds, ["missing"])


def test_figure_png_is_deterministic() -> None:
    def draw() -> bytes:
        fig = base.new_figure(2, 2)
        fig.add_subplot().plot([1, 2, 3], [3, 1, 2])
        return base.figure_png(fig)

    first = draw()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == draw()
    assert b"Matplotlib version" not in first


def test_versions_and_base_metadata() -> None:
    found = base.versions()
    assert {"synthalign", "distilabel", "datasets", "transformers"} <= set(found)
    meta = base.base_metadata(
        "synpo", 12_345, ["preference", "synpo"], ["text-generation"], license="mit"
    )
    assert meta == {
        "license": "mit",
        "size_categories": ["10K<n<100K"],
        "tags": ["synthetic", "synthalign", "synpo", "preference"],
        "task_categories": ["text-generation"],
    }


def test_render_readme_front_matter() -> None:
    card = base.CardContent({"license": "mit", "configs": "ignored"}, "Body")
    text = base.render_readme(card, {"a": {"train": "data/a/train-*"}}, "a")
    assert text.startswith("---\nlicense: mit\nconfigs:\n- config_name: a\n")
    assert text.endswith("---\n\nBody\n")
    with pytest.raises(ValueError):
        base.render_readme(card, {"a": {"train": "x"}}, "b")
