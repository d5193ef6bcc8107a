"""Building blocks shared by every method's dataset card.

A method's card module (``cards/<method>.py``) computes its statistics and plots and
returns a :class:`CardContent`; :mod:`synthalign.hub` turns that into ``README.md`` and
``figures/*.png`` inside a Hub-layout folder. Keeping the shared pieces here means
every card reports sizes, versions and counts the same way, and the YAML front matter
that the Hub and ``datasets`` read is produced in exactly one place.
"""

from __future__ import annotations

import io
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

__all__ = [
    "CardContent",
    "base_metadata",
    "count_axis",
    "counts_table",
    "figure_png",
    "markdown_table",
    "new_figure",
    "render_readme",
    "reproducibility_metadata",
    "size_category",
    "versions",
]

# Distributions whose versions a card records, in the order they are shown. Versions
# come from installed metadata rather than imports so that asking for them never loads
# torch or vLLM just to print a string.
_VERSIONED_DISTRIBUTIONS = (
    "synthalign",
    "distilabel",
    "trl",
    "transformers",
    "datasets",
    "huggingface-hub",
    "torch",
    "vllm",
)

# The Hub's own ``size_categories`` labels: (upper bound, label), checked in order.
_SIZE_LABELS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


@dataclass
class CardContent:
    """What a method contributes to a dataset card.

    ``metadata`` becomes the YAML front matter (license, tags, task categories, ...);
    the Hub-specific ``configs`` and ``dataset_info`` keys are added by the writer, which
    knows the data files. ``body`` is Markdown. ``figures`` maps a file name such as
    ``"score_hist.png"`` to PNG bytes; the body refers to them as ``figures/<name>``.
    """

    metadata: dict[str, Any]
    body: str
    figures: dict[str, bytes] = field(default_factory=dict)


def size_category(n: int) -> str:
    """Return the Hub's ``size_categories`` label for a dataset of ``n`` rows."""
    if n < 0:
        raise ValueError(f"a row count cannot be negative, got {n}")
    for bound, label in _SIZE_LABELS:
        if n < bound:
            return label
    return "n>1T"


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the data, for reproducibility notes.

    Distributions that are not installed (vLLM on a CPU machine) are left out rather
    than reported as a placeholder, so the table only lists what actually ran.
    """
    found: dict[str, str] = {}
    for name in _VERSIONED_DISTRIBUTIONS:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


REPRODUCIBILITY_KEY = "reproducibility"


def reproducibility_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
    """What every synthalign card records in its front matter: seed, method, versions.

    ``info`` is the run record (``synthalign.json``); ``versions`` are those recorded
    when the data was generated (:func:`versions` then), not the ones installed when the
    card is rewritten. Rerunning ``pipeline.yaml`` or the recorded recipe with the same
    seed and these versions gives the same rows.
    """
    recipe = info.get("recipe") if isinstance(info.get("recipe"), Mapping) else {}
    recorded = info.get("versions") if isinstance(info.get("versions"), Mapping) else None
    meta: dict[str, Any] = {"seed": info.get("seed", recipe.get("seed"))}
    if info.get("method"):
        meta["method"] = str(info["method"])
    if recipe.get("name"):
        meta["recipe"] = str(recipe["name"])
    meta["versions"] = {str(k): str(v) for k, v in (recorded or versions()).items()}
    return meta


def _format_cell(value: Any) -> str:
    """Render one table cell so that it cannot break the Markdown table around it."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]], headers: Sequence[str]
) -> str:
    """A GitHub-flavoured Markdown table.

    Rows may be sequences (in header order) or mappings keyed by header. Cells are
    escaped (pipes, newlines) because generated text lands in them, and floats are
    shortened to four significant digits so tables stay readable.
    """
    if not headers:
        raise ValueError("a table needs at least one header")
    lines = [
        "| " + " | ".join(_format_cell(h) for h in headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    for row in rows:
        cells = [row.get(h) for h in headers] if isinstance(row, Mapping) else list(row)
        if len(cells) != len(headers):
            raise ValueError(f"row {cells!r} has {len(cells)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(_format_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A Matplotlib figure bound to the Agg canvas.

    Going through :class:`~matplotlib.figure.Figure` instead of ``pyplot`` keeps card
    code free of global GUI state: no backend selection, no figure manager to leak,
    safe on a headless machine and inside worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def count_axis(axis: Axis) -> None:
    """Whole-number ticks on an axis that counts rows: 0, 1, 2, never 0.5 rows."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def figure_png(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes with the Agg backend.

    The ``Software`` text chunk (which embeds the Matplotlib version) is dropped so that
    the same data gives byte-identical figures across runs. A ``pyplot`` figure is
    closed afterwards so repeated card builds do not accumulate open figures.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and pyplot.fignum_exists(getattr(fig, "number", -1)):
        pyplot.close(fig)
    return buffer.getvalue()


def _hashable(value: Any) -> Any:
    """Turn list/dict cell values into something a Counter can key on."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def counts_table(dataset: Dataset, by: Sequence[str]) -> str:
    """Row counts (and shares) grouped by one or more columns, largest group first.

    Reads only the grouping columns, so it stays cheap on wide datasets with long
    generated text. Ties are ordered by the group's text so the table is stable.
    """
    if not by:
        raise ValueError("counts_table needs at least one column to group by")
    missing = [c for c in by if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the dataset (columns: {dataset.column_names})"
        )
    table = dataset.select_columns(list(by)).with_format("arrow")[:]
    columns = [table.column(c).to_pylist() for c in by]
    counter: Counter[tuple[Any, ...]] = Counter(
        tuple(_hashable(v) for v in values) for values in zip(*columns, strict=True)
    )
    total = sum(counter.values())
    ordered = sorted(counter.items(), key=lambda item: (-item[1], repr(item[0])))
    rows = [[*key, count, f"{100.0 * count / total:.1f}%"] for key, count in ordered]
    return markdown_table(rows, [*by, "rows", "share"])


def base_metadata(
    method: str,
    n_rows: int,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] = (),
    license: str = "apache-2.0",
) -> dict[str, Any]:
    """Front-matter fields every synthalign card carries.

    Tags always include ``synthetic``, ``synthalign`` and the method so datasets made
    with this tool can be found on the Hub; duplicates are dropped, order kept.
    """
    all_tags = list(dict.fromkeys(["synthetic", "synthalign", method, *tags]))
    meta: dict[str, Any] = {
        "license": license,
        "size_categories": [size_category(n_rows)],
        "tags": all_tags,
    }
    if task_categories:
        meta["task_categories"] = list(task_categories)
    return meta


def render_readme(
    card: CardContent,
    configs: Mapping[str, Mapping[str, str]],
    default_config: str | None,
    dataset_info: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The full ``README.md``: YAML front matter, then the card body.

    ``configs`` maps each config name to ``{split: data_files pattern}``; it becomes the
    ``configs:`` block that both the Hub viewer and ``datasets.load_dataset`` read to
    find the parquet files. ``default_config`` is marked ``default: true`` so that
    loading without a config name works. ``dataset_info`` (features and split sizes per
    config) is optional; when given, the Hub shows the schema before any conversion.
    Keys the writer owns override the same keys in ``card.metadata``.

    The front matter is written the way ``datasets.push_to_hub`` writes it: through
    ``huggingface_hub``'s :class:`~huggingface_hub.DatasetCardData` and ``datasets``'
    public ``MetadataConfigs``, so the Hub reads exactly what it expects.
    """
    from datasets.utils.metadata import MetadataConfigs  # heavy: datasets
    from huggingface_hub import DatasetCardData  # heavy: huggingface_hub

    if not configs:
        raise ValueError("a dataset card needs at least one config")
    if default_config is not None and default_config not in configs:
        raise ValueError(f"default config {default_config!r} is not one of {sorted(configs)}")
    front = {k: v for k, v in card.metadata.items() if k not in ("configs", "dataset_info")}
    data = DatasetCardData(**front)
    MetadataConfigs(
        {
            name: {
                "data_files": [
                    {"split": split, "path": pattern} for split, pattern in splits.items()
                ],
                **({"default": True} if name == default_config else {}),
            }
            for name, splits in configs.items()
        }
    ).to_dataset_card_data(data)
    order = list(configs)  # datasets sorts them; the card lists them in the method's order
    data["configs"] = sorted(data["configs"], key=lambda c: order.index(c["config_name"]))
    if dataset_info:
        infos = [dict(info) for info in dataset_info]
        data["dataset_info"] = infos[0] if len(infos) == 1 else infos
    yaml_text = data.to_yaml(line_break="\n")
    body = card.body if card.body.endswith("\n") else card.body + "\n"
    return f"---\n{yaml_text}\n---\n\n{body.lstrip(chr(10))}"
