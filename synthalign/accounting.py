"""Token and cost accounting: calls, tokens, failures, retries and seconds per step and model.

Every synthalign backend generates through :meth:`synthalign.llms.base.SynthLLM.generate`,
which hands each engine call's completions to :func:`record`: the token counts are the
backend's own (vLLM's and the server's ``usage``, the tokenizer's for transformers and
llama.cpp), never an estimate. In a run, each step worker adds up its calls per
``(step, model)`` and rewrites ``accounting/<pid>.json`` in the run's status folder
(:func:`start` in the runner, :func:`set_step` in each worker); the driver sums the
files once the pipeline ends (:func:`collect`). Outside a run (a notebook calling an
LLM) the tally stays in memory (:func:`totals`).

Batches a resumed run takes from the batch store cost nothing and are not counted. An
LLM role's optional ``price_per_million: {input: X, output: Y}`` (USD) turns its model's
tokens into cost (:func:`role_prices`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthalign.errors import RecipeError
from synthalign.recipes import LLMRole, Price

__all__ = [
    "ACCOUNTING",
    "Usage",
    "collect",
    "priced",
    "record",
    "role_prices",
    "set_step",
    "start",
    "summary_line",
    "table_rows",
    "totals",
]

ACCOUNTING = "accounting"

_folder: Path | None = None
_step: str = "-"
_tally: dict[tuple[str, str], Usage] = {}


@dataclass
class Usage:
    """What one ``(step, model)`` used."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    failures: int = 0
    retries: int = 0
    seconds: float = 0.0

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def start(folder: Path) -> None:
    """In the runner: where workers write their tallies (inherited by forked workers)."""
    global _folder
    (folder / ACCOUNTING).mkdir(parents=True, exist_ok=True)
    _folder = folder
    _tally.clear()


def set_step(name: str) -> None:
    """In a worker: the step whose calls follow (a worker may run several in turn)."""
    global _step
    _step = name


def record(
    model: str,
    *,
    calls: int,
    input_tokens: int,
    output_tokens: int,
    failures: int = 0,
    retries: int = 0,
    seconds: float = 0.0,
) -> None:
    """Add one engine call's completions to the current step's tally."""
    usage = _tally.setdefault((_step, model), Usage())
    usage.add(Usage(calls, input_tokens, output_tokens, failures, retries, seconds))
    if _folder is not None:
        rows = [{"step": s, "model": m, **asdict(u)} for (s, m), u in _tally.items()]
        path = _folder / ACCOUNTING / f"{os.getpid()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):  # the status folder is gone (a stop): best effort
            tmp.write_text(json.dumps(rows), encoding="utf-8")
            os.replace(tmp, path)


def totals() -> list[dict[str, Any]]:
    """This process's tally (outside a run)."""
    return [{"step": s, "model": m, **asdict(u)} for (s, m), u in _tally.items()]


def collect(folder: Path, order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every worker's tally, summed per ``(step, model)``, steps in pipeline order."""
    merged: dict[tuple[str, str], Usage] = {}
    for path in sorted((folder / ACCOUNTING).glob("*.json")):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for row in rows:
            usage = Usage(**{f.name: row.get(f.name, 0) for f in fields(Usage)})
            merged.setdefault((row["step"], row["model"]), Usage()).add(usage)
    rank = {name: i for i, name in enumerate(order)}
    keys = sorted(merged, key=lambda k: (rank.get(k[0], len(rank)), k))
    return [
        {
            "step": s,
            "model": m,
            **asdict(merged[(s, m)]),
            "seconds": round(merged[(s, m)].seconds, 2),
        }
        for s, m in keys
    ]


def _roles(value: Any) -> Iterator[LLMRole]:
    if isinstance(value, LLMRole):
        yield value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _roles(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _roles(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _roles(item)


def role_prices(recipe: BaseModel) -> dict[str, Price]:
    """``spec -> price`` from every LLM role with a ``price_per_million``.

    Tokens are counted per model, so two roles on one model must agree on its price
    (a one-line error before the run, not a silently wrong cost).
    """
    default = getattr(recipe, "llm", None)
    prices: dict[str, Price] = {}
    for role in _roles(recipe):
        spec = role.llm or default
        if role.price_per_million is None or not spec:
            continue
        known = prices.setdefault(spec, role.price_per_million)
        if known != role.price_per_million:
            raise RecipeError(
                f"two LLM roles price {spec} differently ({known.model_dump()} and "
                f"{role.price_per_million.model_dump()}): give one price_per_million per model"
            )
    return prices


def _price_of(model: str, prices: Mapping[str, Any]) -> Any:
    """A model's price: by its name, or by a spec whose model part is that name."""
    if model in prices:
        return prices[model]
    for spec, price in prices.items():
        if spec.rsplit("#", 1)[-1] == model or model.rsplit("#", 1)[-1] == spec:
            return price
    return None


def _per_million(price: Any, kind: str) -> float:
    """USD per token from a recipe price (a ``Price`` or a mapping) in USD per million."""
    value = price.get(kind, 0) if isinstance(price, Mapping) else getattr(price, kind, 0)
    return float(value or 0) / 1e6


def priced(rows: Iterable[dict[str, Any]], prices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with ``cost`` (USD) where the recipe prices the model, else None."""
    out = []
    for row in rows:
        price = _price_of(str(row["model"]), prices)
        cost = None
        if price is not None:
            cost = round(
                row["input_tokens"] * _per_million(price, "input")
                + row["output_tokens"] * _per_million(price, "output"),
                6,
            )
        out.append({**row, "cost": cost})
    return out


def _sum(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    total = Usage()
    for row in rows:
        total.add(Usage(**{f.name: row.get(f.name, 0) or 0 for f in fields(Usage)}))
    costs = [r.get("cost") for r in rows]
    cost = sum(c for c in costs if c is not None) if any(c is not None for c in costs) else None
    return {**asdict(total), "cost": cost}


def summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line for the end of a run: calls, tokens, failures, retries, seconds, cost."""
    if not rows:
        return "LLM usage: no model calls in this run (every batch came from the store, or none)"
    t = _sum(rows)
    cost = f"${t['cost']:.4f}" if t["cost"] is not None else "no price_per_million in the recipe"
    retries = f", {t['retries']} retries" if t["retries"] else ""
    return (
        f"LLM usage: {t['calls']:,} calls, {t['input_tokens']:,} input + "
        f"{t['output_tokens']:,} output tokens, {t['failures']} failed{retries}, "
        f"{t['seconds']:.1f} s in the engines, cost: {cost}"
    )


TABLE_HEADERS = [
    "state",
    "step",
    "model",
    "calls",
    "input tokens",
    "output tokens",
    "failed",
    "retries",
    "seconds",
    "cost (USD)",
]


def table_rows(by_state: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[list[Any]]:
    """The card's accounting table: one row per state, step and model, then the total."""
    rows: list[list[Any]] = []
    every: list[Mapping[str, Any]] = []
    for state, entries in by_state.items():
        for e in entries:
            every.append(e)
            rows.append(
                [
                    state,
                    e["step"],
                    e["model"],
                    e["calls"],
                    e["input_tokens"],
                    e["output_tokens"],
                    e["failures"],
                    e["retries"],
                    round(float(e["seconds"]), 1),
                    e.get("cost"),
                ]
            )
    if rows:
        t = _sum(every)
        rows.append(
            [
                "total",
                "",
                "",
                t["calls"],
                t["input_tokens"],
                t["output_tokens"],
                t["failures"],
                t["retries"],
                round(t["seconds"], 1),
                t["cost"],
            ]
        )
    return rows
