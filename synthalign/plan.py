"""``synthalign generate METHOD --dry-run``: the run's plan, with no model loaded.

The plan is the first state's pipeline, built exactly as the run builds it, step by
step in order: what kind of step, which model, how many rows reach it, how many model
calls that makes and about how many tokens. Rows come from the generator steps
themselves (they read the seeds, draw from the knowledge tree, sample keyword lists:
no model), then flow through the DAG; a step that makes several rows of one
(``rows_per_input``, Condor's split into three difficulties) multiplies them, a filter
is counted as keeping everything, so calls and tokens are upper bounds. Output tokens
are at most ``max_new_tokens`` per call; input tokens are the rendered prompt of a
sample row at four characters a token, earlier steps' outputs counted at half their
budget.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthalign.accounting import priced, role_prices
from synthalign.cards.base import markdown_table
from synthalign.contract import get_method
from synthalign.run import prepare_recipe

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

__all__ = ["PlanStep", "plan", "print_plan"]

CHARS_PER_TOKEN = 4


@dataclass
class PlanStep:
    """One step of the plan."""

    name: str
    kind: str
    model: str
    rows: int | None
    calls: int | None
    input_tokens: int | None
    output_tokens: int | None


def _generator_rows(step: Any) -> tuple[int | None, list[dict[str, Any]]]:
    """How many rows a generator yields, and the first of them (a sample to render)."""
    try:
        step.load()
        batches = list(step.process(0))
    except Exception:  # a source the plan cannot read without the run (an earlier round)
        return None, []
    rows = [row for batch, _ in batches for row in batch]
    return len(rows), rows[:1]


def _budget(step: Any) -> int:
    """The most tokens one call of the step may write."""
    routed = getattr(step, "max_new_tokens", None)
    if isinstance(routed, int):
        return routed
    llm = getattr(step, "llm", None)
    kwargs = {**(getattr(llm, "generation_kwargs", None) or {})}
    return int(kwargs.get("max_new_tokens") or 0)


def _prompt_tokens(step: Any, sample: dict[str, Any], upstream_budget: int) -> int | None:
    """Tokens of the step's rendered prompt for a sample row (missing columns filled)."""
    filler = "x" * (upstream_budget * CHARS_PER_TOKEN // 2)
    row = {name: filler for name in (getattr(step, "inputs", None) or [])}
    row.update(sample)
    try:
        formatted = step.format_input(row)
    except Exception:
        return None
    chat = formatted[0] if isinstance(formatted, tuple) else formatted
    text = chat if isinstance(chat, str) else " ".join(str(m.get("content", "")) for m in chat)
    return max(1, len(text) // CHARS_PER_TOKEN)


def _model_of(step: Any) -> str:
    llm = getattr(step, "llm", None)
    if llm is None:
        return "-"
    names = getattr(llm, "member_names", None)
    if callable(names):
        return ", ".join(dict.fromkeys(names()))
    return str(getattr(llm, "model_name", None) or getattr(llm, "model", "?"))


def _walk(pipeline: Pipeline) -> list[PlanStep]:
    dag = pipeline.dag
    order = [name for level in dag.iter_based_on_trophic_levels() for name in level]
    rows_out: dict[str, int | None] = {}
    budget_out: dict[str, int] = {}
    samples: dict[str, dict[str, Any]] = {}
    plan = []
    for name in order:
        step = dag.get_step(name)["step"]
        preds = list(dag.get_step_predecessors(name))
        if not preds:
            rows, first = _generator_rows(step)
            samples[name] = first[0] if first else {}
            rows_out[name], budget_out[name] = rows, 0
            plan.append(PlanStep(name, "generator", "-", rows, None, None, None))
            continue
        upstream = [rows_out.get(p) for p in preds]
        rows = None if any(r is None for r in upstream) else sum(r or 0 for r in upstream)
        sample = {k: v for p in preds for k, v in samples.get(p, {}).items()}
        samples[name] = sample
        prior = max((budget_out.get(p, 0) for p in preds), default=0)
        is_llm = getattr(step, "llm", None) is not None
        budget = _budget(step) if is_llm else 0
        budget_out[name] = max(prior, budget)
        rows_out[name] = None if rows is None else rows * getattr(step, "rows_per_input", 1)
        if not is_llm:
            plan.append(PlanStep(name, "step", "-", rows, None, None, None))
            continue
        calls = None if rows is None else rows * int(getattr(step, "num_generations", 1) or 1)
        prompt = _prompt_tokens(step, sample, prior)
        plan.append(
            PlanStep(
                name,
                "model",
                _model_of(step),
                rows,
                calls,
                None if calls is None or prompt is None else calls * prompt,
                None if calls is None else calls * budget,
            )
        )
    return plan


def plan(method_name: str, config: str | Path, llms: list[str] | None = None) -> dict[str, Any]:
    """The first state's plan: ``{"method", "recipe", "state", "steps", "prices"}``."""
    method = get_method(method_name)
    recipe = prepare_recipe(method, config, llms)
    if method.preflight:
        method.preflight(recipe)
    state = method.first_state(recipe, False)
    with contextlib.redirect_stdout(None):
        pipeline = method.build_pipeline(recipe, state)
    return {
        "method": method.name,
        "recipe": recipe.name,
        "state": state.key,
        "loops": method.loops,
        "steps": _walk(pipeline),
        "prices": role_prices(recipe),
    }


def _n(value: int | None, prefix: str = "", applies: bool = True) -> str:
    if not applies:
        return "-"
    return "?" if value is None else f"{prefix}{value:,}"


def print_plan(method_name: str, config: str | Path, llms: list[str] | None = None) -> None:
    """Print the plan (the ``--dry-run`` output)."""
    found = plan(method_name, config, llms)
    steps: list[PlanStep] = found["steps"]
    print(
        f"plan: {found['method']} (recipe {found['recipe']}), state {found['state']}"
        + (" (the first of the loop)" if found["loops"] else "")
        + "; no model was loaded"
    )
    rows = [
        [s.name, s.kind, s.model, _n(s.rows), _n(s.calls, "", s.kind == "model"),
         _n(s.input_tokens, "~", s.kind == "model"), _n(s.output_tokens, "<=", s.kind == "model")]
        for s in steps
    ]  # fmt: skip
    headers = ["step", "kind", "model", "rows", "calls", "input tokens", "output tokens"]
    print(markdown_table(rows, headers), end="")
    llm_steps = [s for s in steps if s.kind == "model"]
    calls = sum(s.calls or 0 for s in llm_steps)
    tokens_in = sum(s.input_tokens or 0 for s in llm_steps)
    tokens_out = sum(s.output_tokens or 0 for s in llm_steps)
    unknown = any(s.calls is None for s in llm_steps)
    usage = [
        {
            "model": s.model,
            "input_tokens": s.input_tokens or 0,
            "output_tokens": s.output_tokens or 0,
        }
        for s in llm_steps
    ]
    costs = [r["cost"] for r in priced(usage, found["prices"]) if r["cost"] is not None]
    cost = f", cost <= ${sum(costs):.4f}" if costs else ""
    more = " (plus steps whose rows depend on earlier outputs)" if unknown else ""
    print(
        f"total: {calls:,} model calls{more}, ~{tokens_in:,} input tokens, "
        f"<= {tokens_out:,} output tokens{cost} (filters counted as keeping every row)"
    )
