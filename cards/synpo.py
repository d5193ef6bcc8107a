"""SynPO's card section for each of its folders: generator set, improver set, pairs, preferences.

Every folder a SynPO run writes records its ``stage`` in ``synthalign.json``; the
section says what the rows are and how they were filtered. The shared frame
(:mod:`synthalign.cards.frame`) adds the funnel table from the ``candidates`` config's
drop columns; this section adds two figures where they apply: the **funnel** (rows
left after each stage, in pipeline order, per iteration for the preference set) and
the **score-gap histogram** (the reward gap of the scored rows with the threshold
drawn in, so a reader sees how much the filter removed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import (
    CardContent,
    base_metadata,
    count_axis,
    figure_png,
    markdown_table,
    new_figure,
)
from synthalign.steps.synpo_publish import IMPROVER_STAGES, PAIR_STAGES

if TYPE_CHECKING:
    from datasets import Dataset
    from matplotlib.figure import Figure

__all__ = ["build_card", "funnel_figure", "gap_histogram", "gap_histogram_figure", "stage_funnel"]

PAPER = "[SynPO: Self-Boosting Large Language Models with Synthetic Preference Data](https://arxiv.org/abs/2410.06961)"

PAIR_LABELS = {
    "considered": "keyword lists",
    "clean": "free of scaffolding",
    "prompt": "valid prompts",
    "answer": "answered",
    "improve": "improved",
    "score": "scored",
    "score gap": "score gap passed",
    "repetition": "repetition passed",
    "sample": "pairs sampled",
}
IMPROVER_LABELS = {
    "considered": "seed prompts",
    "answer": "answered",
    "score": "scored",
    "score gap": "gold wins (kept)",
}


def stage_funnel(
    drop_stages: Sequence[str | None], order: Sequence[str], labels: Mapping[str, str]
) -> dict[str, int]:
    """Rows left after each stage of ``order``, from the rows' ``drop_stage`` (None = kept).

    A stage outside ``order`` counts as a last stage of its own, so the funnel always
    ends at the kept rows.
    """
    lost = Counter(stage for stage in drop_stages if stage is not None)
    left = len(drop_stages)
    funnel = {labels.get("considered", "considered"): left}
    for stage in [*order, *sorted(set(lost) - set(order))]:
        left -= lost.get(stage, 0)
        funnel[labels.get(stage, f"after {stage}")] = left
    return funnel


def funnel_figure(funnels: Mapping[str, Mapping[str, int]]) -> bytes:
    """Horizontal bars per funnel step, one bar per iteration (keys of ``funnels``)."""
    steps: list[str] = []
    for funnel in funnels.values():
        steps += [step for step in funnel if step not in steps]
    fig = new_figure(7.0, 0.45 * max(4, len(steps) * max(1, len(funnels))) + 1.0)
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(funnels))
    for n, (label, funnel) in enumerate(funnels.items()):
        ys = [i + n * height for i in range(len(steps))]
        bars = ax.barh(
            ys, [funnel.get(step, 0) for step in steps], height=height, label=f"iteration {label}"
        )
        ax.bar_label(bars, padding=2, fontsize=7)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(steps))], steps)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    count_axis(ax.xaxis)
    ax.set_title("SynPO funnel: rows left after each step")
    if len(funnels) > 1:
        ax.legend(fontsize=8)
    return figure_png(fig)


def gap_histogram(
    gaps: Mapping[str, list[float | None]],
    threshold: float | None,
    title: str,
    difference: str = "chosen - rejected",
) -> bytes:
    """Histogram of reward-score gaps (one series per label), threshold as a dashed line."""
    return figure_png(gap_histogram_figure(gaps, threshold, title, difference))


def gap_histogram_figure(
    gaps: Mapping[str, list[float | None]],
    threshold: float | None,
    title: str,
    difference: str = "chosen - rejected",
) -> Figure:
    """``difference`` names the signed gap as the rows store it (``gold - policy``): a
    negative gap is a row where the second scored higher, and the axis says so."""
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    series = {k: [g for g in v if g is not None] for k, v in gaps.items()}
    values = [g for v in series.values() for g in v]
    if values:
        lo, hi = min(values), max(values)
        if threshold is not None:
            lo, hi = min(lo, threshold), max(hi, threshold)
        bins = 30 if hi > lo else 1
        ax.hist(
            list(series.values()),
            bins=bins,
            range=(lo, hi) if hi > lo else None,
            stacked=True,
            label=list(series),
        )
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    first = difference.split(" - ")[0]
    ax.set_xlabel(f"reward gap = {difference} (above 0: {first} scored higher)")
    ax.set_ylabel("rows")
    count_axis(ax.yaxis)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _funnel_table(funnels: Mapping[str, Mapping[str, int]]) -> str:
    steps: list[str] = []
    for funnel in funnels.values():
        steps += [s for s in funnel if s not in steps]
    rows = [[step, *(f.get(step, 0) for f in funnels.values())] for step in steps]
    return markdown_table(rows, ["step", *(f"iteration {k}" for k in funnels)])


def _example(dataset: Dataset | None, columns: list[str]) -> str:
    if dataset is None or len(dataset) == 0:
        return ""
    row = {c: dataset[0][c] for c in columns if c in dataset.column_names}
    text = json.dumps(row, indent=2, ensure_ascii=False)
    if len(text) > 3000:
        text = text[:3000] + "\n..."
    return f"\n## Example row\n\n```json\n{text}\n```\n"


def _reasons(dataset: Dataset | None, stage: str | None = None) -> dict[str, int]:
    """Dropped rows per ``drop_reason`` (of one ``drop_stage`` when given)."""
    if dataset is None or "drop_reason" not in dataset.column_names:
        return {}
    pairs = zip(dataset["drop_stage"], dataset["drop_reason"], strict=True)
    return dict(Counter(reason for s, reason in pairs if reason is not None and stage in (None, s)))


def _recipe_value(info: Mapping[str, Any], section: str, key: str, default: Any = None) -> Any:
    return ((info.get("recipe") or {}).get(section) or {}).get(key, default)


def _metadata(datasets: Mapping[str, Dataset], tags: list[str]) -> dict[str, Any]:
    n = max((len(d) for d in datasets.values()), default=0)
    return base_metadata("synpo", n, tags=tags, task_categories=["text-generation"])


def build_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    """The card section of any SynPO folder, chosen by ``info["stage"]`` (default: pairs)."""
    builder = {
        "generator-set": _generator_card,
        "improver-set": _improver_card,
        "preferences": _preferences_card,
    }.get(info.get("stage", "pairs"), _pairs_card)
    return builder(datasets, info)


def _generator_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    data = datasets.get("generator")
    seeds = info.get("seed_data") or _recipe_value(info, "seed_data", "source")
    body = f"""# SynPO self-prompt generator set (iteration {info.get("iteration", 1)})

SFT data that teaches a model to write a user prompt from keywords ({PAPER}, section 2.1).
For each seed prompt of `{seeds}`, two of its own keywords and one *noise* keyword from
another seed prompt are shuffled into the keywords-to-prompt template; the original
prompt is the answer. The noise keyword teaches the generator to leave out a keyword
that does not fit. Keywords are YAKE candidates without stopwords or personal names (see
`synthalign.steps.keywords`); a seed prompt with too few keywords gives no row.

Train the generator with `synthalign train sft` and `dataset_config: generator` in its recipe.

## Columns

- `messages`: the chat to train on (TRL SFT format): {len(data) if data is not None else 0} rows
- `keywords`: the shuffled list shown to the model; `prompt_keywords`: the two taken from
  the prompt; `noise_keywords`: the ones taken from another prompt
- `source_index`: row of the seed data; `prompt_template`: template name and hash
{_example(data, ["keywords", "noise_keywords", "messages"])}"""
    return CardContent(_metadata(datasets, ["sft", "prompt-generation"]), body)


def _improver_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    threshold = _recipe_value(info, "scorer", "improver_threshold")
    candidates = datasets.get("candidates")
    figures: dict[str, bytes] = {}
    if candidates is not None:
        figures["score_gap_histogram.png"] = gap_histogram(
            {"gold - policy": candidates["score_gap"]},
            threshold,
            "Improver set: gold minus policy score",
            difference="gold - policy",
        )
        funnel = stage_funnel(candidates["drop_stage"], IMPROVER_STAGES, IMPROVER_LABELS)
        figures["funnel.png"] = funnel_figure({str(info.get("iteration", 1)): funnel})
    policy = (info.get("models") or {}).get("policy")
    body = f"""# SynPO response improver set (iteration {info.get("iteration")})

SFT data for the response improver ({PAPER}, section 2.2, Appendix C.2). The current
policy (`{policy}`) answered every seed prompt; a row is kept only where the scoring
model rates the seed's gold answer above the policy's answer by more than
**{threshold}**, so the improver learns improvements, not degradations. The input is the
prompt and the policy's answer in the improvement template; the target is the gold answer.

{"![funnel](figures/funnel.png)" if figures else ""}

{"![score gaps](figures/score_gap_histogram.png)" if figures else ""}

## Configs

- `improver`: training rows (`messages`, plus prompt, both answers, scores, gap, models)
- `candidates`: every seed row with its scores, `kept`, `drop_stage` and `drop_reason`
{_example(datasets.get("improver"), ["prompt", "response_policy", "response_gold", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["sft", "response-improvement"]), body, figures)


def _pairs_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    threshold = _recipe_value(info, "scorer", "pair_threshold")
    max_repetition = _recipe_value(info, "filters", "max_repetition", 0.5)
    iteration = str(info.get("iteration", 1))
    candidates = datasets.get("candidates")
    figures: dict[str, bytes] = {}
    if candidates is not None:
        funnel = stage_funnel(candidates["drop_stage"], PAIR_STAGES, PAIR_LABELS)
        figures["funnel.png"] = funnel_figure({iteration: funnel})
        figures["score_gap_histogram.png"] = gap_histogram(
            {"chosen - rejected": candidates["score_gap"]}, threshold, "Candidate pairs: reward gap"
        )
    invalid = _reasons(datasets.get("prompts"), "prompt")
    models = info.get("models") or {}
    body = f"""# SynPO synthetic preference pairs (iteration {iteration})

Preference pairs built without human labels ({PAPER}, sections 2.1-2.2, Appendix C.3):
keyword lists sampled from corpus paragraphs are turned into prompts by the self-prompt
generator; the policy answers; the response improver rewrites that answer into the
**chosen** response; the **rejected** response is the initial model's answer (or the
policy's own, per `rejected_from`). A pair is kept when the reward gap
chosen - rejected exceeds **{threshold}** and neither response has more than
{max_repetition:.0%} repeated n-grams; then a fixed number is sampled.

{"![funnel](figures/funnel.png)" if figures else ""}

{"![score gaps](figures/score_gap_histogram.png)" if figures else ""}

Invalid prompts by reason: {json.dumps(invalid) if invalid else "none"}.

Models: {", ".join(f"{k} `{v}`" for k, v in models.items()) or "see the rows"}.

## Configs

- `pairs`: TRL preference format (`prompt`, `chosen`, `rejected` as chats) with provenance:
  `keywords`, `paragraph_index`, `iteration`, `score_chosen`, `score_rejected`, `score_gap`,
  repetition shares, `rejected_from`, and the generator / policy / rejected / improver models
- `candidates`: every keyword list's row through the stage, with `kept`, `drop_stage` and
  `drop_reason` (stage `sample` = passed every filter but was not drawn)
- `prompts`: every generated prompt, kept or dropped at stage `prompt` with the reason

Train with `synthalign train simpo` on `pairs`: the command is under "Use and reproduce" below.
{_example(datasets.get("pairs"), ["prompt", "chosen", "rejected", "keywords", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["dpo", "simpo", "preference"]), body, figures)


def _preferences_scope(info: Mapping[str, Any]) -> str:
    """What the set holds, per the recipe's ``mix_iterations`` (recorded in the state)."""
    if info.get("mix_iterations", True):  # runs from before the switch mixed them
        return (
            f"The growing preference set SimPO trains on ({PAPER}, section 2.3, Appendix C.3; "
            "`mix_iterations: true`): each iteration adds its sampled pairs to those of earlier "
            "iterations, all iterations' pairs together."
        )
    return (
        f"The preference set SimPO trains on ({PAPER}, section 2.3; `mix_iterations: false`): "
        f"iteration {info.get('iteration')}'s own sampled pairs alone, earlier iterations' "
        "pairs left out."
    )


def _preferences_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    data = datasets["preferences"]
    funnels = {k: v for k, v in (info.get("funnels") or {}).items() if v}
    threshold = _recipe_value(info, "scorer", "pair_threshold")
    gaps: dict[str, list[float | None]] = {}
    for it, gap in zip(data["iteration"], data["score_gap"], strict=True):
        gaps.setdefault(f"iteration {it}", []).append(gap)
    figures = {
        "score_gap_histogram.png": gap_histogram(
            gaps, threshold, "Preference set: reward gap by iteration"
        )
    }
    if funnels:
        figures["funnel.png"] = funnel_figure(funnels)
    per_iteration = Counter(str(it) for it in data["iteration"])
    body = f"""# SynPO synthetic preference set (through iteration {info.get("iteration")})

{_preferences_scope(info)} Rows are in TRL's conversational preference format, each
with its provenance (keywords, iteration, scores, gap, models).

## Rows per iteration

{markdown_table([[k, v] for k, v in sorted(per_iteration.items())], ["iteration", "pairs"])}
## Funnel per iteration

{_funnel_table(funnels) if funnels else "(not recorded)"}
{"![funnel](figures/funnel.png)" if funnels else ""}

![score gaps](figures/score_gap_histogram.png)

Train with `synthalign train simpo` and `dataset_config: preferences` in its recipe.
{_example(data, ["prompt", "chosen", "rejected", "keywords", "iteration", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["dpo", "simpo", "preference"]), body, figures)
