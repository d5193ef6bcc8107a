"""The card's "Decontamination" section: what was checked, and what matched, per eval set.

Counted from the rows the run considered (the method's all-rows configs), which carry
the columns of :class:`synthalign.steps.decontaminate.DecontaminateRows`. A card whose
recipe named no evaluation set says "not checked" rather than nothing, so a reader can
tell an unchecked dataset from a clean one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import markdown_table
from synthalign.recipes import Decontaminate

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["decontamination_section"]

_NOT_CHECKED = (
    "## Decontamination\n\nNot checked: the recipe names no evaluation set. Add"
    " `decontaminate: {against: [FILE_OR_HUB_ID[:split[:column]]]}` to check prompts and"
    " answers against your benchmarks (13-gram overlap and embedding similarity).\n"
)


def _matches(
    datasets: Mapping[str, Dataset], configs: Sequence[str]
) -> tuple[int, Counter[tuple[str, str]]]:
    checked, found = 0, Counter[tuple[str, str]]()
    for name in configs:
        data = datasets.get(name)
        if data is None or "contamination" not in data.column_names:
            continue
        checked += len(data)
        for source, kind in zip(data["contamination"], data["contamination_kind"], strict=True):
            if source:
                found[(source, kind)] += 1
    return checked, found


def decontamination_section(
    datasets: Mapping[str, Dataset], configs: Sequence[str], info: Mapping[str, Any]
) -> str:
    """Markdown for the card: per evaluation set, n-gram and embedding matches."""
    raw = (info.get("recipe") or {}).get("decontaminate")
    if not raw:
        return _NOT_CHECKED
    block = Decontaminate.model_validate(raw)
    checked, found = _matches(datasets, configs)
    verb = "dropped" if block.action == "drop" else "published, flagged in `contamination`"
    embedding = (
        f"cosine >= {block.embedding_threshold:g} ({block.model})"
        if block.embedding_threshold is not None
        else "off"
    )
    rows = [[s.name, found[(s.name, "ngram")], found[(s.name, "embedding")]] for s in block.against]
    total = sum(found.values())
    return (
        "## Decontamination\n\n"
        f"Every prompt and answer of the {checked} rows considered was checked against"
        f" {len(block.against)} evaluation set(s): {block.ngram}-gram overlap (an item"
        f" shorter than that must appear whole) and embedding similarity ({embedding})."
        f" {total} row(s) matched and were {verb}; the matched item is in"
        " `contamination_item`.\n\n"
        + markdown_table(
            rows, ["evaluation set", f"{block.ngram}-gram matches", "embedding matches"]
        )
    )
