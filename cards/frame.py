"""The frame every synthalign card shares, around the method's own section.

The method's card module says what is particular to its data (domains and task
types, tau, committee scores). The frame adds, identically for every method: the
tags and sizes the Hub indexes, the funnel built from the drop convention
(``kept``, ``drop_stage``, ``drop_reason``), the reproducibility record, and how to
load, train on and rerun the folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import (
    REPRODUCIBILITY_KEY,
    CardContent,
    markdown_table,
    reproducibility_metadata,
    size_category,
)
from synthalign.cards.decontamination import decontamination_section
from synthalign.cards.diversity import diversity_section
from synthalign.cards.sections import accounting_section, usage_section, where_of
from synthalign.outcome import Funnel

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["frame_card", "funnel_rows", "funnel_table"]

_BASE_TAGS = ("synthetic", "distilabel", "synthalign")


def funnel_rows(datasets: Mapping[str, Dataset], configs: Sequence[str]) -> list[list[Any]]:
    """``[stage, reason, rows]`` for every dropped row of ``configs``, then the kept total."""
    funnel = Funnel.of(datasets, configs)
    if not funnel.considered:
        return []
    rows: list[list[Any]] = [
        [stage, reason, n] for (stage, reason), n in funnel.dropped.most_common()
    ]
    return [["(considered)", "", funnel.considered], *rows, ["(published)", "kept", funnel.kept]]


def funnel_table(datasets: Mapping[str, Dataset], configs: Sequence[str]) -> str:
    rows = funnel_rows(datasets, configs)
    if not rows:
        return ""
    return markdown_table(rows, ["stage", "reason", "rows"])


def frame_card(
    method: str,
    section: CardContent,
    datasets: Mapping[str, Dataset],
    info: Mapping[str, Any],
    default: str | None,
    funnel_configs: Sequence[str] = (),
) -> CardContent:
    """The method's section inside the shared frame (metadata, funnel, usage)."""
    metadata = dict(section.metadata)
    tags = list(dict.fromkeys([*_BASE_TAGS, method, *metadata.get("tags", [])]))
    metadata["tags"] = tags
    metadata.setdefault("language", ["en"])
    metadata.setdefault("task_categories", ["text-generation"])
    largest = max((len(d) for d in datasets.values()), default=0)
    metadata.setdefault("size_categories", [size_category(largest)])
    metadata.setdefault(REPRODUCIBILITY_KEY, reproducibility_metadata(info))
    body = section.body.rstrip("\n") + "\n"
    funnel = funnel_table(datasets, funnel_configs)
    if funnel and "## Funnel" not in body:
        body += "\n## Funnel\n\nEvery row the run considered, where it left and why (`kept`, `drop_stage`, `drop_reason`).\n\n"
        body += funnel + "\n"
    diversity, figures = diversity_section(datasets, default, info)
    body += "\n" + diversity
    body += "\n" + decontamination_section(datasets, funnel_configs or list(datasets), info)
    body += "\n" + accounting_section(info)
    where, on_hub = where_of(info, str(info.get("folder_name") or method))
    body += "\n" + usage_section(where, default, datasets, on_hub=on_hub, method=method)
    return CardContent(metadata=metadata, body=body, figures={**section.figures, **figures})
