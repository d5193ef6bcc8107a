"""The dataset card of a GRA folder: funnel per round, scores, who played which role.

Everything is computed from the published configs (``all`` and ``rejected`` hold every
candidate with ``kept``, ``drop_stage`` and ``drop_reason``), so ``synthalign card DIR``
rebuilds the same card from the folder alone. Three figures:

- ``funnel.png``: per round, how many candidates left at each stage (generation,
  instruction review, response, response review, adjudication, dedup) and how many
  were kept;
- ``score_histogram.png``: the committee's mean score of every reviewed candidate,
  split by the committee's decision, with ``min_mean_score`` drawn in, plus the
  Adjudicator's scores;
- ``role_counts.png``: per pool model, how often it was drawn as Generator, Reviewer
  and Adjudicator, and how many of its reviews were unusable (abstentions).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import (
    CardContent,
    base_metadata,
    count_axis,
    figure_png,
    markdown_table,
    new_figure,
)
from synthalign.llms.pool import pool_members
from synthalign.steps.gra import STAGES

if TYPE_CHECKING:
    from datasets import Dataset

PAPER = (
    "Gao et al., *A Strategic Coordination Framework of Small LLMs Matches Large LLMs in Data "
    "Synthesis* ([code](https://github.com/GX-XinGao/GRA))"
)

FUNNEL_STAGES: tuple[str, ...] = ("candidates", *STAGES, "adjudicated", "adjudication_kept", "kept")
"""Rows of the per-round funnel: every drop stage, the adjudications, what was kept."""
EXIT_STAGES: tuple[str, ...] = (*STAGES, "kept")
_COLUMNS = [
    "round", "kept", "drop_stage", "generator_model", "reviewer_models", "adjudicator_model",
    "review_mean", "review_decision", "adjudication_score", "adjudication_kept",
    "instruction_reviews", "response_reviews", "adjudication",
]  # fmt: skip


def candidate_rows(datasets: Mapping[str, Dataset]) -> list[dict[str, Any]]:
    """Every candidate of every round (kept ones from ``all``, the rest from ``rejected``)."""
    rows: list[dict[str, Any]] = []
    for config in ("all", "rejected"):
        data = datasets.get(config)
        if data is None or len(data) == 0:
            continue
        columns = [c for c in _COLUMNS if c in data.column_names]
        rows.extend(data.select_columns(columns).to_list())
    return rows


def funnel(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts along GRA's funnel for one round's candidates, from the drop columns."""
    dropped = Counter(r.get("drop_stage") for r in rows if r.get("kept") is False)
    adjudicated = [r for r in rows if r.get("review_decision") == "adjudicate"]
    return {
        "candidates": len(rows),
        **{stage: dropped[stage] for stage in STAGES},
        "adjudicated": len(adjudicated),
        "adjudication_kept": sum(1 for r in adjudicated if r.get("adjudication_kept")),
        "kept": sum(1 for r in rows if r.get("kept") is True),
    }


def funnels(rows: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
    """Funnel counts per round (see :func:`funnel`)."""
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_round[int(row["round"])].append(row)
    return {r: funnel(by_round[r]) for r in sorted(by_round)}


def role_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per model: roles drawn, and review / adjudication calls actually made and failed."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[row["generator_model"]]["generator"] += 1
        for model in row.get("reviewer_models") or []:
            counts[model]["reviewer"] += 1
        if row.get("adjudicator_model"):  # none seated without an Adjudicator (ablations)
            counts[row["adjudicator_model"]]["adjudicator (drawn)"] += 1
        for key in ("instruction_reviews", "response_reviews"):
            for review in row.get(key) or []:
                counts[review["model"]][f"{key.removesuffix('s').replace('_', ' ')}s made"] += 1
                if review.get("error"):
                    counts[review["model"]]["unusable reviews"] += 1
        adjudication = row.get("adjudication")
        if adjudication:
            counts[adjudication["model"]]["adjudications made"] += 1
            if adjudication.get("error"):
                counts[adjudication["model"]]["unusable reviews"] += 1
    return {m: dict(c) for m, c in sorted(counts.items())}


def funnel_figure(per_round: Mapping[int, Mapping[str, int]]) -> bytes:
    """Stacked bars: where each round's candidates left the funnel."""
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    rounds = list(per_round)
    if not rounds:
        ax.text(0.5, 0.5, "no candidates", ha="center", va="center", transform=ax.transAxes)
        return figure_png(fig)
    bottom = [0] * len(rounds)
    labels = [f"round {r}" for r in rounds]
    for stage in EXIT_STAGES:
        values = [per_round[r].get(stage, 0) for r in rounds]
        label = "kept" if stage == "kept" else f"dropped at {stage.replace('_', ' ')}"
        ax.bar(labels, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("candidates")
    count_axis(ax.yaxis)
    ax.set_title("GRA funnel: where each round's candidates ended")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure_png(fig)


def score_histogram(rows: list[dict[str, Any]], min_mean_score: float | None) -> bytes:
    """Committee means by decision, and adjudicator scores, on the 0-10 scale."""
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    series: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("review_mean") is not None:
            series[f"committee: {row.get('review_decision')}"].append(row["review_mean"])
        if row.get("adjudication_score") is not None:
            series["adjudicator"].append(row["adjudication_score"])
    if series:
        names = sorted(series)
        ax.hist(
            [series[n] for n in names], bins=20, range=(0, 10), label=names, histtype="barstacked"
        )
    else:
        ax.text(0.5, 0.5, "no reviewed responses", ha="center", va="center", transform=ax.transAxes)
    if min_mean_score is not None:
        ax.axvline(
            min_mean_score,
            color="black",
            linestyle="--",
            label=f"min_mean_score {min_mean_score:g}",
        )
    ax.set_xlabel("score (0-10; reviewer score = mean of six dimensions)")
    ax.set_ylabel("candidates")
    count_axis(ax.yaxis)
    ax.set_title("Review scores")
    ax.legend(fontsize=7)
    return figure_png(fig)


ROLE_COLUMNS: tuple[str, ...] = (
    "generator",
    "reviewer",
    "adjudicator (drawn)",
    "instruction reviews made",
    "response reviews made",
    "adjudications made",
    "unusable reviews",
)


def role_figure(counts: Mapping[str, Mapping[str, int]]) -> bytes:
    """Grouped horizontal bars: roles drawn per pool model."""
    roles = ["generator", "reviewer", "adjudicator (drawn)", "unusable reviews"]
    models = list(counts)
    fig = new_figure(7.0, 1.0 + 0.6 * max(3, len(models)))
    ax = fig.add_subplot()
    if not models:
        ax.text(0.5, 0.5, "no candidates", ha="center", va="center", transform=ax.transAxes)
        return figure_png(fig)
    height = 0.8 / len(roles)
    for k, role in enumerate(roles):
        ys = [i + k * height for i in range(len(models))]
        ax.barh(ys, [counts[m].get(role, 0) for m in models], height=height, label=role)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(models))], models, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("candidates")
    count_axis(ax.xaxis)
    ax.set_title("Roles per pool model")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure_png(fig)


def _pool_lines(recipe: Mapping[str, Any]) -> str:
    """One line per pool member: its recorded name, spec and decoding."""
    generation = recipe.get("generation") or {}
    try:
        members = pool_members(
            recipe.get("pool") or [],
            seed=int(recipe.get("seed", 0)),
            temperature=generation.get("temperature", 0.2),
            top_p=generation.get("top_p", 0.9),
        )
    except (KeyError, TypeError, ValueError):  # a record from another version: list what it says
        return "\n".join(
            f"- `{p if isinstance(p, str) else p.get('spec')}`" for p in recipe.get("pool") or []
        )
    lines = []
    for m in members:
        decoding = ", ".join(f"{k} {v}" for k, v in m.generation_kwargs.items())
        lines.append(f"- `{m.name}`: `{m.spec}` ({decoding})")
    return "\n".join(lines)


def _example(data: Dataset | None) -> str:
    if data is None or len(data) == 0:
        return ""
    row = data[0]
    shown = {
        k: row.get(k)
        for k in (
            "messages",
            "domain",
            "keywords",
            "review_mean",
            "review_std",
            "review_decision",
            "response_reviews",
            "summary",
        )
    }
    text = json.dumps(shown, indent=2, ensure_ascii=False)
    if len(text) > 3000:
        text = text[:3000] + "\n..."
    return f"\n## Example kept sample\n\n```json\n{text}\n```\n"


def _funnel_label(stage: str) -> str:
    if stage in STAGES:
        return f"dropped at {stage.replace('_', ' ')}"
    return stage.replace("_", " ")


def _configs_table(datasets: Mapping[str, Dataset]) -> str:
    def rows(name: str) -> int:
        return len(datasets[name]) if name in datasets else 0

    round_configs = sorted(
        (c for c in datasets if c.startswith("round-")), key=lambda c: int(c.split("-")[1])
    )
    return markdown_table(
        [
            ["all", rows("all"), "every kept sample of every round (default; train on this)"],
            *[[c, rows(c), f"kept samples of {c.replace('-', ' ')}"] for c in round_configs],
            [
                "rejected",
                rows("rejected"),
                "every other candidate, with `drop_stage` and `drop_reason`",
            ],
            ["seeds", rows("seeds"), "the seed pool with its domain, keywords and summary"],
        ],
        ["config", "rows", "what"],
    )


MODES: dict[str, str] = {
    "no_review": "**no review** (section 4.3's ablation): every Generator output is kept "
    "without Reviewers or Adjudicator (only cleaning and dedup drop rows)",
    "single_reviewer": "**single reviewer** (section 4.3's ablation): one Reviewer per sample "
    "decides alone, with the same thresholds; no Adjudicator",
    "majority_vote": "**majority vote** (section 4.3's no-Adjudicator ablation): a sample is kept "
    "when more than half of its Reviewers score it at least `min_mean_score`; no Adjudicator",
}


def variant_lines(recipe: Mapping[str, Any]) -> str:
    """The recipe's ``gra`` variant and the Adjudicator's view, as the card records them."""
    variant = dict(recipe.get("gra") or {})
    mode = variant.get("mode", "full")
    lines = [
        f"- `gra.mode`: `{mode}`: "
        + MODES.get(mode, "the paper's method (committee mean/std rule and Adjudicator)"),
        f"- `gra.fixed_roles`: `{bool(variant.get('fixed_roles'))}`: "
        + (
            "the same members hold the same seats for every sample (section 5.1's "
            "fixed-assignment ablation)"
            if variant.get("fixed_roles")
            else "the seats are drawn afresh for every sample (the paper)"
        ),
        f"- `gra.refine_seeds`: `{bool(variant.get('refine_seeds'))}`: "
        + (
            "**GRA-Refined** (section 5.3): the candidates are the seed instructions, answered "
            "anew by the Generator and curated by the committee; `examples` names the seed"
            if variant.get("refine_seeds")
            else "new instructions from few-shot examples (the paper's synthesis)"
        ),
    ]
    if mode == "full":
        sees = bool(recipe.get("adjudicator_sees_scores"))
        lines.append(
            f"- `adjudicator_sees_scores`: `{sees}`: the Adjudicator reads the Reviewers' "
            + (
                "written feedback and their scores"
                if sees
                else "written feedback, not their scores (Prompt 9)"
            )
        )
    return "\n".join(lines)


def build_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    """The card of a GRA folder (``synthalign generate gra`` or ``loop gra``)."""
    recipe = dict(info.get("recipe") or {})
    min_mean, max_std = recipe.get("min_mean_score"), recipe.get("max_score_std")
    threshold = (recipe.get("dedup") or {}).get("threshold")
    rows = candidate_rows(datasets)
    per_round = funnels(rows)
    roles = role_counts(rows)
    figures = {
        "funnel.png": funnel_figure(per_round),
        "score_histogram.png": score_histogram(rows, min_mean),
        "role_counts.png": role_figure(roles),
    }
    kept = len(datasets["all"]) if "all" in datasets else 0
    funnel_rows = [
        [_funnel_label(stage), *(per_round[r].get(stage, 0) for r in per_round)]
        for stage in FUNNEL_STAGES
    ]
    funnel_table = (
        markdown_table(funnel_rows, ["stage", *(f"round {r}" for r in per_round)])
        if per_round
        else "(no candidates)"
    )
    role_columns = [c for c in ROLE_COLUMNS if any(c in r for r in roles.values())]
    role_table = markdown_table(
        [[m, *(c.get(k, 0) for k in role_columns)] for m, c in roles.items()],
        ["model", *role_columns],
    )
    body = f"""# GRA synthetic SFT data

Instruction-response pairs synthesized by a pool of small LLMs playing three roles
({PAPER}): for every sample a **Generator** (drawn from the pool) invents keywords from
few-shot examples of one domain, writes an instruction and answers it; **Reviewers**
({recipe.get("n_reviewers", "N")} per sample, drawn from the rest of the pool) first accept or
reject the instruction (reasonableness, completeness, clarity: one "no" rejects), then score the
response on six dimensions (correctness, clarity, completeness, relevance, coherence, ethicality,
0-10); the committee accepts when its mean score is at least `min_mean_score` = **{min_mean}**
(the paper's tau) and the standard deviation at most `max_score_std` = **{max_std}** (delta),
rejects below `min_mean_score`, and otherwise asks an **Adjudicator** (drawn from the models
left), who keeps the sample iff its own score is at least `min_mean_score`. Kept samples are
deduplicated in descending score order against the seed pool and earlier rounds
(all-MiniLM-L6-v2, cosine < **{threshold}**) and get a summary so they can serve as examples
in the next round.

Train on `messages` with `synthalign train sft` or `trl sft`: the commands are under
"Use and reproduce" below.

## Variant

{variant_lines(recipe)}

## Configs

{_configs_table(datasets)}
## Funnel per round

Every candidate, where it left (`drop_stage`) or whether it was kept (`kept`).

{funnel_table}
![funnel](figures/funnel.png)

![review scores](figures/score_histogram.png)

## Pool models and their roles

{_pool_lines(recipe)}

{role_table if roles else ""}
![roles](figures/role_counts.png)

## Columns

- `messages`: the pair in TRL's conversational SFT format
- `candidate_id`, `round`, `domain`, `keywords` (the Generator's new keywords), `examples` (the
  few-shot examples it saw), `summary` (metadata enrichment)
- `kept`, `drop_stage`, `drop_reason`: whether the candidate was published, else where and why
  it left
- `generator_model`, `reviewer_models`, `adjudicator_model`, `enricher_model`: the drawn roles
- `instruction_reviews`: per reviewer its yes/no verdicts; `response_reviews`: per reviewer its
  six scores, their mean and its feedback; an unusable review keeps its `error` and `raw` output
  and counts as an abstention
- `review_mean`, `review_std` (population), `review_decision`, `review_reason`
- `adjudication`, `adjudication_score`, `adjudication_reason`, `adjudication_kept`
- `dedup_match`, `dedup_similarity`: for a duplicate, the kept sample or pool row it collided with
- `prompt_templates`: template name and hash of every prompt used
{_example(datasets.get("all"))}"""
    metadata = base_metadata(
        "gra",
        kept,
        tags=["sft", "multi-agent", "llm-committee"],
        task_categories=["text-generation"],
        license=str(recipe.get("license", "apache-2.0")),
    )
    return CardContent(metadata, body, figures)
