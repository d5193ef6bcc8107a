"""The dataset card of a Condor folder.

Condor's claim is that breadth (knowledge tree x task types x difficulties) plus
self-reflection refinement makes better SFT data, so the card shows exactly those:
how the kept rows spread over root domains, task types and difficulties; what each
stage lost and why (schema failures, cut-off answers, skipped rows); how refinement
changed the answers' length; and which models, decoding settings and prompt versions
made the data. Everything is computed from the published configs and the run record,
so ``synthalign card DIR`` rebuilds the same card from the folder alone.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
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
from synthalign.cards.sections import where_of

if TYPE_CHECKING:
    from datasets import Dataset
    from matplotlib.figure import Figure

DIFFICULTIES = ["Easy", "Medium", "Hard"]
STAGES = [
    ("question", "question generation", "generate_questions (3 per call)"),
    ("response", "answer", "answer_question"),
    ("critique", "self-critique", "critique_response"),
    ("refine", "refinement", "refine_response"),
]
ROLE_OF_STAGE = {
    "question": "question",
    "response": "answer",
    "critique": "critique",
    "refine": "refine",
}
EXAMPLE_CHARS = 700


# ------------------------------------------------------------------ statistics


def stage_counts(generations: Dataset) -> list[dict[str, Any]]:
    """Per stage: rows that reached it, failed in it (by reason), and left after it."""
    columns = [f"{stage}_error" for stage, _, _ in STAGES]
    table = {
        c: generations[c] if c in generations.column_names else [None] * len(generations)
        for c in columns
    }
    rows = []
    alive = len(generations)
    for stage, label, step in STAGES:
        errors = table[f"{stage}_error"]
        own = [e for e in errors if e and not str(e).startswith("skipped")]
        reasons = Counter(_reason_kind(e) for e in own)
        alive -= len(own)
        rows.append(
            {
                "stage": label,
                "step": step,
                "rows in": alive + len(own),
                "failed": len(own),
                "why": "; ".join(f"{k}: {v}" for k, v in reasons.most_common(4)) or "-",
                "rows out": alive,
            }
        )
    return rows


def _reason_kind(error: str) -> str:
    """Group error messages by kind ("truncated JSON: ... at char 812" -> "truncated JSON",
    "too short (2 words)" -> "too short")."""
    head = re.sub(r"\s*\(.*?\)", "", str(error).split(":")[0]).strip()
    return head or str(error)[:40]


def length_stats(original: list[str], refined: list[str]) -> list[list[Any]]:
    """Characters and words of original vs refined answers on the kept rows."""

    def describe(texts: list[str], unit: str) -> list[Any]:
        sizes = [len(t) if unit == "chars" else len(t.split()) for t in texts]
        if not sizes:
            return [0, 0, 0]
        return [round(statistics.mean(sizes), 1), statistics.median(sizes), max(sizes)]

    out = []
    for unit in ("chars", "words"):
        out.append([f"original answer ({unit})", *describe(original, unit)])
        out.append([f"refined answer ({unit})", *describe(refined, unit)])
    return out


def task_difficulty_matrix(data: Dataset, task_types: list[str]) -> list[list[int]]:
    counts = (
        Counter(zip(data["task_type"], data["difficulty"], strict=True)) if len(data) else Counter()
    )
    return [[counts[(t, d)] for d in DIFFICULTIES] for t in task_types]


# ------------------------------------------------------------------ figures


def heatmap_png(matrix: list[list[int]], rows: list[str], columns: list[str], title: str) -> bytes:
    """Counts as a labelled heatmap (cells annotated), e.g. task type x difficulty."""
    import numpy as np

    values = np.asarray(matrix, dtype=float) if matrix else np.zeros((1, len(columns)))
    height = max(2.6, 0.32 * len(rows) + 1.4)
    fig = new_figure(6.4 if len(columns) <= 4 else 9.0, height)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", aspect="auto", vmin=0)
    ax.set_xticks(
        range(len(columns)),
        columns,
        rotation=30 if len(columns) > 4 else 0,
        ha="right" if len(columns) > 4 else "center",
        fontsize=8,
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) < 30 else 6)
    if values.size <= 120:
        peak = values.max() if values.size else 0
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j,
                i,
                f"{int(v)}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if peak and v > peak * 0.6 else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8, label="kept rows")
    ax.set_title(title)
    return figure_png(fig)


def length_shift_png(original: list[str], refined: list[str]) -> bytes:
    """Answer length before and after refinement: overlaid histograms plus a per-row scatter."""
    return figure_png(length_shift_figure(original, refined))


def length_shift_figure(original: list[str], refined: list[str]) -> Figure:
    fig = new_figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    a = [len(t.split()) for t in original]
    b = [len(t.split()) for t in refined]
    top = max([*a, *b, 1])
    bins = [top * i / 20 for i in range(21)]
    left.hist(a, bins=bins, alpha=0.6, color="#a5a5a5", label="original (D_V)")
    left.hist(b, bins=bins, alpha=0.6, color="#4472c4", label="refined (D_R)")
    left.set_xlabel("words per answer")
    left.set_ylabel("rows")
    left.legend(fontsize=8)
    left.set_title("answer length")
    right.scatter(a, b, s=10, alpha=0.6, color="#4472c4")
    right.plot([0, top], [0, top], color="#999999", linestyle="--", linewidth=1)
    right.set_xlabel("original words")
    right.set_ylabel("refined words")
    right.set_title("per row\n(above the line: longer after refinement)", fontsize=10)
    count_axis(left.yaxis)
    return fig


def funnel_png(stages: list[dict[str, Any]], total: int) -> bytes:
    """Rows alive after each stage, with the rows each stage lost."""
    fig = new_figure(6.4, 3.2)
    ax = fig.add_subplot()
    labels = ["sampled", *[s["stage"] for s in stages]]
    alive = [total, *[s["rows out"] for s in stages]]
    lost = [0, *[s["failed"] for s in stages]]
    ax.bar(labels, alive, color="#4472c4", label="rows kept")
    ax.bar(labels, lost, bottom=alive, color="#c0504d", label="failed at this stage")
    ax.set_ylabel("question rows")
    count_axis(ax.yaxis)
    ax.set_title("rows through the pipeline")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return figure_png(fig)


# ------------------------------------------------------------------ card


def _fence(text: str) -> str:
    """A fenced block that the text cannot close early."""
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, run + 1)
    return f"{fence}text\n{text}\n{fence}"


def _clip(text: str | None, limit: int = EXAMPLE_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " [...]"


def _unique(data: Dataset, column: str) -> list[str]:
    if column not in data.column_names:
        return []
    return sorted({v for v in data[column] if v})


def _models_table(generations: Dataset, recipe: dict[str, Any]) -> str:
    rows = []
    settings = _settings(generations, recipe)
    for stage, label, step in STAGES:
        role = ROLE_OF_STAGE[stage]
        models = _unique(generations, f"{stage}_model") or [
            ((recipe.get(role) or {}).get("llm") or recipe.get("llm") or "?")
        ]
        prompts = _unique(generations, f"{stage}_prompt")
        s = settings.get(role, {})
        rows.append(
            [
                label,
                step,
                ", ".join(f"`{m}`" for m in models),
                ", ".join(f"`{p}`" for p in prompts) or "-",
                s.get("temperature", ""),
                s.get("top_p", ""),
                s.get("max_new_tokens", ""),
            ]
        )
    return markdown_table(
        rows,
        [
            "stage",
            "step",
            "model",
            "prompt template @ sha256[:12]",
            "temperature",
            "top_p",
            "max_new_tokens",
        ],
    )


def _settings(generations: Dataset, recipe: dict[str, Any]) -> dict[str, Any]:
    if "generation_settings" in generations.column_names and len(generations):
        return generations[0]["generation_settings"] or {}
    return {
        role: {
            k: (recipe.get(role) or {}).get(k, "")
            for k in ("temperature", "top_p", "max_new_tokens")
        }
        for role in ROLE_OF_STAGE.values()
    }


def _tree_base(recipe: dict[str, Any]) -> str:
    tree = recipe.get("knowledge_tree") or "default"
    return str(tree.get("base", "default")) if isinstance(tree, dict) else str(tree)


def tree_lines(generations: Dataset, recipe: dict[str, Any]) -> str:
    """The tree's growth (base -> grown leaf tags, tags added / rejected, failed calls)
    and the draw (proportional or per root, the fraction of leaves), as card bullets."""
    stats = {}
    if "knowledge_tree_stats" in generations.column_names and len(generations):
        stats = generations[0]["knowledge_tree_stats"] or {}
    tree = recipe.get("knowledge_tree") if isinstance(recipe.get("knowledge_tree"), dict) else {}
    lines = []
    if tree.get("expand_to"):
        model = (tree.get("llm") or {}).get("llm") or recipe.get("llm") or "?"
        lines.append(
            f"- Tree grown by `{model}` (stage `grow_tree`, `expand_to: {tree['expand_to']}`): "
            f"{stats.get('base_leaf_tags', '?')} -> {stats.get('leaf_tags', '?')} leaf tags, "
            f"{stats.get('added_tags', '?')} tags added, {stats.get('rejected_tags', '?')} proposals "
            f"rejected as duplicates or invalid, {stats.get('failed_calls', '?')} calls with unparsable output.\n"
        )
    sampling = recipe.get("tag_sampling", "proportional")
    how = (
        "every leaf tag equally likely (a root domain's share is its share of the leaves)"
        if sampling == "proportional"
        else "every root domain an equal share"
    )
    fraction = float(recipe.get("tag_fraction", 1.0))
    sampled = stats.get("sampled_leaf_tags")
    lines.append(
        f"- Tag sampling `{sampling}`: {how}; `tag_fraction: {fraction:g}`"
        + (f" ({sampled} of {stats.get('leaf_tags')} leaf tags)" if sampled is not None else "")
        + ".\n"
    )
    return "".join(lines)


def _examples(refined: Dataset, n: int = 3) -> str:
    """A few kept rows, one per difficulty where possible, in full provenance."""
    if not len(refined):
        return "_No rows were kept, so there are no examples._\n"
    chosen: list[int] = []
    for difficulty in DIFFICULTIES:
        for i, d in enumerate(refined["difficulty"]):
            if d == difficulty and i not in chosen:
                chosen.append(i)
                break
    chosen = chosen[:n] or [0]
    parts = []
    for i in chosen:
        row = refined[i]
        parts.append(
            f"<details><summary>{row['difficulty']} · {row['task_type']} · {' > '.join(row['tag_path'])}</summary>\n\n"
            f"**Question**\n\n{_fence(_clip(row['question']))}\n\n"
            f"**Original answer (void)**\n\n{_fence(_clip(row['response']))}\n\n"
            f"**Critique**: strengths\n\n{_fence(_clip(row['critique_strengths'], 400))}\n\n"
            f"weaknesses\n\n{_fence(_clip(row['critique_weaknesses'], 400))}\n\n"
            f"suggestions\n\n{_fence(_clip(row['critique_suggestions'], 400))}\n\n"
            f"**Refined answer (refined)**\n\n{_fence(_clip(row['refined_response']))}\n\n</details>\n"
        )
    return "\n".join(parts)


def build_card(datasets: dict[str, Dataset], info: dict[str, Any]) -> CardContent:
    """Card for the ``refined`` / ``void`` / ``generations`` configs of a Condor run."""
    generations = datasets["generations"]
    # a config with no rows is not published; count it as empty
    refined = datasets.get("refined", generations.select([]))
    void = datasets.get("void", generations.select([]))
    recipe = info.get("recipe") or {}
    total = len(generations)
    calls = (
        len(set(generations["sample_index"]))
        if "sample_index" in generations.column_names and total
        else 0
    )
    stages = stage_counts(generations)
    task_types = list(
        recipe.get("task_types") or (sorted(set(generations["task_type"])) if total else [])
    )
    original, improved = (
        (refined["response"], refined["refined_response"]) if len(refined) else ([], [])
    )

    figures = {
        "task_difficulty_heatmap.png": heatmap_png(
            task_difficulty_matrix(refined, task_types),
            task_types,
            DIFFICULTIES,
            "kept rows: task type x difficulty",
        ),
        "length_shift.png": length_shift_png(original, improved),
        "stage_funnel.png": funnel_png(stages, total),
    }
    roots = sorted(set(refined["root_domain"])) if len(refined) else []
    if roots:
        counts = Counter(zip(refined["root_domain"], refined["task_type"], strict=True))
        figures["domain_task_heatmap.png"] = heatmap_png(
            [[counts[(r, t)] for t in task_types] for r in roots],
            roots,
            task_types,
            "kept rows: root domain x task type",
        )

    longer = sum(len(b.split()) > len(a.split()) for a, b in zip(original, improved, strict=True))
    kept_share = f"{100.0 * len(refined) / total:.1f}%" if total else "n/a"
    tree = _unique(generations, "knowledge_tree")
    recipe_name = recipe.get("name", "condor")
    where, _ = where_of(info, str(info.get("folder_name") or "condor"))

    body = [
        f"# {recipe_name}: Condor synthetic SFT data\n",
        "Supervised fine-tuning data made with the **Condor** method "
        "([arXiv 2501.12273](https://arxiv.org/abs/2501.12273)) with synthalign on "
        "[distilabel](https://github.com/argilla-io/distilabel): "
        "questions inspired by a World Knowledge Tree (root domain > sub-domain > tag) across task types "
        "and difficulties, answered by the model, critiqued by the same model (strengths, weaknesses, "
        "suggestions) and rewritten from that critique.\n",
        "## Configs\n",
        markdown_table(
            [
                [
                    "refined",
                    len(refined),
                    "D_R: question + refined answer (`messages`), the default; train on this",
                ],
                [
                    "void",
                    len(void),
                    "D_V: the same questions + the original answers (`messages`), the paper's ablation",
                ],
                [
                    "generations",
                    total,
                    "every generated row, with per-stage `*_error` / `*_raw` and `drop_reason`",
                ],
            ],
            ["config", "rows", "what it holds"],
        ),
        "\nTrain with TRL's SFTTrainer on `refined`: "
        "`synthalign train sft --config pipelines/recipes/condor-sft-quickstart.yaml "
        f"--dataset {where}` "
        "(offline, a built-in model); `condor-sft.yaml` has the paper's settings "
        "(Qwen2.5-7B, lr 2e-5, 3 epochs).\n",
        "Every row of `refined` / `void` carries its provenance: `tag_path`, `root_domain`, `sub_domain`, `tag`, "
        "`task_type`, `difficulty`, `sample_index` (the question call), the critique columns, the model and prompt "
        "template (name@hash) of each stage, the knowledge tree id and `generation_settings`.\n",
        "## How it was made\n",
        f"- Knowledge tree: `{', '.join(tree) or _tree_base(recipe)}`; "
        f"{len(roots)} root domains and {len(task_types)} task types among the kept rows.\n"
        f"{tree_lines(generations, recipe)}"
        f"- {calls} question calls (one per sampled tag x task type, stratified over task types, "
        f"seed {info.get('seed', recipe.get('seed', 0))}) -> {total} question rows -> **{len(refined)} kept** ({kept_share}).\n"
        f"- Rows with a parse error or empty text{' (or an answer cut off at max_new_tokens)' if recipe.get('drop_truncated', True) else ''} "
        "at any stage are dropped from both `void` and `refined`, so the two configs hold the same questions.\n",
        "### Models, prompts and sampling per stage\n",
        _models_table(generations, recipe),
        "\n### What each stage lost\n",
        markdown_table(stages, ["stage", "step", "rows in", "failed", "why", "rows out"]),
        "\nA row whose earlier stage failed is not sent to later stages (its later `*_error` says `skipped`). "
        "Failed rows keep their raw model output in `*_raw` in the `generations` config.\n",
        "![rows through the pipeline](figures/stage_funnel.png)\n",
        "## Coverage\n",
        "![task type x difficulty](figures/task_difficulty_heatmap.png)\n",
        markdown_table(
            [
                [t, *row, sum(row)]
                for t, row in zip(
                    task_types, task_difficulty_matrix(refined, task_types), strict=True
                )
            ],
            ["task type", *DIFFICULTIES, "total"],
        ),
    ]
    if roots:
        body.append("\n![root domain x task type](figures/domain_task_heatmap.png)\n")
        body.append(
            "\n<details><summary>Kept rows by root domain x task type x difficulty</summary>\n\n"
            + counts_table(refined, ["root_domain", "task_type", "difficulty"])
            + "\n</details>\n"
        )
    body += [
        "\n## Refinement: answer length, original vs refined\n",
        "![answer length before and after refinement](figures/length_shift.png)\n",
        markdown_table(length_stats(original, improved), ["answer", "mean", "median", "max"]),
        f"\n{longer} of {len(refined)} refined answers are longer than the original.\n",
        "\n## Examples\n",
        _examples(refined),
        "\n## Limitations\n",
        "All text is model-generated and unreviewed: answers and refinements can contain factual errors "
        "(the paper notes hallucination as a risk that refinement does not remove). Self-critique is only as "
        "reliable as the model that writes it.\n",
        "\n## Versions\n",
        markdown_table(
            sorted((info.get("versions") or versions()).items()), ["package", "version"]
        ),
    ]
    metadata = base_metadata(
        "condor",
        len(refined),
        tags=["distilabel", "condor", "sft"],
        task_categories=["text-generation"],
        license=str(recipe.get("license") or "apache-2.0"),
    )
    metadata["language"] = ["en"]
    metadata["pretty_name"] = f"{recipe_name} (Condor)"
    return CardContent(metadata=metadata, body="\n".join(body), figures=figures)
