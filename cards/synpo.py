"""Dataset cards for SynPO's folders: generator set, improver set, pairs, preference set.

Every folder a SynPO run writes records its ``stage`` in ``synthalign.json``; the card
says what the rows are, how they were filtered, and shows two figures where they
apply: the **funnel** (how many rows survived each step, per iteration for the growing
preference set) and the **score-gap histogram** (the reward gap of the scored rows,
with the threshold drawn in, so a reader sees how much the filter removed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import CardContent, base_metadata, figure_png, markdown_table, new_figure

if TYPE_CHECKING:
    from datasets import Dataset

PAPER = "[SynPO: Self-Boosting Large Language Models with Synthetic Preference Data](https://arxiv.org/abs/2410.06961)"


def funnel_figure(funnels: Mapping[str, Mapping[str, int]]) -> bytes:
    """Horizontal bars per funnel step, one bar per iteration (keys of ``funnels``)."""
    steps: list[str] = []
    for funnel in funnels.values():
        for step in funnel:
            if step not in steps:
                steps.append(step)
    fig = new_figure(7.0, 0.45 * max(4, len(steps) * max(1, len(funnels))) + 1.0)
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(funnels))
    for n, (label, funnel) in enumerate(funnels.items()):
        ys = [i + n * height for i in range(len(steps))]
        values = [funnel.get(step, 0) for step in steps]
        bars = ax.barh(ys, values, height=height, label=f"iteration {label}")
        ax.bar_label(bars, padding=2, fontsize=7)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(steps))], steps)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("SynPO funnel: rows left after each step")
    if len(funnels) > 1:
        ax.legend(fontsize=8)
    return figure_png(fig)


def gap_histogram(gaps: Mapping[str, list[float]], threshold: float | None, title: str) -> bytes:
    """Histogram of reward-score gaps (one series per label), threshold as a dashed line."""
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    series = {k: [g for g in v if g is not None] for k, v in gaps.items()}
    values = [g for v in series.values() for g in v]
    if values:
        lo, hi = min(values), max(values)
        if threshold is not None:
            lo, hi = min(lo, threshold), max(hi, threshold)
        bins = 30 if hi > lo else 1
        ax.hist(list(series.values()), bins=bins, range=(lo, hi) if hi > lo else None, stacked=True, label=list(series))
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("score gap (higher-ranked minus lower-ranked response)")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure_png(fig)


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
    return f"\n### Example row\n\n```json\n{text}\n```\n"


def _load_snippet(configs: list[str]) -> str:
    lines = ["```python", "from datasets import load_dataset", ""]
    lines += [f'{c} = load_dataset("REPO_OR_DIR", "{c}", split="train")' for c in configs]
    return "\n".join([*lines, "```", ""])


def _computed_funnel(datasets: Mapping[str, Dataset], threshold: float | None) -> dict[str, int]:
    """A funnel from the published configs, for folders whose run record has none."""
    funnel: dict[str, int] = {}
    if "prompts" in datasets:
        invalid = datasets["prompts"]["prompt_invalid"]
        funnel["prompts generated"] = len(invalid)
        funnel["valid prompts"] = sum(1 for r in invalid if r is None)
    if "candidates" in datasets:
        reasons = datasets["candidates"]["filter_reason"]
        funnel["candidates scored"] = len(reasons)
        funnel["passed filters"] = sum(1 for r in reasons if r in (None, "not sampled"))
    if "pairs" in datasets:
        funnel["pairs"] = len(datasets["pairs"])
    return funnel


def _reasons(dataset: Dataset | None, column: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """How many rows each non-null reason in ``column`` has (an empty dict without data)."""
    if dataset is None or column not in dataset.column_names:
        return {}
    counts: dict[str, int] = {}
    for reason in dataset[column]:
        if reason is not None and reason not in skip:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def build_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    """The card of any SynPO folder, chosen by ``info["stage"]`` (default: pairs)."""
    stage = info.get("stage", "pairs")
    builder = {
        "generator-set": _generator_card,
        "improver-set": _improver_card,
        "preferences": _preferences_card,
    }.get(stage, _pairs_card)
    return builder(datasets, info)


def _metadata(datasets: Mapping[str, Dataset], tags: list[str], task: str) -> dict[str, Any]:
    n = max((len(d) for d in datasets.values()), default=0)
    return base_metadata("synpo", n, tags=tags, task_categories=[task])


def _generator_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    data = datasets.get("generator")
    stats = info.get("stats", {})
    body = f"""# SynPO self-prompt generator set (iteration {info.get("iteration", 1)})

SFT data that teaches a model to write a user prompt from keywords ({PAPER}, section 2.1).
For each seed prompt, two of its own keywords and one *noise* keyword from another seed
prompt are shuffled into the keywords-to-prompt template; the original prompt is the
answer. The noise keyword teaches the generator to leave out a keyword that does not fit.
Keywords are YAKE candidates without stopwords or personal names (see
`synthalign.steps.keywords`).

Train with `synthalign train sft --dataset THIS_DIR` (`dataset_config: generator`).

## Counts

{markdown_table([[k, v] for k, v in stats.items()], ["", "rows"]) if stats else ""}
## Columns

- `messages`: the chat to train on (TRL SFT format)
- `keywords`: the shuffled list shown to the model; `prompt_keywords`: the two taken from the prompt;
  `noise_keywords`: the ones taken from another prompt
- `source_index`: row of the seed data; `prompt_template`: template name and hash

{_load_snippet(list(datasets))}{_example(data, ["keywords", "noise_keywords", "messages"])}"""
    return CardContent(_metadata(datasets, ["sft", "prompt-generation"], "text-generation"), body)


def _improver_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    funnel = dict(info.get("funnel", {}))
    threshold = info.get("threshold")
    candidates = datasets.get("candidates")
    figures: dict[str, bytes] = {}
    if candidates is not None:
        figures["score_gap_histogram.png"] = gap_histogram(
            {"gold - policy": candidates["score_gap"]}, threshold, "Improver set: gold minus policy score"
        )
    body = f"""# SynPO response improver set (iteration {info.get("iteration")})

SFT data for the response improver ({PAPER}, section 2.2, Appendix C.2). The current
policy (`{info.get("policy_model")}`) answered every seed prompt; a row is kept only where
the scoring model rates the seed's gold answer above the policy's answer by more than
**{threshold}**, so the improver learns improvements, not degradations. The input is the
prompt and the policy's answer in the improvement template; the target is the gold answer.

## Funnel

{markdown_table([[k, v] for k, v in funnel.items()], ["", "rows"]) if funnel else ""}
![score gaps](figures/score_gap_histogram.png)

## Configs

- `improver`: training rows (`messages`, plus prompt, both answers, scores, gap, models)
- `candidates`: every seed row with its scores and `filter_reason` (null = kept)

{_load_snippet(list(datasets))}{_example(datasets.get("improver"), ["prompt", "response_policy", "response_gold", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["sft", "response-improvement"], "text-generation"), body, figures)


def _pairs_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    stats = info.get("stats", {})
    recipe = info.get("recipe") or {}
    threshold = stats.get("pair_threshold", (recipe.get("scorer") or {}).get("pair_threshold"))
    max_repetition = stats.get("max_repetition", (recipe.get("filters") or {}).get("max_repetition", 0.5))
    funnel = dict(info.get("funnel") or _computed_funnel(datasets, threshold))
    iteration = str(info.get("iteration", 1))
    figures = {"funnel.png": funnel_figure({iteration: funnel})}
    if "candidates" in datasets:
        figures["score_gap_histogram.png"] = gap_histogram(
            {"chosen - rejected": datasets["candidates"]["score_gap"]}, threshold, "Candidate pairs: reward gap"
        )
    dropped = stats.get("dropped") or _reasons(datasets.get("candidates"), "filter_reason", skip=("not sampled",))
    invalid = stats.get("invalid_prompts") or _reasons(datasets.get("prompts"), "prompt_invalid")
    models = info.get("models", {})
    body = f"""# SynPO synthetic preference pairs (iteration {iteration})

Preference pairs built without human labels ({PAPER}, sections 2.1-2.2, Appendix C.3):
keyword lists sampled from corpus paragraphs are turned into prompts by the self-prompt
generator; the policy answers; the response improver rewrites that answer into the
**chosen** response; the **rejected** response is the initial model's answer (or the
policy's own, per `rejected_from`). A pair is kept when the reward gap
chosen - rejected exceeds **{threshold}** and neither response has more than
{max_repetition:.0%} repeated n-grams; then a fixed number is sampled.

## Funnel

{_funnel_table({iteration: funnel})}
![funnel](figures/funnel.png)

![score gaps](figures/score_gap_histogram.png)

Invalid prompts by reason: {json.dumps(invalid) if invalid else "none"}.
Candidates dropped by reason: {json.dumps(dropped) if dropped else "none"}.

Models: {", ".join(f"{k} `{v}`" for k, v in models.items()) or "see the rows"}.

## Configs

- `pairs`: TRL preference format (`prompt`, `chosen`, `rejected` as chats) with provenance:
  `keywords`, `paragraph_index`, `iteration`, `score_chosen`, `score_rejected`, `score_gap`,
  repetition shares, `rejected_from`, and the generator / policy / rejected / improver models
- `candidates`: every scored candidate with `filter_reason` (null = kept, "not sampled" = passed but not drawn)
- `prompts`: every generated prompt with `prompt_invalid` (null = usable)

Train with `synthalign train simpo --dataset THIS_DIR` (`dataset_config: pairs`).

{_load_snippet(list(datasets))}{_example(datasets.get("pairs"), ["prompt", "chosen", "rejected", "keywords", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["dpo", "simpo", "preference"], "text-generation"), body, figures)


def _preferences_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    data = datasets["preferences"]
    funnels = {k: v for k, v in (info.get("funnels") or {}).items() if v}
    threshold = info.get("pair_threshold")
    gaps: dict[str, list[float]] = {}
    for it, gap in zip(data["iteration"], data["score_gap"], strict=True):
        gaps.setdefault(f"iteration {it}", []).append(gap)
    figures = {"score_gap_histogram.png": gap_histogram(gaps, threshold, "Preference set: reward gap by iteration")}
    if funnels:
        figures["funnel.png"] = funnel_figure(funnels)
    per_iteration = info.get("per_iteration", {})
    body = f"""# SynPO synthetic preference set (through iteration {info.get("iteration")})

The growing preference set SimPO trains on ({PAPER}, section 2.3): each iteration adds
its sampled pairs to those of earlier iterations. Rows are in TRL's conversational
preference format, each with its provenance (keywords, iteration, scores, gap, models).

## Rows per iteration

{markdown_table([[k, v] for k, v in per_iteration.items()], ["iteration", "pairs"])}
## Funnel per iteration

{_funnel_table(funnels) if funnels else "(not recorded)"}
{"![funnel](figures/funnel.png)" if funnels else ""}

![score gaps](figures/score_gap_histogram.png)

Train with `synthalign train simpo --dataset THIS_DIR` (`dataset_config: preferences`).

{_load_snippet(list(datasets))}{_example(data, ["prompt", "chosen", "rejected", "keywords", "iteration", "score_gap"])}"""
    return CardContent(_metadata(datasets, ["dpo", "simpo", "preference"], "text-generation"), body, figures)
