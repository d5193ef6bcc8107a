"""Growing Condor's World Knowledge Tree with an LLM, as a pipeline stage or a command.

The shipped tree has 1,028 leaf tags; the paper's has 8,400+. Condor grows its tree by
asking a model for more topics under each node, so this module does the same:

- :class:`ExpandKnowledgeTree`: the LLM task that proposes new sub-domains or leaf tags
  for one node (schema-forced); :meth:`KnowledgeTree.add` rejects names already in the
  tree (normalized) and repeats within a proposal, so the tree stays deduplicated;
- :func:`grow_tree`: rounds of leaf expansion, the sub-domains with fewest leaves first,
  until the tree has ``expand_to`` leaves (or a round adds nothing), checkpointed after
  every round;
- :class:`GrowKnowledgeTree`: that growth as the first stage of a Condor pipeline (a
  generator step, so ``pipeline.yaml`` reruns it); the grown tree is a YAML file in the
  cache keyed by base tree, ``expand_to`` and LLM, so a rerun or resume reuses it, and
  :class:`SampleGrownTree` draws the questions' tags from it;
- ``python -m synthalign.steps.tree_expansion expand ...``: the same without a pipeline.

A model output that does not parse is counted (``failed_calls``) and never stops the
growth; a rejected name is counted (``rejected_tags``).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# ``SampleGrownTree.process`` by its ``StepInput`` annotation.

import argparse
import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import yaml
from distilabel.models import LLM
from distilabel.steps import GeneratorStep, Step, StepInput
from pydantic import BaseModel, Field, PrivateAttr, StringConstraints

from synthalign.llms import load_llm
from synthalign.steps.base import SchemaTask, provenance_columns
from synthalign.steps.columns import FixedColumns
from synthalign.steps.knowledge_tree import (
    DEFAULT_TREE,
    DRAW_COLUMNS,
    MAX_TAG_CHARS,
    KnowledgeTree,
    TagDraw,
    load_tree,
)

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns, StepOutput


class ProposedTags(BaseModel):
    """New child tags for one node; bounded so even a random model terminates."""

    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_CHARS)]] = Field(
        min_length=1, max_length=12
    )


class ExpandKnowledgeTree(SchemaTask):
    """Proposes new children for a tree node: sub-domains under a root, leaves under a sub-domain.

    Input ``node_path`` is ``[root]`` or ``[root, sub_domain]``; ``existing_children``
    lists what the node already has, so the prompt can ask for what is missing. The
    output ``new_tags`` is only the raw proposal; :meth:`KnowledgeTree.add` (called by
    :func:`expand_tree`) rejects duplicates and tags already in the tree.
    """

    output_model: ClassVar[type[BaseModel]] = ProposedTags
    template: ClassVar[str] = "condor_expand_tree.jinja2"
    column_prefix: ClassVar[str] = "expand"
    input_columns: ClassVar[tuple[str, ...]] = ("node_path", "existing_children")
    num_new: int = Field(
        default=8, ge=1, le=12, description="how many new tags to ask for per node"
    )

    @property
    def outputs(self) -> "StepColumns":
        return ["new_tags", *provenance_columns(self.column_prefix)]

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        path = list(input["node_path"])
        return {
            "node_path": path,
            "child_kind": "sub-domains" if len(path) == 1 else "specific leaf topics",
            "existing_children": list(input.get("existing_children") or []),
            "num_new": self.num_new,
        }

    def record_columns(self, record: Any, input: dict[str, Any]) -> dict[str, Any]:
        return {"new_tags": list(record.tags)}


def expand_tree(
    tree: KnowledgeTree,
    llm: Any,
    *,
    level: str = "leaves",
    nodes: Iterable[tuple[str, ...]] | None = None,
    num_new: int = 8,
    leaves_per_new_sub_domain: int = 6,
) -> tuple[KnowledgeTree, list[dict[str, Any]]]:
    """Grow ``tree`` in place with ``llm`` and return it with one log row per node.

    ``level="leaves"`` adds leaf tags under sub-domains; ``level="sub_domains"`` adds
    sub-domains under roots and then asks for leaves of each new one (a sub-domain that
    ends without leaves is dropped). ``nodes`` limits the nodes (default: all of that
    level). Each log row has the node, what was accepted and rejected, and the error.
    """
    if level not in ("leaves", "sub_domains"):
        raise ValueError("level is 'leaves' or 'sub_domains'")
    if nodes is None:
        nodes = (
            [(r,) for r in tree.roots]
            if level == "sub_domains"
            else [(r, s) for r in tree.roots for s in tree.domains[r]]
        )
    task = ExpandKnowledgeTree(llm=llm, num_new=num_new, add_raw_output=False, add_raw_input=False)
    task.load()
    log = _expand_nodes(tree, task, [list(n) for n in nodes])
    if level == "sub_domains":
        new_subs = [[row["node_path"][0], sub] for row in log for sub in row["accepted"]]
        if new_subs:
            task.num_new = leaves_per_new_sub_domain
            log += _expand_nodes(tree, task, new_subs)
        tree.prune_empty()
    return tree, log


def _expand_nodes(
    tree: KnowledgeTree,
    task: ExpandKnowledgeTree,
    nodes: list[list[str]],
    budget: int | None = None,
) -> list[dict[str, Any]]:
    """One expansion call per node; ``budget`` caps the leaves added over all nodes."""
    rows = [{"node_path": n, "existing_children": _children(tree, n)} for n in nodes]
    log = []
    for start in range(0, len(rows), task.input_batch_size):
        for row in next(task.process(rows[start : start + task.input_batch_size])):
            accepted, rejected = tree.add(row["node_path"], row.get("new_tags") or [])
            if budget is not None:
                accepted = _cap(tree, row["node_path"], accepted, budget)
                budget -= len(accepted)
            log.append(
                {
                    "node_path": row["node_path"],
                    "accepted": accepted,
                    "rejected": rejected,
                    "error": row.get("expand_error"),
                }
            )
    return log


def _cap(tree: KnowledgeTree, node: list[str], accepted: list[str], budget: int) -> list[str]:
    """Take back the leaves over ``budget`` (they were appended last under ``node``)."""
    extra = len(accepted) - max(budget, 0)
    if extra <= 0:
        return accepted
    del tree.domains[node[0]][node[1]][-extra:]
    return accepted[:-extra]


def _children(tree: KnowledgeTree, node: list[str]) -> list[str]:
    return list(tree.domains[node[0]]) if len(node) == 1 else list(tree.domains[node[0]][node[1]])


# -------------------------------------------------------------------- growth to a size

EXPANSION_COUNTS: tuple[str, ...] = (
    "base_leaf_tags", "leaf_tags", "added_tags", "rejected_tags", "failed_calls", "calls", "rounds",
)  # fmt: skip


def grow_tree(
    tree: KnowledgeTree,
    task: ExpandKnowledgeTree,
    expand_to: int,
    *,
    max_rounds: int = 50,
    checkpoint: Path | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[KnowledgeTree, dict[str, int]]:
    """Add leaf tags until ``tree`` has ``expand_to`` of them; return it and the counts.

    Each round asks the sub-domains with the fewest leaves (as many as the missing
    leaves need at ``task.num_new`` per call) for new leaves, so growth spreads over
    the tree. It stops at ``expand_to`` (never past it), after ``max_rounds``, or after
    a round that added nothing (a model that only repeats the tree cannot grow it).
    ``checkpoint`` gets the tree and counts after every round (see :func:`save_grown`);
    ``counts`` resumes them.
    """
    leaves = tree.counts()["leaf_tags"]
    fresh = {**dict.fromkeys(EXPANSION_COUNTS, 0), "base_leaf_tags": leaves}
    counts = {**fresh, **(counts or {}), "leaf_tags": leaves}
    while leaves < expand_to and counts["rounds"] < max_rounds:
        need = expand_to - leaves
        subs = sorted(
            ([r, s] for r in tree.roots for s in tree.domains[r]),
            key=lambda node: len(tree.domains[node[0]][node[1]]),
        )
        log = _expand_nodes(tree, task, subs[: math.ceil(need / task.num_new)], budget=need)
        added = sum(len(row["accepted"]) for row in log)
        leaves = tree.counts()["leaf_tags"]
        counts.update(
            leaf_tags=leaves,
            added_tags=counts["added_tags"] + added,
            rejected_tags=counts["rejected_tags"] + sum(len(row["rejected"]) for row in log),
            failed_calls=counts["failed_calls"] + sum(bool(row["error"]) for row in log),
            calls=counts["calls"] + len(log),
            rounds=counts["rounds"] + 1,
        )
        if checkpoint is not None:
            save_grown(tree, counts, checkpoint)
        if not added:
            break
    return tree, counts


def save_grown(tree: KnowledgeTree, counts: dict[str, int], path: Path) -> Path:
    """The tree YAML plus an ``expansion`` block with the counts, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = {**tree.validate().to_dict(), "expansion": counts}
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000), "utf-8")
    tmp.replace(path)
    return path


def load_grown(path: Path) -> tuple[KnowledgeTree, dict[str, int]]:
    """A tree written by :func:`save_grown` and its counts."""
    data = yaml.safe_load(path.read_text("utf-8"))
    return KnowledgeTree.from_dict(data, str(path)), dict(data.get("expansion") or {})


def grown_tree_file(cache_root: str | Path, base: str, expand_to: int, llm: dict[str, Any]) -> Path:
    """Where the grown tree of (base tree, ``expand_to``, LLM and its decoding) is cached."""
    base_tree = load_tree(base)
    key = json.dumps([base_tree.fingerprint(), expand_to, llm], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return (
        Path(cache_root).expanduser()
        / "knowledge_trees"
        / f"{base_tree.name}-{expand_to}-{digest}.yaml"
    )


class GrowKnowledgeTree(FixedColumns, GeneratorStep):
    """The first stage of a Condor run with ``knowledge_tree.expand_to``: grow the base
    tree to ``expand_to`` leaves and yield one row naming the grown tree's file.

    The file is the checkpoint: a finished one is reused without loading the LLM, a
    partial one (``*.partial.yaml``, written after every round) is resumed.
    """

    output_columns: ClassVar[tuple[str, ...]] = ("tree_file", "tree_expansion")

    llm: LLM
    base: str = Field(default=DEFAULT_TREE, description="'default' or a path to a tree YAML")
    expand_to: int = Field(ge=1, description="leaf tags the grown tree should have")
    tree_file: str = Field(description="where the grown tree is written (the cache)")
    num_new: int = Field(default=8, ge=1, le=12, description="new leaves asked per call")
    max_rounds: int = Field(default=50, ge=1)

    _task: ExpandKnowledgeTree | None = PrivateAttr(default=None)

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        path = Path(self.tree_file).expanduser()
        if path.is_file():
            _, counts = load_grown(path)
        else:
            counts = self.grow(path)
        yield [{"tree_file": str(path), "tree_expansion": counts}], True

    def grow(self, path: Path) -> dict[str, int]:
        partial = path.with_name(f"{path.stem}.partial.yaml")
        base = load_tree(self.base)
        base_leaves = base.counts()["leaf_tags"]
        tree, counts = load_grown(partial) if partial.is_file() else (base, None)
        tree.name = f"{base.name}+grown-{self.expand_to}"
        counts = {**(counts or {}), "base_leaf_tags": base_leaves}
        tree, counts = grow_tree(
            tree, self.task(), self.expand_to, max_rounds=self.max_rounds,
            checkpoint=partial, counts=counts,
        )  # fmt: skip
        self._logger.info(
            f"knowledge tree grown from {base_leaves} to {counts['leaf_tags']} leaf tags "
            f"(+{counts['added_tags']}, {counts['rejected_tags']} rejected, "
            f"{counts['failed_calls']} of {counts['calls']} calls failed)"
        )
        save_grown(tree, counts, path)
        partial.unlink(missing_ok=True)
        return counts

    def task(self) -> ExpandKnowledgeTree:
        if self._task is None:
            self._task = ExpandKnowledgeTree(
                name=f"{self.name}_expand", llm=self.llm, num_new=self.num_new, add_raw_output=False, add_raw_input=False,
                input_batch_size=self.batch_size,
            )  # fmt: skip
            self._task.load()
        return self._task

    def unload(self) -> None:
        if self._task is not None:
            self._task.unload()
            self._task = None
        super().unload()


class SampleGrownTree(FixedColumns, TagDraw, Step):
    """The same draw as :class:`~synthalign.steps.knowledge_tree.SampleKnowledgeTasks`,
    over the tree :class:`GrowKnowledgeTree` wrote (its one row names the file and
    carries the expansion's counts, which the card reports)."""

    input_columns: ClassVar[tuple[str, ...]] = ("tree_file", "tree_expansion")
    output_columns: ClassVar[tuple[str, ...]] = DRAW_COLUMNS

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        for row in inputs:
            rows = self.draw(row["tree_file"], row.get("tree_expansion"))
            for start in range(0, len(rows), self.input_batch_size):
                yield rows[start : start + self.input_batch_size]


def main(argv: list[str] | None = None) -> None:
    """``python -m synthalign.steps.tree_expansion expand SPEC OUT.yaml [--tree T] [--expand-to N]``."""
    parser = argparse.ArgumentParser(
        description="Grow a knowledge tree with an LLM and save it as YAML."
    )
    parser.add_argument("command", choices=["expand", "stats"])
    parser.add_argument("llm", nargs="?", help="LLM spec, e.g. vllm:Qwen/Qwen2.5-72B-Instruct")
    parser.add_argument("out", nargs="?", help="where to write the grown tree")
    parser.add_argument("--tree", default=DEFAULT_TREE)
    parser.add_argument("--level", default="leaves", choices=["leaves", "sub_domains"])
    parser.add_argument("--expand-to", type=int, default=None, help="grow to N leaf tags")
    parser.add_argument("--limit", type=int, default=None, help="expand only the first N nodes")
    parser.add_argument("--num-new", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    args = parser.parse_args(argv)
    tree = load_tree(args.tree)
    if args.command == "stats":
        print(tree.counts())
        return
    if not args.llm or not args.out:
        parser.error("expand needs LLM and OUT")
    llm = load_llm(args.llm, max_new_tokens=args.max_new_tokens)
    if args.expand_to:
        task = ExpandKnowledgeTree(llm=llm, num_new=args.num_new)
        task.load()
        tree, counts = grow_tree(tree, task, args.expand_to)
        print(f"{counts}; written to {tree.save(args.out)}")
        return
    nodes = (
        [(r,) for r in tree.roots]
        if args.level == "sub_domains"
        else [(r, s) for r in tree.roots for s in tree.domains[r]]
    )
    tree, log = expand_tree(
        tree, llm, level=args.level, nodes=nodes[: args.limit], num_new=args.num_new
    )
    tree.save(args.out)
    added = sum(len(r["accepted"]) for r in log)
    print(
        f"added {added} tags over {len(log)} nodes; tree now {tree.counts()}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
