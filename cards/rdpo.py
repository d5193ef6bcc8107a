"""The rDPO section of a dataset card: what tau looks like, and how the scores moved.

A soft-label dataset is only as good as its labels, so the card shows the tau
distribution (how many pairs the scorer is sure about, how many flip), the original
vs revised scores (did self-critique help, by the scorer's judgement) and counts per
principle, next to the configs and versions. What was dropped and why is the shared
frame's funnel (:mod:`synthalign.cards.frame`), built from the ``all`` config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import (
    CardContent,
    base_metadata,
    count_axis,
    counts_table,
    figure_png,
    markdown_table,
    new_figure,
    versions,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from matplotlib.figure import Figure


def _floats(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def tau_histogram(taus: list[float], before: list[float] | None = None) -> bytes:
    """tau after calibration, over the same pairs at T = 1 (``before``) when given."""
    return figure_png(tau_histogram_figure(taus, before))


def tau_bins(values: list[float], n: int = 24) -> list[float]:
    """Bin edges over the values' own range (with 0.5 in view): tau often sits in a narrow
    band near 0.5, which 20 bins over [0, 1] put into one or two bars."""
    lo, hi = min([*values, 0.5]), max([*values, 0.5])
    pad = max((hi - lo) * 0.05, 1e-3)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def tau_histogram_figure(taus: list[float], before: list[float] | None = None) -> Figure:
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    bins = tau_bins([*taus, *(before or [])])
    if before:
        ax.hist(before, bins=bins, histtype="step", color="#777777", linewidth=1.5,
                label="before (T = 1)")  # fmt: skip
    ax.hist(
        taus, bins=bins, color="#4472c4", edgecolor="white", alpha=0.75,
        label="after calibration" if before else None,
    )  # fmt: skip
    count_axis(ax.yaxis)
    ax.axvline(0.5, color="#999999", linestyle="--", linewidth=1)
    ax.set_xlabel("tau = P(chosen preferred)")
    ax.set_ylabel("pairs")
    ax.set_title(f"tau over {len(taus)} pairs")
    if before:
        ax.legend(loc="upper left", fontsize=8)
    return fig


def score_scatter(original: list[float], revised: list[float], kept: list[bool]) -> bytes:
    """Original vs revised score per row; integer (judge) scores get a small fixed jitter
    so that overlapping points stay countable."""
    return figure_png(score_scatter_figure(original, revised, kept))


def score_scatter_figure(original: list[float], revised: list[float], kept: list[bool]) -> Figure:
    import numpy as np  # heavy: numpy
    from matplotlib.ticker import MaxNLocator  # heavy: matplotlib

    fig = new_figure(4.8, 4.6)
    ax = fig.add_subplot()
    x, y = np.asarray(original, dtype=float), np.asarray(revised, dtype=float)
    integers = bool(len(x)) and np.all(x == np.round(x)) and np.all(y == np.round(y))
    for axis in (ax.xaxis, ax.yaxis):  # few, short tick labels: reward scores are long floats
        axis.set_major_locator(MaxNLocator(nbins=5, integer=integers))
    if integers:
        rng = np.random.default_rng(0)
        x = x + rng.uniform(-0.15, 0.15, len(x))
        y = y + rng.uniform(-0.15, 0.15, len(y))
    mask = np.asarray(kept, dtype=bool)
    ax.scatter(x[mask], y[mask], s=12, alpha=0.6, color="#4472c4", label="kept")
    if (~mask).any():
        ax.scatter(
            x[~mask], y[~mask], s=12, alpha=0.6, color="#c0504d", marker="x", label="dropped"
        )
    if len(x):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", linestyle="--", linewidth=1)
    ax.set_xlabel("score of the original response")
    ax.set_ylabel("score of the revised response")
    ax.set_title("scores: above the line = revision preferred")
    ax.legend(loc="lower right", fontsize=8)
    return fig


INTRO = (
    "Preference pairs for refined DPO ([arXiv 2402.08005](https://arxiv.org/abs/2402.08005)), "
    "made with synthalign. A teacher answered each prompt, critiqued its answer against a stated "
    "principle and revised it, in one conversation. An external scorer rated both responses and "
    "`tau = sigmoid((score_chosen - score_rejected) / T)` is the probability that `chosen` is "
    "preferred; the rDPO loss uses it as a per-example soft label. T is calibrated on the run's "
    "own score gaps unless the recipe fixes it."
)
TRAIN = (
    "A config with 0 rows is not published (no row reached it). Train: `synthalign train rdpo` "
    '(rDPO; the command is under "Use and reproduce" below), `synthalign train dpo` '
    "(hard-label DPO baseline on `dpo`), or `synthalign train sft` with `dataset_config: sft` "
    "(SFT on the chosen responses)."
)


def _recipe_line(recipe: Mapping[str, Any]) -> str:
    teacher = (recipe.get("teacher") or {}).get("llm", "?")
    scoring = recipe.get("scoring") or {}
    if scoring.get("kind") == "judge":
        scorer = f"LLM judge `{(scoring.get('judge') or {}).get('llm', '?')}`"
    elif scoring.get("kind") == "pairwise":
        llm = (scoring.get("pairwise") or {}).get("llm", "?")
        scorer = f"pairwise model `{llm}` (both orders, P(revised preferred))"
    else:
        model = (scoring.get("reward_model") or {}).get("model", "builtin:tiny-reward")
        scorer = f"reward model `{model}`"
    principle = (recipe.get("behaviour") or {}).get("principle", "?")
    chosen = recipe.get("chosen", "revised")
    return f"Teacher `{teacher}`, principle `{principle}`, scored by {scorer}; chosen = `{chosen}`."


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _calibration(everything: Dataset | None) -> tuple[list[float], str | None]:
    """The kept pairs' tau at T = 1 and a line naming the calibration and its T."""
    names = everything.column_names if everything is not None else []
    if everything is None or not {"tau_t1", "tau_temperature", "tau_calibration"} <= set(names):
        return [], None
    kept = [r for r in everything.select_columns(["kept", *CALIBRATION]) if r["kept"]]
    if not kept:
        return [], None
    mode, temperature = kept[0]["tau_calibration"], kept[0]["tau_temperature"]
    rule = {
        "auto": "`tau_temperature: auto`: T = standard deviation of score_revised - "
        "score_original over the kept pairs",
        "fixed": "a fixed `tau_temperature`",
        "judge levels": "`tau_temperature: auto` on a 0/1 or three-level judge: the level "
        "map (tie 0.6, one level up 0.9, one down 0.2), no T",
        "pairwise": "a pairwise scorer: tau is its P(revised preferred), T = 1",
    }.get(mode, str(mode))
    t_text = f"T = {temperature:.4g}" if temperature is not None else "no T"
    before = _floats([r["tau_t1"] for r in kept])
    return before, f"Calibration: {rule} ({t_text})."


def _tau_section(taus: list[float], before: list[float], line: str | None) -> str:
    ordered = sorted(taus)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    stats = [
        ["pairs", len(taus)],
        ["mean tau", sum(taus) / len(taus)],
        ["median tau", quantile(0.5)],
        ["5% / 95%", f"{quantile(0.05):.3f} / {quantile(0.95):.3f}"],
        ["std of tau (after calibration)", f"{_std(taus):.3f}"],
        *([["std of tau at T = 1 (before)", f"{_std(before):.3f}"]] if before else []),
        ["pairs with tau < 0.5 (scorer prefers the rejected)", sum(t < 0.5 for t in taus)],
        ["pairs with tau = 0.5 (tie)", sum(t == 0.5 for t in taus)],
    ]
    return (
        "## tau\n\n![tau histogram](figures/tau_hist.png)\n\n"
        + (f"{line}\n\n" if line else "")
        + markdown_table(stats, ["statistic", "value"])
    )


def _scored_rows(everything: Dataset | None) -> list[tuple[float, float, bool]]:
    """``(score_original, score_revised, kept)`` of every row both responses were scored on."""
    if everything is None or not {"score_original", "score_revised"} <= set(
        everything.column_names
    ):
        return []
    kept = everything["kept"] if "kept" in everything.column_names else [True] * len(everything)
    rows = zip(everything["score_original"], everything["score_revised"], kept, strict=True)
    return [(float(o), float(r), bool(k)) for o, r, k in rows if o is not None and r is not None]


def _scores_section(scored: list[tuple[float, float, bool]]) -> str:
    original, revised = [o for o, _, _ in scored], [r for _, r, _ in scored]
    better = sum(r > o for o, r in zip(original, revised, strict=True))
    return (
        "## Scores: original vs revised\n\n![score scatter](figures/scores_scatter.png)\n\n"
        f"The scorer rates the revision higher in {better} of {len(scored)} scored rows "
        f"(mean {sum(original) / len(original):.3g} -> {sum(revised) / len(revised):.3g}).\n"
    )


def _figures_and_sections(datasets: Mapping[str, Dataset]) -> tuple[dict[str, bytes], list[str]]:
    """The tau, score and principle sections, each only when its data exists."""
    rdpo = datasets.get("rdpo")
    figures: dict[str, bytes] = {}
    sections: list[str] = []
    taus = _floats(rdpo["tau"]) if rdpo is not None and "tau" in rdpo.column_names else []
    if taus:
        before, line = _calibration(datasets.get("all"))
        figures["tau_hist.png"] = tau_histogram(taus, before)
        sections.append(_tau_section(taus, before, line))
    scored = _scored_rows(datasets.get("all"))
    if scored:
        original, revised, kept = (list(t) for t in zip(*scored, strict=True))
        figures["scores_scatter.png"] = score_scatter(original, revised, kept)
        sections.append(_scores_section(scored))
    if rdpo is not None and len(rdpo) and "principle" in rdpo.column_names:
        sections.append("## Pairs per principle\n\n" + counts_table(rdpo, ["principle"]))
    return figures, sections


def build_card(datasets: Mapping[str, Dataset], info: Mapping[str, Any]) -> CardContent:
    """The rDPO section of the card of a ``synthalign generate rdpo`` folder.

    A config no row reached is not in ``datasets`` (it is not published); the configs
    table lists it with 0 rows. The shared frame adds the funnel (from the ``all``
    config's drop columns) and the usage snippet.
    """
    n_pairs = len(datasets.get("rdpo", ()))
    figures, sections = _figures_and_sections(datasets)
    config_rows = [[name, len(datasets.get(name, ())), use] for name, use in CONFIG_USE.items()]
    lib_versions = info.get("versions") or versions()
    body = "\n".join(
        [
            "# rDPO self-critique preference pairs",
            "",
            INTRO,
            "",
            _recipe_line(info.get("recipe") or {}),
            "",
            "## Configs",
            "",
            markdown_table(config_rows, ["config", "rows", "use"]),
            TRAIN,
            "",
            *sections,
            "## Versions",
            "",
            markdown_table(sorted(lib_versions.items()), ["library", "version"]),
        ]
    )
    metadata = base_metadata(
        "rdpo",
        n_pairs,
        tags=["dpo", "rdpo", "preference", "self-critique", "soft-labels"],
        task_categories=["text-generation"],
    )
    metadata["language"] = ["en"]
    return CardContent(metadata=metadata, body=body + "\n", figures=figures)


CALIBRATION: list[str] = ["tau_t1", "tau_temperature", "tau_calibration"]

CONFIG_USE: dict[str, str] = {
    "rdpo": "prompt/chosen/rejected + tau: `synthalign train rdpo` (default)",
    "dpo": "the same pairs without tau: `synthalign train dpo` baseline",
    "sft": "prompt + chosen as `messages`: `synthalign train sft` baseline (dataset_config: sft)",
    "dsc": "revisions the scorer prefers to the original, as `messages`: the distilled "
    "self-critique baseline, `synthalign train sft` (dataset_config: dsc)",
    "all": "every row, failures included, with kept / drop_stage / drop_reason / drop_detail",
}
