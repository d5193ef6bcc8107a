"""The dataset card of an rDPO folder: what tau looks like, and what was dropped and why.

A soft-label dataset is only as good as its labels, so the card shows the tau
distribution (how many pairs the scorer is sure about, how many flip), the original
vs revised scores (did self-critique help, by the scorer's judgement), counts per
principle and the drop reasons, next to the usual sizes and versions.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import (
    CardContent,
    base_metadata,
    counts_table,
    figure_png,
    markdown_table,
    new_figure,
    versions,
)

if TYPE_CHECKING:
    from datasets import Dataset


def _floats(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def tau_histogram(taus: list[float]) -> bytes:
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.hist(taus, bins=20, range=(0.0, 1.0), color="#4472c4", edgecolor="white")
    ax.axvline(0.5, color="#999999", linestyle="--", linewidth=1)
    ax.set_xlabel("tau = P(chosen preferred)")
    ax.set_ylabel("pairs")
    ax.set_title(f"tau over {len(taus)} pairs")
    return figure_png(fig)


def score_scatter(original: list[float], revised: list[float], kept: list[bool]) -> bytes:
    """Original vs revised score per row; integer (judge) scores get a small fixed jitter
    so that overlapping points stay countable."""
    import numpy as np

    fig = new_figure(4.8, 4.6)
    ax = fig.add_subplot()
    x, y = np.asarray(original, dtype=float), np.asarray(revised, dtype=float)
    if len(x) and np.all(x == np.round(x)) and np.all(y == np.round(y)):
        rng = np.random.default_rng(0)
        x = x + rng.uniform(-0.15, 0.15, len(x))
        y = y + rng.uniform(-0.15, 0.15, len(y))
    mask = np.asarray(kept, dtype=bool)
    ax.scatter(x[mask], y[mask], s=12, alpha=0.6, color="#4472c4", label="kept")
    if (~mask).any():
        ax.scatter(x[~mask], y[~mask], s=12, alpha=0.6, color="#c0504d", marker="x", label="dropped")
    if len(x):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", linestyle="--", linewidth=1)
    ax.set_xlabel("score of the original response")
    ax.set_ylabel("score of the revised response")
    ax.set_title("scores: above the line = revision preferred")
    ax.legend(loc="lower right", fontsize=8)
    return figure_png(fig)


def _recipe_line(recipe: dict[str, Any]) -> str:
    teacher = (recipe.get("teacher") or {}).get("llm", "?")
    scoring = recipe.get("scoring") or {}
    kind = scoring.get("kind", "?")
    if kind == "judge":
        scorer = f"LLM judge `{(scoring.get('judge') or {}).get('llm', '?')}`"
    else:
        scorer = f"reward model `{(scoring.get('reward_model') or {}).get('model', 'builtin:tiny-reward')}`"
    principle = (recipe.get("behaviour") or {}).get("principle", "?")
    return f"Teacher `{teacher}`, principle `{principle}`, scored by {scorer}; chosen = `{recipe.get('chosen', 'revised')}`."


def build_card(datasets: dict[str, Dataset], info: dict[str, Any]) -> CardContent:
    """Card for the ``rdpo``/``dpo``/``all`` configs written by ``synthalign generate rdpo``."""
    rdpo = datasets.get("rdpo")
    everything = datasets.get("all")
    n_pairs = len(rdpo) if rdpo is not None else 0
    n_all = len(everything) if everything is not None else n_pairs
    recipe = info.get("recipe") or {}

    figures: dict[str, bytes] = {}
    sections: list[str] = []
    taus = _floats(rdpo["tau"]) if rdpo is not None and "tau" in rdpo.column_names else []
    if taus:
        figures["tau_hist.png"] = tau_histogram(taus)
        ordered = sorted(taus)
        quantile = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
        stats = [
            ["pairs", len(taus)],
            ["mean tau", sum(taus) / len(taus)],
            ["median tau", quantile(0.5)],
            ["5% / 95%", f"{quantile(0.05):.3f} / {quantile(0.95):.3f}"],
            ["pairs with tau < 0.5 (scorer prefers the rejected)", sum(t < 0.5 for t in taus)],
            ["pairs with tau = 0.5 (tie)", sum(t == 0.5 for t in taus)],
        ]
        sections.append(
            "## tau\n\n![tau histogram](figures/tau_hist.png)\n\n" + markdown_table(stats, ["statistic", "value"])
        )

    if everything is not None and {"score_original", "score_revised"} <= set(everything.column_names):
        pairs = [
            (float(o), float(r), bool(k))
            for o, r, k in zip(
                everything["score_original"],
                everything["score_revised"],
                everything["kept"] if "kept" in everything.column_names else [True] * n_all,
                strict=True,
            )
            if o is not None and r is not None
        ]
        if pairs:
            original, revised, kept = (list(t) for t in zip(*pairs, strict=True))
            figures["scores_scatter.png"] = score_scatter(original, revised, kept)
            better = sum(r > o for o, r in zip(original, revised, strict=True))
            sections.append(
                "## Scores: original vs revised\n\n![score scatter](figures/scores_scatter.png)\n\n"
                f"The scorer rates the revision higher in {better} of {len(pairs)} scored rows "
                f"(mean {sum(original) / len(original):.3g} -> {sum(revised) / len(revised):.3g}).\n"
            )

    if rdpo is not None and n_pairs and "principle" in rdpo.column_names:
        sections.append("## Pairs per principle\n\n" + counts_table(rdpo, ["principle"]))

    if everything is not None and "drop_reason" in everything.column_names:
        reasons = Counter(r for r in everything["drop_reason"] if r is not None)
        if reasons:
            rows = [[reason, count, f"{100.0 * count / max(n_all, 1):.1f}%"] for reason, count in reasons.most_common()]
            sections.append(
                "## Dropped rows\n\nRows that could not become a pair, by first failure (details in the `all` "
                "config's `drop_detail`):\n\n" + markdown_table(rows, ["reason", "rows", "share of all rows"])
            )
        else:
            sections.append("## Dropped rows\n\nNone: every generated row became a pair.\n")

    config_rows = [[name, len(ds), _config_use(name)] for name, ds in datasets.items()]
    lib_versions = info.get("versions") or versions()
    body = "\n".join(
        [
            "# rDPO self-critique preference pairs",
            "",
            "Preference pairs for refined DPO ([arXiv 2402.08005](https://arxiv.org/abs/2402.08005)), made with "
            "synthalign. A teacher answered each prompt, critiqued its answer against a "
            "stated principle and revised it, in one conversation. An external scorer rated both responses and "
            "`tau = sigmoid((score_chosen - score_rejected) / T)` is the probability that `chosen` is preferred; "
            "the rDPO loss uses it as a per-example soft label.",
            "",
            _recipe_line(recipe),
            "",
            "## Configs",
            "",
            markdown_table(config_rows, ["config", "rows", "use"]),
            "```python\nfrom datasets import load_dataset\n\npairs = load_dataset(REPO_OR_DIR, \"rdpo\", split=\"train\")\n```",
            "",
            "Train: `synthalign train rdpo --config R.yaml --dataset REPO_OR_DIR` (rDPO), `synthalign train dpo` "
            "(hard-label DPO baseline on `dpo`), or `synthalign train sft` with `dataset_config: sft` (SFT on the chosen responses).",
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


def _config_use(name: str) -> str:
    return {
        "rdpo": "prompt/chosen/rejected + tau: `synthalign train rdpo` (default)",
        "dpo": "the same pairs without tau: `synthalign train dpo` baseline",
        "sft": "prompt + chosen as `messages`: `synthalign train sft` baseline (dataset_config: sft)",
        "all": "every row, failures included, with drop_reason",
    }.get(name, "")
