"""The diversity report every card carries.

A synthetic dataset that repeats itself is worth less than its row count says, and
none of distilabel, the papers' code or NeMo Data Designer reports it per dataset. The
report is computed from the published rows alone (so ``synthalign card DIR`` rebuilds
it), on the default config's prompts and answers:

- **distinct-1 / distinct-2**: unique word uni/bigrams over all of them (lexical variety);
- **embedding spread**: all-MiniLM-L6-v2 (the built-in ``builtin:minilm``) embeddings of
  the prompts: the mean pairwise cosine similarity and each row's nearest-neighbour
  similarity (a histogram: mass near 1.0 is near-duplicates);
- **seed coverage**, where the recipe names seed data: the share of seed prompts that
  have an output prompt within cosine 0.5 (how much of the seeds' ground the output
  reaches), and the share of output prompts within 0.9 of a seed (near-copies of it);
- **spread over categories** (Condor's domains, task types and difficulties; GRA's
  domains): the normalized entropy of each (1.0 = even).

Large configs are measured on a seeded sample of ``MAX_ROWS`` rows, said in the table.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from synthalign.cards.base import count_axis, figure_png, markdown_table, new_figure
from synthalign.errors import SynthalignError
from synthalign.models import resolve_model
from synthalign.steps.seeds import read_seed_rows

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["MAX_ROWS", "distinct_n", "diversity_section", "prompts_and_answers"]

MAX_ROWS = 2000
COVER_AT = 0.5
COPY_AT = 0.9
CATEGORY_COLUMNS = ("root_domain", "task_type", "difficulty", "domain")
_WORD = re.compile(r"\w+", re.UNICODE)


def _content(value: Any, role: str) -> str | None:
    """The last ``role`` turn of a chat, or a plain string as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        turns = [
            m.get("content") for m in value if isinstance(m, Mapping) and m.get("role") == role
        ]
        return turns[-1] if turns else None
    return None


def prompts_and_answers(data: Dataset) -> tuple[list[str], list[str]]:
    """Prompts and answers of a config in any of TRL's formats (or instruction/response)."""
    columns = set(data.column_names)
    if "messages" in columns:
        pairs = [(_content(m, "user"), _content(m, "assistant")) for m in data["messages"]]
    elif {"prompt", "chosen"} <= columns:
        pairs = [
            (_content(p, "user"), _content(c, "assistant"))
            for p, c in zip(data["prompt"], data["chosen"], strict=True)
        ]
    elif {"instruction", "response"} <= columns:
        pairs = list(zip(data["instruction"], data["response"], strict=True))
    else:
        return [], []
    prompts = [p for p, _ in pairs if p]
    answers = [a for _, a in pairs if a]
    return prompts, answers


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams (0 when there are none)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = _WORD.findall(text.lower())
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def _sample(texts: list[str], seed: int) -> list[str]:
    if len(texts) <= MAX_ROWS:
        return texts
    return random.Random(seed).sample(texts, MAX_ROWS)


def _nearest(sims: np.ndarray) -> np.ndarray:
    """Each row's highest similarity to another row of the same set."""
    work = sims.copy()
    np.fill_diagonal(work, -np.inf)
    return work.max(axis=1)


SEED_COVERAGE = "seed coverage"
NO_SEEDS = (
    "not measured: the recipe names no seed prompts (Condor grows its questions from the "
    "knowledge tree: see the spread rows), or its seed file is no longer where it was"
)


def _seed_prompts(info: Mapping[str, Any]) -> list[str]:
    """The seed prompts named by the recipe's ``seed_data`` (empty when there are none)."""
    section = (info.get("recipe") or {}).get("seed_data")
    if not isinstance(section, Mapping) or not section.get("source"):
        return []
    try:
        rows = read_seed_rows(
            str(section["source"]),
            split=section.get("split") or "train",
            limit=section.get("limit"),
        )
    except SynthalignError:
        return []  # the seed file moved since the run: the card says so by leaving the rows out
    for key in ("prompt_column", "instruction_column", "messages_column"):
        column = section.get(key)
        if column and rows and column in rows[0]:
            texts = [_content(r.get(column), "user") for r in rows]
            return [t for t in texts if t]
    return []


def _entropy(values: Sequence[Any]) -> float:
    counts = Counter(v for v in values if v is not None)
    if len(counts) < 2:
        return 0.0
    total = sum(counts.values())
    h = -sum(c / total * math.log(c / total) for c in counts.values())
    return h / math.log(len(counts))


def _histogram(nearest: dict[str, np.ndarray]) -> bytes:
    fig = new_figure(6.0, 3.4)
    ax = fig.add_subplot()
    bins = np.linspace(-0.2, 1.0, 25)
    for label, values in nearest.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel("cosine similarity to the nearest other prompt")
    ax.set_ylabel("prompts")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return figure_png(fig)


def spread_figure(categories: Mapping[str, Sequence[Any]], top: int = 15) -> bytes:
    """Rows per value of each category column (Condor's domains, task types and
    difficulties; GRA's domains), most frequent first: the spread the table scores."""
    fig = new_figure(6.0 * min(len(categories), 3), 3.6)
    for ax, (column, values) in zip(
        fig.subplots(1, len(categories), squeeze=False)[0], categories.items(), strict=True
    ):
        ranked = Counter(str(v) for v in values if v is not None).most_common(top)
        ax.barh([name for name, _ in ranked][::-1], [n for _, n in ranked][::-1], color="#4472c4")
        ax.set_title(column)
        ax.set_xlabel("rows")
        ax.tick_params(axis="y", labelsize=7)
        count_axis(ax.xaxis)
    return figure_png(fig)


@cache
def _encoder() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer  # heavy: the encoder

    path = resolve_model("builtin:minilm")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _encode(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit length) with transformers
    alone: importing sentence-transformers would cost a card more than the encoding."""
    import torch  # heavy: the encoder

    tokenizer, model = _encoder()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), dtype=np.float32)


def _embedding_rows(
    prompts: list[str], seeds: list[str], seed: int
) -> tuple[list[list[Any]], dict[str, np.ndarray]]:
    sets = {"output": _sample(prompts, seed)}
    if seeds:
        sets["seed data"] = _sample(seeds, seed)
    vectors = {name: _encode(texts) for name, texts in sets.items()}
    rows, nearest = [], {}
    for name, emb in vectors.items():
        if len(emb) < 2:
            continue
        sims = emb @ emb.T
        nearest[name] = _nearest(sims)
        mean = (sims.sum() - np.trace(sims)) / (len(emb) * (len(emb) - 1))
        rows.append([f"{name}: mean pairwise cosine", f"{mean:.3f}"])
        rows.append(
            [f"{name}: median nearest-neighbour cosine", f"{float(np.median(nearest[name])):.3f}"]
        )
    if seeds and len(vectors["output"]) and len(vectors["seed data"]):
        cross = vectors["seed data"] @ vectors["output"].T
        covered = float((cross.max(axis=1) >= COVER_AT).mean())
        copies = float((cross.max(axis=0) >= COPY_AT).mean())
        rows.append(
            [
                f"seed prompts with an output prompt within cosine {COVER_AT}",
                f"{100 * covered:.1f}%",
            ]
        )
        rows.append(
            [f"output prompts within cosine {COPY_AT} of a seed prompt", f"{100 * copies:.1f}%"]
        )
    return rows, nearest


def diversity_section(
    datasets: Mapping[str, Dataset], default: str | None, info: Mapping[str, Any]
) -> tuple[str, dict[str, bytes]]:
    """The card's "Diversity" section (markdown) and its figure."""
    data = datasets.get(default) if default else None
    prompts, answers = prompts_and_answers(data) if data is not None else ([], [])
    if not prompts:
        return "## Diversity\n\nNot measured: the default config has no prompts.\n", {}
    seed = int(info.get("seed") or 0)
    rows: list[list[Any]] = [
        ["rows measured", f"{min(len(prompts), MAX_ROWS)} of {len(prompts)} (config `{default}`)"],
        [
            "distinct-1 / distinct-2 (prompts)",
            f"{distinct_n(prompts, 1):.3f} / {distinct_n(prompts, 2):.3f}",
        ],
        [
            "distinct-1 / distinct-2 (answers)",
            f"{distinct_n(answers, 1):.3f} / {distinct_n(answers, 2):.3f}",
        ],
    ]
    figures: dict[str, bytes] = {}
    seeds = _seed_prompts(info)
    try:
        embedded, nearest = _embedding_rows(prompts, seeds, seed)
    except SynthalignError as exc:  # the MiniLM wheel is not installed
        embedded, nearest = [["embedding measures", f"not computed: {exc}"]], {}
    rows += embedded
    if not seeds:
        rows.append([SEED_COVERAGE, NO_SEEDS])
    categories = {c: data[c] for c in CATEGORY_COLUMNS if c in data.column_names}
    rows += [
        [
            f"spread over {column} (normalized entropy, {len(set(values))} values)",
            f"{_entropy(values):.3f}",
        ]
        for column, values in categories.items()
    ]
    body = "## Diversity\n\n" + markdown_table(rows, ["measure", "value"])
    if nearest:
        figures["diversity_nearest.png"] = _histogram(nearest)
        body += "\n![nearest-neighbour similarity of prompts](figures/diversity_nearest.png)\n"
    if categories:
        figures["diversity_spread.png"] = spread_figure(categories)
        body += "\n![rows per category](figures/diversity_spread.png)\n"
    return body, figures
