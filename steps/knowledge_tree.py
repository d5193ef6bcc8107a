"""Condor's World Knowledge Tree: root domain -> sub-domain -> leaf tag.

Condor (arXiv 2501.12273) draws its questions from a tree of tags rather than from
seed prompts: a (tag path, task type) pair is the "inspiration" for one question
generation call, so coverage of the tree is what gives the data its breadth. This
module holds

- :class:`KnowledgeTree`: the three-level tree, loaded from and saved to YAML
  (``default`` is the English tree shipped in ``steps/data/knowledge_tree.yaml``);
- :class:`ExpandKnowledgeTree`: an LLM task that proposes new sub-domains or leaf tags
  under a node, schema-forced, with duplicates and tags already in the tree rejected;
  :func:`expand_tree` runs it over a tree without a pipeline;
- :func:`stratified_items` and :class:`SampleKnowledgeTasks`: the generator step that
  yields (tag path, task type) items so that every root domain and every task type
  gets an equal share, seeded and reproducible.

The tree is referenced by name or path (never inlined) so ``pipeline.yaml`` reruns it.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import yaml
from distilabel.steps import GeneratorStep
from pydantic import BaseModel, Field, StringConstraints

from synthalign.errors import SeedDataError
from synthalign.llms import load_llm
from synthalign.recipes import read_yaml
from synthalign.steps.base import SchemaTask, provenance_columns
from synthalign.steps.columns import FixedColumns

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_TREE = "default"

# The paper's seven task types, each with the one-line brief the question prompt gets.
# The briefs are ours; the paper names the types without defining them in text.
TASK_TYPES: dict[str, str] = {
    "Role Playing": "the user asks the assistant to take on a character, persona or profession and act or speak as them",
    "Daily Chat": "a casual, conversational message such as a person would send a friendly assistant in everyday life",
    "Domain QA": "a knowledge question about the topic that has a substantive, checkable answer",
    "Given Material Processing": "the user supplies a short piece of material (a passage, table, list or dialogue, written out in full inside the question) and asks for it to be summarised, rewritten, extracted from or analysed",
    "Response Format Control": "a request whose answer must follow explicit format constraints (length, structure, bullet points, JSON, tables, style or word limits)",
    "View": "the user asks for an opinion, evaluation or balanced perspective on a debatable aspect of the topic",
    "Creation": "a creative writing request: a story, poem, slogan, script, letter or other original piece about the topic",
}

MAX_TAG_CHARS = 60
_SPACES = re.compile(r"\s+")


def normalize_tag(tag: str) -> str:
    """The form two tags are compared in: case, spacing and edge punctuation ignored."""
    return _SPACES.sub(" ", tag).strip().strip(".,;:!?-_*\"'`").strip().casefold()


def clean_tag(tag: str) -> str:
    """A proposed tag as stored: single-spaced, without list bullets or quotes."""
    text = _SPACES.sub(" ", tag).strip()
    text = re.sub(r"^(?:[-*\u2022]|\d+[.)])\s*", "", text)
    return text.strip().strip("\"'`").strip().rstrip(".;,:").strip()


@dataclass
class KnowledgeTree:
    """A three-level tag tree: ``domains[root][sub_domain] == [leaf, ...]``.

    Invariants (checked by :meth:`validate`): every root has at least one sub-domain,
    every sub-domain at least one leaf, names are non-empty single-line strings, and
    no two siblings share a normalized name.
    """

    domains: dict[str, dict[str, list[str]]]
    name: str = "custom"
    description: str = ""
    source: str | None = field(default=None, compare=False)

    # ---------------------------------------------------------------- views

    @property
    def roots(self) -> list[str]:
        return list(self.domains)

    def leaf_paths(self, root: str | None = None) -> list[tuple[str, str, str]]:
        """Every (root, sub-domain, leaf) path, in file order (optionally one root's)."""
        roots = [root] if root is not None else self.roots
        return [
            (r, s, leaf) for r in roots for s, leaves in self.domains[r].items() for leaf in leaves
        ]

    def counts(self) -> dict[str, int]:
        return {
            "root_domains": len(self.domains),
            "sub_domains": sum(len(s) for s in self.domains.values()),
            "leaf_tags": sum(len(leaves) for s in self.domains.values() for leaves in s.values()),
        }

    def all_tags(self) -> set[str]:
        """Normalized names at every level (what a new tag must not repeat)."""
        names = set()
        for root, subs in self.domains.items():
            names.add(normalize_tag(root))
            for sub, leaves in subs.items():
                names.add(normalize_tag(sub))
                names.update(normalize_tag(leaf) for leaf in leaves)
        return names

    def fingerprint(self) -> str:
        """``name@sha12`` of the canonical YAML: what rows record as their tree."""
        digest = hashlib.sha256(self.to_yaml().encode("utf-8")).hexdigest()[:12]
        return f"{self.name}@{digest}"

    # ---------------------------------------------------------------- checks

    def validate(self) -> KnowledgeTree:
        where = self.source or self.name
        if not self.domains:
            raise SeedDataError(f"knowledge tree {where} has no root domains")
        for root, subs in self.domains.items():
            _check_name(root, where, "root domain")
            if not isinstance(subs, dict) or not subs:
                raise SeedDataError(
                    f"knowledge tree {where}: root domain {root!r} needs a mapping of sub-domains to leaf lists"
                )
            _check_unique(subs, where, f"sub-domains of {root!r}")
            for sub, leaves in subs.items():
                _check_name(sub, where, f"sub-domain of {root!r}")
                if not isinstance(leaves, list) or not leaves:
                    raise SeedDataError(
                        f"knowledge tree {where}: {root} / {sub} needs a non-empty list of leaf tags"
                    )
                for leaf in leaves:
                    _check_name(leaf, where, f"leaf tag under {root} / {sub}")
                _check_unique(leaves, where, f"leaf tags of {root} / {sub}")
        _check_unique(self.domains, where, "root domains")
        return self

    # ---------------------------------------------------------------- edits

    def add(self, path: Iterable[str], names: Iterable[str]) -> tuple[list[str], list[str]]:
        """Add children under ``path`` (``[root]`` adds sub-domains, ``[root, sub]`` leaves).

        Returns ``(accepted, rejected)``. A name is rejected when it is empty, too long,
        repeats a tag already anywhere in the tree (normalized), or repeats an earlier
        name of the same call. New sub-domains start with no leaves: fill them before
        saving (:func:`expand_tree` does).
        """
        path = list(path)
        seen = self.all_tags()
        accepted, rejected = [], []
        for raw in names:
            name = clean_tag(raw) if isinstance(raw, str) else ""
            key = normalize_tag(name)
            if not key or len(name) > MAX_TAG_CHARS or "\n" in name or key in seen:
                rejected.append(raw if isinstance(raw, str) else str(raw))
                continue
            seen.add(key)
            accepted.append(name)
        if len(path) == 1:
            subs = self.domains.setdefault(path[0], {})
            for name in accepted:
                subs[name] = []
        elif len(path) == 2:
            self.domains[path[0]][path[1]].extend(accepted)
        else:
            raise ValueError(f"a node path is [root] or [root, sub_domain], got {path}")
        return accepted, rejected

    def prune_empty(self) -> list[tuple[str, str]]:
        """Drop sub-domains (then roots) left without leaves; return the dropped ones."""
        dropped = []
        for root in list(self.domains):
            for sub in [s for s, leaves in self.domains[root].items() if not leaves]:
                del self.domains[root][sub]
                dropped.append((root, sub))
            if not self.domains[root]:
                del self.domains[root]
        return dropped

    # ---------------------------------------------------------------- YAML

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "domains": self.domains}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=1000)

    def save(self, path: str | Path) -> Path:
        """Write the tree as YAML (validated first, so a saved tree always loads)."""
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> KnowledgeTree:
        if not isinstance(data, dict) or not isinstance(data.get("domains"), dict):
            raise SeedDataError(
                f"knowledge tree {source} must be a mapping with a 'domains' key: "
                "{root domain: {sub-domain: [leaf tag, ...]}}"
            )
        domains = {
            str(root): (
                {
                    str(sub): list(leaves) if isinstance(leaves, list) else leaves
                    for sub, leaves in subs.items()
                }
                if isinstance(subs, dict)
                else subs
            )
            for root, subs in data["domains"].items()
        }
        tree = cls(
            domains=domains,
            name=str(data.get("name") or Path(source).stem),
            description=str(data.get("description") or ""),
            source=source,
        )
        return tree.validate()


def _check_name(name: Any, where: str, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise SeedDataError(
            f"knowledge tree {where}: every {what} must be a non-empty one-line string, got {name!r}"
        )


def _check_unique(names: Iterable[str], where: str, what: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = normalize_tag(name)
        if key in seen:
            raise SeedDataError(
                f"knowledge tree {where}: {what} repeat {seen[key]!r} as {name!r}; remove one"
            )
        seen[key] = name


def tree_path(source: str) -> Path:
    """The file a tree reference points to (``default`` is the shipped English tree)."""
    if source == DEFAULT_TREE:
        return DATA_DIR / "knowledge_tree.yaml"
    return Path(source).expanduser()


def load_tree(source: str | Path = DEFAULT_TREE) -> KnowledgeTree:
    """Load and validate a tree from ``default`` or a YAML path (one-line errors)."""
    path = tree_path(str(source))
    if not path.is_file():
        raise SeedDataError(
            f"knowledge tree {source} not found: use 'default' or a path to a tree YAML file"
        )
    return KnowledgeTree.from_dict(read_yaml(path, "tree", SeedDataError), str(source))


# -------------------------------------------------------------------- sampling


def stratified_items(
    tree: KnowledgeTree,
    n: int,
    *,
    task_types: Iterable[str] = tuple(TASK_TYPES),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n`` (tag path, task type) items, balanced over root domains and task types.

    Item ``k`` goes to root ``k mod R`` and task type ``(k + k // L) mod T`` (``L`` =
    lcm(R, T)), under seeded random relabelings of both. So every prefix, and the whole
    list, gives each root and each task type ``floor`` or ``ceil`` of its equal share,
    and the (root, task type) cells fill evenly too: the shift by ``k // L`` walks
    through all cells when R and T share a factor. Within a root, leaves are drawn by
    round-robin over its sub-domains with each sub-domain's leaves shuffled, so a root
    asked for a few items spreads them over its sub-domains before repeating one; a
    leaf repeats only when the root's leaves run out.
    """
    task_types = list(task_types)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not task_types:
        raise ValueError("at least one task type is needed")
    rng = random.Random(seed)
    roots = tree.roots
    rng.shuffle(roots)
    tasks = list(task_types)
    rng.shuffle(tasks)
    leaf_streams = {root: _leaf_stream(tree, root, rng) for root in sorted(roots)}
    r, t = len(roots), len(tasks)
    lcm = r * t // gcd(r, t)
    items = []
    for k in range(n):
        root = roots[k % r]
        task = tasks[(k + k // lcm) % t]
        _, sub, leaf = next(leaf_streams[root])
        items.append(
            {
                "sample_index": k,
                "tag_path": [root, sub, leaf],
                "root_domain": root,
                "sub_domain": sub,
                "tag": leaf,
                "task_type": task,
            }
        )
    return items


def _leaf_stream(
    tree: KnowledgeTree, root: str, rng: random.Random
) -> Iterator[tuple[str, str, str]]:
    """Endless leaves of one root: round-robin over shuffled sub-domains, reshuffled per pass."""
    subs = {sub: list(leaves) for sub, leaves in tree.domains[root].items()}
    while True:
        order = list(subs)
        rng.shuffle(order)
        shuffled = {sub: rng.sample(leaves, len(leaves)) for sub, leaves in subs.items()}
        width = max(len(v) for v in shuffled.values())
        for i in range(width):
            for sub in order:
                if i < len(shuffled[sub]):
                    yield root, sub, shuffled[sub][i]


def sampling_tree(
    source: str,
    root_domains: list[str] | None = None,
    task_types: Iterable[str] = tuple(TASK_TYPES),
) -> tuple[KnowledgeTree, str]:
    """The tree to sample from (restricted to ``root_domains``) and the full tree's id.

    Also checks the task types, so a recipe typo fails before any model loads.
    """
    tree = load_tree(source)
    fingerprint = tree.fingerprint()
    if root_domains:
        missing = [r for r in root_domains if r not in tree.domains]
        if missing:
            raise SeedDataError(f"root domain(s) {missing} are not in knowledge tree {source}")
        tree = KnowledgeTree(
            {r: tree.domains[r] for r in root_domains}, tree.name, tree.description, tree.source
        )
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown:
        raise SeedDataError(f"unknown task type(s) {unknown}: choose from {list(TASK_TYPES)}")
    return tree, fingerprint


class SampleKnowledgeTasks(FixedColumns, GeneratorStep):
    """Yields ``num_items`` (tag path, task type) rows from a knowledge tree, stratified.

    The tree is named (``default``) or a YAML path, so the step reruns from
    ``pipeline.yaml``. ``root_domains`` / ``task_types`` restrict the draw (the paper's
    task-subset ablations); the default is the whole tree and all seven task types.
    """

    output_columns: ClassVar[tuple[str, ...]] = (
        "sample_index", "tag_path", "root_domain", "sub_domain", "tag", "task_type",
        "knowledge_tree",
    )  # fmt: skip

    tree: str = Field(default=DEFAULT_TREE, description="'default' or a path to a tree YAML file")
    num_items: int = Field(
        default=7, ge=1, description="question-generation calls (each yields 3 questions)"
    )
    task_types: list[str] = Field(default_factory=lambda: list(TASK_TYPES))
    root_domains: list[str] | None = Field(
        default=None, description="only these root domains (default: all)"
    )
    seed: int = 0

    def load_tree(self) -> tuple[KnowledgeTree, str]:
        return sampling_tree(self.tree, self.root_domains, self.task_types)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        tree, fingerprint = self.load_tree()
        rows = stratified_items(tree, self.num_items, task_types=self.task_types, seed=self.seed)
        for row in rows:
            row["knowledge_tree"] = fingerprint
        rows = rows[offset:]
        while rows:
            batch, rows = rows[: self.batch_size], rows[self.batch_size :]
            yield batch, not rows


# -------------------------------------------------------------------- expansion


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
    def outputs(self) -> StepColumns:
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
    tree: KnowledgeTree, task: ExpandKnowledgeTree, nodes: list[list[str]]
) -> list[dict[str, Any]]:
    rows = [{"node_path": n, "existing_children": _children(tree, n)} for n in nodes]
    log = []
    for start in range(0, len(rows), task.input_batch_size):
        for row in next(task.process(rows[start : start + task.input_batch_size])):
            accepted, rejected = tree.add(row["node_path"], row.get("new_tags") or [])
            log.append(
                {
                    "node_path": row["node_path"],
                    "accepted": accepted,
                    "rejected": rejected,
                    "error": row.get("expand_error"),
                }
            )
    return log


def _children(tree: KnowledgeTree, node: list[str]) -> list[str]:
    return list(tree.domains[node[0]]) if len(node) == 1 else list(tree.domains[node[0]][node[1]])


def main(argv: list[str] | None = None) -> None:
    """``python -m synthalign.steps.knowledge_tree expand SPEC OUT.yaml [--tree T] [--level L] [--limit N]``."""
    parser = argparse.ArgumentParser(
        description="Grow a knowledge tree with an LLM and save it as YAML."
    )
    parser.add_argument("command", choices=["expand", "stats"])
    parser.add_argument("llm", nargs="?", help="LLM spec, e.g. vllm:Qwen/Qwen2.5-72B-Instruct")
    parser.add_argument("out", nargs="?", help="where to write the grown tree")
    parser.add_argument("--tree", default=DEFAULT_TREE)
    parser.add_argument("--level", default="leaves", choices=["leaves", "sub_domains"])
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
    nodes = (
        [(r,) for r in tree.roots]
        if args.level == "sub_domains"
        else [(r, s) for r in tree.roots for s in tree.domains[r]]
    )
    llm = load_llm(args.llm, max_new_tokens=args.max_new_tokens)
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
