"""Card sections every method's card ends with: accounting and usage.

Kept apart from :mod:`synthalign.cards.frame` (which assembles the card) because each
is a small piece of text with its own facts: what the model calls used
(:mod:`synthalign.accounting`), and the commands that load, train on and rerun the
folder. The decontamination section is :mod:`synthalign.cards.decontamination`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synthalign.accounting import TABLE_HEADERS, summary_line, table_rows
from synthalign.cards.base import markdown_table

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "SFT_MODEL",
    "accounting_section",
    "train_command",
    "trl_command",
    "trl_format",
    "usage_section",
    "where_of",
]

SFT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
"""The model the card's TRL commands name; any chat model works."""

TRAIN_QUICKSTARTS = {
    "condor": ("sft", "condor-sft-quickstart.yaml", "refined"),
    "gra": ("sft", "gra-sft-quickstart.yaml", "all"),
    "synpo": ("simpo", "simpo-train-quickstart.yaml", "pairs"),
    "rdpo": ("rdpo", "rdpo-train-quickstart.yaml", "rdpo"),
}
"""Per method: ``synthalign train`` kind, the shipped offline recipe (a built-in model),
and the config that recipe trains on; a folder without that config gets no command."""


def train_command(method: str | None, where: str, datasets: Mapping[str, Dataset]) -> str | None:
    """``synthalign train`` on this folder with the method's shipped quickstart recipe."""
    if method not in TRAIN_QUICKSTARTS:
        return None
    kind, recipe, config = TRAIN_QUICKSTARTS[method]
    if not len(datasets.get(config, ())):
        return None
    return f"synthalign train {kind} --config pipelines/recipes/{recipe} --dataset {where}"


def accounting_section(info: Mapping[str, Any]) -> str:
    """What the model calls of the run that wrote this folder used."""
    by_state = info.get("usage") or {}
    rows = table_rows(by_state) if isinstance(by_state, Mapping) else []
    text = "## Accounting\n\n"
    if not rows:
        return text + (
            "No model calls were recorded for this folder: its batches came from the batch "
            "store of an earlier run, or the run went through Ray.\n"
        )
    every = [e for entries in by_state.values() for e in entries]
    return (
        text + "Model calls of the run that wrote this folder, with the backends' own token counts "
        "(batches resumed from the batch store cost nothing and are not counted). Cost needs "
        "`price_per_million: {input: X, output: Y}` (USD) on the recipe's LLM roles.\n\n"
        + markdown_table(rows, TABLE_HEADERS)
        + f"\n{summary_line(every)}\n"
    )


def trl_format(data: Dataset) -> str | None:
    """The TRL trainer that reads ``data`` as it is; none for an empty config or one that
    also holds dropped rows (``kept`` false), which a trainer would learn from too."""
    columns = set(data.column_names)
    if not len(data) or ("kept" in columns and not all(data["kept"])):
        return None
    if "messages" in columns:
        return "sft"
    pair = ("prompt", "chosen", "rejected")
    # TRL takes a pair all conversational or all plain text: rDPO's ``all`` config (plain
    # prompt, chat-format answers, kept for inspection) is neither
    if set(pair) <= columns and len({type(data.features[c]) for c in pair}) == 1:
        return "dpo"
    return None


def trl_command(kind: str, where: str, config: str, model: str = SFT_MODEL) -> str:
    """``trl sft`` / ``trl dpo`` on one config of the folder or repo, as TRL's CLI takes it."""
    return (
        f"trl {kind} --model_name_or_path {model} --dataset_name {where} "
        f"--dataset_config {config} --output_dir {config}-{kind}-model"
    )


def usage_section(
    where: str,
    default: str | None,
    datasets: Mapping[str, Dataset],
    *,
    on_hub: bool,
    method: str | None = None,
) -> str:
    """How to load the folder (or repo), train on it with TRL and rerun it."""
    name = default or next(iter(datasets), "default")
    lines = [
        "## Use and reproduce",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'data = load_dataset("{where}", "{name}", split="train")',
        "```",
        "",
    ]
    trl = [
        trl_command(kind, where, config)
        for config, data in datasets.items()
        if (kind := trl_format(data)) is not None
    ]
    if trl:
        lines += [
            "Train on it with TRL's CLI, no glue code (TRL reads the columns as they are):",
            "",
            "```bash",
            *trl,
            "```",
            "",
        ]
    ours = train_command(method, where, datasets)
    if ours:
        lines += [
            "Or with synthalign's trainer, from a synthalign checkout (the recipe trains a "
            "built-in model offline; change its `model` and hyper-parameters for real use):",
            "",
            "```bash",
            ours,
            "```",
            "",
        ]
    config = (
        f"https://huggingface.co/datasets/{where}/raw/main/pipeline.yaml"
        if on_hub
        else f"{where}/pipeline.yaml"
    )
    rerun = [f"distilabel pipeline run --config {config}"]
    if not on_hub:
        rerun.append(f"synthalign card {where}")
    lines += [
        "Rerun the pipeline that made it"
        + ("" if on_hub else ", or rebuild this card from the folder")
        + ":",
        "",
        "```bash",
        *rerun,
        "```",
        "",
    ]
    return "\n".join(lines)


def where_of(info: Mapping[str, Any], folder_name: str) -> tuple[str, bool]:
    """Where a reader finds this dataset, and whether that is a Hub repo: the repo it
    was pushed to, else the folder as the run named it (relative to where it ran, never
    a machine's absolute path)."""
    repo = info.get("repo_id")
    if isinstance(repo, str) and repo:
        return repo, True
    shown = info.get("folder")
    return (shown if isinstance(shown, str) and shown else folder_name), False
