"""Condor's World Knowledge Tree: root domain -> sub-domain -> leaf tag.

Condor (arXiv 2501.12273) draws its questions from a tree of tags rather than from
seed prompts: a (tag path, task type) pair is the "inspiration" for one question
generation call, so coverage of the tree is what gives the data its breadth. This
module holds

- :class:`KnowledgeTree`: the three-level tree, loaded from and saved to YAML
  (``default`` is the English tree shipped in ``steps/data/knowledge_tree.yaml``);
- the tag sampling: :func:`proportional_items` (the default: every leaf tag equally
  likely, so a root domain's share is its share of the leaves) or
  :func:`stratified_items` (``per_root``: every root domain an equal share), both
  stratified over the seven task types, seeded and reproducible; :func:`tag_subset`
  keeps a seeded fraction of the leaves (the paper's 25% / 50% / 100% tag-coverage
  experiment);
- :class:`SampleKnowledgeTasks`: the generator step of that draw over a named tree
  (:class:`~synthalign.steps.tree_expansion.SampleGrownTree` is the same draw over
  the tree an expansion step wrote).

The LLM expansion of a tree lives in :mod:`synthalign.steps.tree_expansion`. The tree
is referenced by name or path (never inlined) so ``pipeline.yaml`` reruns it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from distilabel.steps import GeneratorStep
from pydantic import BaseModel, Field

from synthalign.errors import SeedDataError
from synthalign.recipes import read_yaml
from synthalign.steps.columns import FixedColumns

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput

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

TAG_SAMPLING: tuple[str, ...] = ("proportional", "per_root")


def tag_subset(tree: KnowledgeTree, fraction: float, seed: int = 0) -> KnowledgeTree:
    """The tree restricted to ``round(fraction * leaves)`` leaf tags (at least one).

    Each leaf gets a rank from a hash of ``seed`` and its path, and the lowest ranks are
    kept: the subset is the same on every run and machine for a seed, and a smaller
    fraction's subset lies inside a larger one's (25% inside 50% inside 100%), which is
    what a coverage experiment compares. Sub-domains and roots left empty are dropped.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"tag_fraction must be in (0, 1], got {fraction}")
    paths = tree.leaf_paths()
    if fraction == 1:
        return tree
    keep = set(sorted(paths, key=lambda p: _rank(seed, p))[: max(1, round(fraction * len(paths)))])
    domains: dict[str, dict[str, list[str]]] = {}
    for root, sub, leaf in paths:
        if (root, sub, leaf) in keep:
            domains.setdefault(root, {}).setdefault(sub, []).append(leaf)
    return KnowledgeTree(domains, tree.name, tree.description, tree.source)


def _rank(seed: int, path: tuple[str, str, str]) -> str:
    return hashlib.sha256("\x00".join([str(seed), *path]).encode("utf-8")).hexdigest()


def _item(k: int, path: tuple[str, str, str], task: str) -> dict[str, Any]:
    root, sub, leaf = path
    return {
        "sample_index": k,
        "tag_path": [root, sub, leaf],
        "root_domain": root,
        "sub_domain": sub,
        "tag": leaf,
        "task_type": task,
    }


def _checked(n: int, task_types: Iterable[str]) -> list[str]:
    tasks = list(task_types)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not tasks:
        raise ValueError("at least one task type is needed")
    return tasks


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
    tasks = _checked(n, task_types)
    rng = random.Random(seed)
    roots = tree.roots
    rng.shuffle(roots)
    rng.shuffle(tasks)
    leaf_streams = {root: _leaf_stream(tree, root, rng) for root in sorted(roots)}
    r, t = len(roots), len(tasks)
    lcm = r * t // gcd(r, t)
    return [_item(k, next(leaf_streams[roots[k % r]]), tasks[(k + k // lcm) % t]) for k in range(n)]


def proportional_items(
    tree: KnowledgeTree,
    n: int,
    *,
    task_types: Iterable[str] = tuple(TASK_TYPES),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n`` (tag path, task type) items with every leaf tag equally likely (the paper's draw).

    A root domain gets its share of the leaves as its share of the items, rounded by
    largest remainder (so within one of ``n * leaves_r / leaves``); the roots' items are
    interleaved by even spacing, so a prefix is proportional too. Task type ``k mod T``
    (seeded relabeling) keeps the seven types within one of an equal share. Within a
    root, leaves come round-robin over sub-domains as in :func:`stratified_items`, so a
    leaf repeats only when its root's leaves run out.
    """
    tasks = _checked(n, task_types)
    rng = random.Random(seed)
    roots = tree.roots
    rng.shuffle(roots)
    rng.shuffle(tasks)
    quotas = _largest_remainder(n, [len(tree.leaf_paths(r)) for r in roots])
    slots = sorted(
        ((j + 0.5) / q, i) for i, q in enumerate(quotas) for j in range(q)
    )  # even spacing: root i's j-th item sits at (j + 1/2) / q_i
    leaf_streams = {root: _leaf_stream(tree, root, rng) for root in sorted(roots)}
    return [
        _item(k, next(leaf_streams[roots[i]]), tasks[k % len(tasks)])
        for k, (_, i) in enumerate(slots)
    ]


def _largest_remainder(n: int, sizes: list[int]) -> list[int]:
    """``n`` split in proportion to ``sizes``: floors, then +1 to the largest remainders."""
    total = sum(sizes)
    exact = [n * s / total for s in sizes]
    quotas = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: quotas[i] - exact[i])
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    return quotas


def sample_items(
    tree: KnowledgeTree,
    n: int,
    *,
    sampling: str = "proportional",
    task_types: Iterable[str] = tuple(TASK_TYPES),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n`` items drawn the ``sampling`` way (``proportional`` or ``per_root``)."""
    if sampling not in TAG_SAMPLING:
        raise ValueError(f"tag_sampling must be one of {list(TAG_SAMPLING)}, got {sampling!r}")
    draw = proportional_items if sampling == "proportional" else stratified_items
    return draw(tree, n, task_types=task_types, seed=seed)


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


def restrict_tree(
    tree: KnowledgeTree, source: str, root_domains: list[str] | None = None
) -> KnowledgeTree:
    """``tree`` with only ``root_domains`` (all when None); unknown roots fail in one line."""
    if not root_domains:
        return tree
    missing = [r for r in root_domains if r not in tree.domains]
    if missing:
        raise SeedDataError(f"root domain(s) {missing} are not in knowledge tree {source}")
    return KnowledgeTree(
        {r: tree.domains[r] for r in root_domains}, tree.name, tree.description, tree.source
    )


def sampling_tree(
    source: str,
    root_domains: list[str] | None = None,
    task_types: Iterable[str] = tuple(TASK_TYPES),
    tag_fraction: float = 1.0,
    seed: int = 0,
) -> tuple[KnowledgeTree, str]:
    """The tree to sample from (``root_domains``, then ``tag_fraction`` of its leaves)
    and the full tree's id.

    Also checks the task types, so a recipe typo fails before any model loads.
    """
    tree = load_tree(source)
    fingerprint = tree.fingerprint()
    tree = tag_subset(restrict_tree(tree, source, root_domains), tag_fraction, seed)
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown:
        raise SeedDataError(f"unknown task type(s) {unknown}: choose from {list(TASK_TYPES)}")
    return tree, fingerprint


def tree_stats(
    full: KnowledgeTree, sampled: KnowledgeTree, expansion: dict[str, int] | None = None
) -> dict[str, int]:
    """What the card says about the tree: base and grown leaf counts, tags the expansion
    added / rejected, its failed calls, and the leaves the draw could pick from."""
    leaves = full.counts()["leaf_tags"]
    stats = {
        "base_leaf_tags": leaves,
        "leaf_tags": leaves,
        "added_tags": 0,
        "rejected_tags": 0,
        "failed_calls": 0,
    }
    stats.update({k: int(v) for k, v in (expansion or {}).items() if k in stats})
    stats["sampled_leaf_tags"] = sampled.counts()["leaf_tags"]
    return stats


class TagDraw(BaseModel):
    """The draw's settings, shared by the generator step and the step after an expansion."""

    num_items: int = Field(
        default=7, ge=1, description="question-generation calls (each yields 3 questions)"
    )
    task_types: list[str] = Field(default_factory=lambda: list(TASK_TYPES))
    root_domains: list[str] | None = Field(
        default=None, description="only these root domains (default: all)"
    )
    tag_sampling: Literal["proportional", "per_root"] = Field(
        default="proportional",
        description="proportional: every leaf tag equally likely; per_root: every root domain an equal share",
    )
    tag_fraction: float = Field(
        default=1.0, gt=0, le=1, description="draw from this seeded fraction of the leaf tags"
    )
    seed: int = 0

    def draw(self, source: str, expansion: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Every item of the draw from the tree at ``source``, with the tree's id and stats."""
        full = load_tree(source)
        tree, fingerprint = sampling_tree(
            source, self.root_domains, self.task_types, self.tag_fraction, self.seed
        )
        stats = tree_stats(full, tree, expansion)
        rows = sample_items(
            tree,
            self.num_items,
            sampling=self.tag_sampling,
            task_types=self.task_types,
            seed=self.seed,
        )
        return [
            {**row, "knowledge_tree": fingerprint, "knowledge_tree_stats": stats} for row in rows
        ]


DRAW_COLUMNS: tuple[str, ...] = (
    "sample_index", "tag_path", "root_domain", "sub_domain", "tag", "task_type",
    "knowledge_tree", "knowledge_tree_stats",
)  # fmt: skip


class SampleKnowledgeTasks(FixedColumns, TagDraw, GeneratorStep):
    """Yields ``num_items`` (tag path, task type) rows from a knowledge tree, stratified.

    The tree is named (``default``) or a YAML path, so the step reruns from
    ``pipeline.yaml``. ``root_domains`` / ``task_types`` restrict the draw (the paper's
    task-subset ablations), ``tag_fraction`` keeps a seeded share of the leaves (its
    coverage experiment); the default is the whole tree and all seven task types.
    """

    output_columns: ClassVar[tuple[str, ...]] = DRAW_COLUMNS

    tree: str = Field(default=DEFAULT_TREE, description="'default' or a path to a tree YAML file")

    def load_tree(self) -> tuple[KnowledgeTree, str]:
        return sampling_tree(
            self.tree, self.root_domains, self.task_types, self.tag_fraction, self.seed
        )

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        rows = self.draw(self.tree)[offset:]
        while rows:
            batch, rows = rows[: self.batch_size], rows[self.batch_size :]
            yield batch, not rows
