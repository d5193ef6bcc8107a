"""GRA's shared vocabulary: domains, prompts, drop stages, and the base of its LLM steps.

GRA (``shared/seeds/001_*``) draws, for every sample, a Generator ``M_G`` from a pool of
small LLMs, ``N_R`` Reviewers from the rest and an Adjudicator from what is left. The
pool is one :class:`~synthalign.llms.pool.PoolLLM`; each row names the members that
answer it (``roles``), and every LLM step is a :class:`GRATask`, a
:class:`~synthalign.steps.base.RoutedTask` whose calls go to those members.

The steps live by concern: the example pool (:mod:`synthalign.steps.gra_pool`), the
Generator (:mod:`synthalign.steps.gra_generate`), the Reviewers and the Adjudicator
(:mod:`synthalign.steps.gra_review`), dedup and the published configs
(:mod:`synthalign.steps.gra_publish`); ``pipelines/gra.py`` wires one round.

Every candidate follows the drop convention (:mod:`synthalign.steps.publish`): while
it is in play ``kept`` is None; the stage that drops it sets ``kept`` False,
``drop_stage`` (one of :data:`STAGES`) and ``drop_reason``; deduplication sets
``kept`` True on the survivors. A step never calls a model for a dropped row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq

from synthalign.steps.base import RoutedTask
from synthalign.steps.clean import CleanColumn
from synthalign.steps.publish import dropped

DOMAINS: tuple[str, ...] = (
    "Coding",
    "Math",
    "QA",
    "Reasoning",
    "Role Play",
    "Language",
    "Creation",
)
"""The paper's seven domains (section 3, Appendix A)."""

METADATA_FIELDS: tuple[str, ...] = ("domain", "keywords", "summary")

TEMPLATES: dict[str, str] = {
    "domain": "gra_domain.jinja2",
    "keywords": "gra_keywords.jinja2",
    "summary": "gra_summary.jinja2",
    "new_keywords": "gra_new_keywords.jinja2",
    "instruction": "gra_instruction.jinja2",
    "instruction_review": "gra_review_instruction.jinja2",
    "response": "gra_response.jinja2",
    "response_review": "gra_review_response.jinja2",
    "adjudication": "gra_adjudicate.jinja2",
}
"""The nine prompts of Appendix E, by role (the keys of every row's ``prompt_templates``)."""

STAGES: tuple[str, ...] = (
    "generation",
    "clean",
    "instruction_review",
    "response",
    "response_review",
    "adjudication",
    "dedup",
)
"""Where a candidate can leave the funnel (``drop_stage``), in pipeline order (``clean``:
the cleaning of the instruction, and later of the response)."""

INSTRUCTION_CLEAN = CleanColumn(
    column="instruction", templates=[TEMPLATES["instruction"]], markers=["<boi>", "<eoi>"]
)
"""The Generator's instruction: inside ``<boi>...<eoi>`` (Prompt 5), free of the prompt's
sections and sentences."""
RESPONSE_CLEAN = CleanColumn(
    column="response", templates=[TEMPLATES["response"]], prompt_column="instruction"
)

SEEDS_CONFIG = "seeds"
DEFAULT_CONFIG = "all"
REJECTED_CONFIG = "rejected"


PLACEHOLDERS: frozenset[str] = frozenset(
    {"keyword", "keywords", "the keywords", "new keywords", "domain", "the domain", "summary",
     "the summary", "instruction", "the instruction", "example", "examples"}
)  # fmt: skip
"""Field names and template words a small model returns instead of a label
(``['keywords', 'keywords', 'keywords']``): never a real keyword or summary."""

ECHOED_LABEL = "echo: the label repeats the prompt's field names"


def real_keywords(values: list[str] | None) -> list[str]:
    """At most three distinct keywords, without placeholders (:data:`PLACEHOLDERS`)."""
    seen: set[str] = set()
    out = []
    for value in values or []:
        text = str(value).strip().strip("'\"").strip()
        key = " ".join(text.lower().split())
        if key and key not in PLACEHOLDERS and key not in seen:
            seen.add(key)
            out.append(text)
    return out[:3]


def real_summary(value: str | None) -> str | None:
    """The summary, or None when it is a placeholder."""
    text = (value or "").strip()
    return None if " ".join(text.lower().strip(" .'\"").split()) in PLACEHOLDERS else text


def round_config(round_index: int) -> str:
    """The config of one round's kept samples."""
    return f"round-{round_index}"


def in_play(row: dict[str, Any]) -> bool:
    """Still a candidate: no stage has dropped it and dedup has not kept it yet."""
    return row.get("kept") is None


def with_templates(row: dict[str, Any], **ids: str) -> dict[str, Any]:
    """The row's ``prompt_templates`` with ``ids`` added (role -> ``name@hash``)."""
    merged = dict(row.get("prompt_templates") or {})
    merged.update(ids)
    return merged


def published_rows(folder: str, config: str) -> list[dict[str, Any]]:
    """The rows of one config of a published Hub folder (none when it has no such config)."""
    files = sorted((Path(folder).expanduser() / "data" / config).glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


class GRATask(RoutedTask):
    """A GRA LLM step: calls only for rows in play, a failed batch drops its rows at ``stage``."""

    stage: ClassVar[str]

    def failed(self, row: dict[str, Any], error: str) -> dict[str, Any]:
        columns = self.passthrough(row)
        if in_play(row):
            columns.update(dropped(self.stage, error))
        return columns
