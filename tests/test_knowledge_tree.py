"""Condor's World Knowledge Tree: loading, validation, expansion, stratified sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from synthalign.errors import SeedDataError
from synthalign.llms import load_llm
from synthalign.steps.knowledge_tree import (
    TASK_TYPES,
    KnowledgeTree,
    SampleKnowledgeTasks,
    load_tree,
    normalize_tag,
    proportional_items,
    sample_items,
    stratified_items,
    tag_subset,
)
from synthalign.steps.tree_expansion import ExpandKnowledgeTree, expand_tree

PINNED_FIRST_LEAF = ("Physics", "Classical mechanics", "Projectile motion")


def small_tree() -> KnowledgeTree:
    return KnowledgeTree(
        {
            "Science": {"Physics": ["Optics", "Gravity"], "Biology": ["Cells"]},
            "Cooking": {"Baking": ["Bread", "Cakes", "Pastry"]},
            "Music": {"Theory": ["Scales"], "Instruments": ["Piano", "Guitar"]},
        },
        name="small",
    ).validate()


# ------------------------------------------------------------------ loading


def test_default_tree_is_broad_and_three_levels() -> None:
    tree = load_tree("default")
    counts = tree.counts()
    assert counts["root_domains"] >= 40
    assert counts["leaf_tags"] >= 800
    assert all(len(path) == 3 for path in tree.leaf_paths())
    # the areas the issue names are all there
    roots = set(tree.roots)
    for area in [
        "Physics",
        "Computer Science",
        "History",
        "Music",
        "Cooking and Cuisine",
        "Careers and Workplace",
        "Current Affairs",
    ]:
        assert area in roots
    assert tree.fingerprint() == load_tree("default").fingerprint()
    assert tree.fingerprint().startswith("synthalign-default-en@")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tree = small_tree()
    path = tree.save(tmp_path / "sub" / "tree.yaml")
    again = load_tree(path)
    assert again == tree
    assert again.fingerprint() == tree.fingerprint()
    assert yaml.safe_load(path.read_text())["domains"]["Cooking"]["Baking"] == [
        "Bread",
        "Cakes",
        "Pastry",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\n", "must be a mapping with a 'domains' key"),
        ("domains: {A: {B: []}}\n", "needs a non-empty list of leaf tags"),
        ("domains: {A: []}\n", "needs a mapping of sub-domains"),
        ("domains: {A: {B: [x, X]}}\n", "repeat"),
        ("domains: {A: {B: [x, 3]}}\n", "non-empty one-line string"),
        ("domains: {A: {B: [x]\n", "invalid YAML"),
    ],
)
def test_bad_trees_fail_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SeedDataError, match=message) as info:
        load_tree(path)
    assert "\n" not in str(info.value)


def test_missing_tree_names_the_fix() -> None:
    with pytest.raises(SeedDataError, match="use 'default' or a path"):
        load_tree("/nonexistent/tree.yaml")


# ------------------------------------------------------------------ editing


def test_add_rejects_duplicates_and_existing_tags() -> None:
    tree = small_tree()
    accepted, rejected = tree.add(
        ["Science", "Physics"],
        [
            "Thermodynamics",
            " optics ",
            "- Acoustics",
            "Thermodynamics.",
            "",
            "x" * 80,
            "Piano",
            "Acoustics",
        ],
    )
    assert accepted == ["Thermodynamics", "Acoustics"]
    assert set(rejected) == {" optics ", "Thermodynamics.", "", "x" * 80, "Piano", "Acoustics"}
    assert tree.domains["Science"]["Physics"] == [
        "Optics",
        "Gravity",
        "Thermodynamics",
        "Acoustics",
    ]
    tree.validate()


def test_new_sub_domains_without_leaves_are_pruned() -> None:
    tree = small_tree()
    accepted, _ = tree.add(["Music"], ["Composition", "theory"])
    assert accepted == ["Composition"]
    with pytest.raises(SeedDataError):
        tree.validate()
    assert tree.prune_empty() == [("Music", "Composition")]
    tree.validate()


def test_normalize_tag() -> None:
    assert normalize_tag("  Machine   Learning. ") == normalize_tag("machine learning")


# ------------------------------------------------------------------ sampling


def test_stratified_sampling_covers_every_root_and_task_type_evenly() -> None:
    tree = load_tree("default")
    n_roots, n_tasks = len(tree.roots), len(TASK_TYPES)
    items = stratified_items(tree, 2 * n_roots * n_tasks, seed=3)
    assert set(Counter(i["root_domain"] for i in items).values()) == {2 * n_tasks}
    assert set(Counter(i["task_type"] for i in items).values()) == {2 * n_roots}
    # every (root, task type) cell is filled the same number of times
    assert set(Counter((i["root_domain"], i["task_type"]) for i in items).values()) == {2}
    assert all(i["tag_path"] == [i["root_domain"], i["sub_domain"], i["tag"]] for i in items)
    assert [i["sample_index"] for i in items] == list(range(len(items)))


@pytest.mark.parametrize("n", [1, 7, 40, 100, 333])
def test_any_size_is_balanced_to_within_one(n: int) -> None:
    tree = load_tree("default")
    items = stratified_items(tree, n, seed=0)
    assert len(items) == n
    roots = Counter(i["root_domain"] for i in items)
    tasks = Counter(i["task_type"] for i in items)
    assert max(roots.values()) - min(roots.values()) <= 1
    assert max(tasks.values()) - min(tasks.values()) <= 1
    assert len(tasks) == min(n, len(TASK_TYPES))
    assert len(roots) == min(n, len(tree.roots))


def test_cells_fill_evenly_when_root_and_task_counts_share_a_factor() -> None:
    # 14 roots and 7 task types: without the per-block shift only 1/7 of the cells would be reached
    tree = KnowledgeTree({f"R{i}": {"S": ["a", "b"]} for i in range(14)})
    items = stratified_items(tree, 14 * 7, seed=1)
    assert set(Counter((i["root_domain"], i["task_type"]) for i in items).values()) == {1}


def test_sampling_is_seeded_and_reproducible() -> None:
    tree = load_tree("default")
    first = stratified_items(tree, 60, seed=11)
    assert first == stratified_items(tree, 60, seed=11)
    assert first != stratified_items(tree, 60, seed=12)


def test_leaves_of_a_root_do_not_repeat_before_they_run_out() -> None:
    tree = small_tree()
    items = stratified_items(tree, 3 * 3, seed=0, task_types=["Domain QA"])
    baking = [i["tag"] for i in items if i["root_domain"] == "Cooking"]
    assert sorted(baking) == ["Bread", "Cakes", "Pastry"]
    science = [i["sub_domain"] for i in items if i["root_domain"] == "Science"]
    assert set(science[:2]) == {"Physics", "Biology"}  # sub-domains alternate first


def test_generator_step_yields_batches_with_tree_id() -> None:
    step = SampleKnowledgeTasks(
        name="sample",
        num_items=10,
        seed=0,
        batch_size=4,
        root_domains=["Physics", "Music"],
        task_types=["View", "Creation"],
    )
    step.load()
    batches = list(step.process())
    assert [len(b) for b, _ in batches] == [4, 4, 2]
    assert [last for _, last in batches] == [False, False, True]
    rows = [r for b, _ in batches for r in b]
    assert {r["root_domain"] for r in rows} == {"Physics", "Music"}
    assert Counter(r["task_type"] for r in rows) == {"View": 5, "Creation": 5}
    assert {r["knowledge_tree"] for r in rows} == {load_tree().fingerprint()}


def test_generator_step_rejects_unknown_names() -> None:
    with pytest.raises(SeedDataError, match="not in knowledge tree"):
        SampleKnowledgeTasks(name="s", root_domains=["Alchemy"]).load_tree()
    with pytest.raises(SeedDataError, match="unknown task type"):
        SampleKnowledgeTasks(name="s", task_types=["Poetry Slam"]).load_tree()


# ------------------------------------------------------------------ proportional sampling


def test_proportional_sampling_gives_each_root_its_share_of_the_leaves() -> None:
    tree = load_tree("default")
    leaves = tree.counts()["leaf_tags"]
    n = 3000
    items = proportional_items(tree, n, seed=5)
    roots = Counter(i["root_domain"] for i in items)
    for root in tree.roots:  # largest remainder: within one of the exact share
        assert abs(roots[root] - n * len(tree.leaf_paths(root)) / leaves) < 1
    # a prefix is proportional too (roots interleaved by even spacing), not root after root
    prefix = Counter(i["root_domain"] for i in items[:500])
    for root in tree.roots:
        assert abs(prefix[root] - 500 * len(tree.leaf_paths(root)) / leaves) <= 2
    tasks = Counter(i["task_type"] for i in items)
    assert max(tasks.values()) - min(tasks.values()) <= 1 and len(tasks) == len(TASK_TYPES)
    assert [i["sample_index"] for i in items] == list(range(n))


def test_proportional_sampling_draws_every_leaf_equally_often() -> None:
    tree = load_tree("default")
    leaves = tree.counts()["leaf_tags"]
    per_leaf = Counter(tuple(i["tag_path"]) for i in proportional_items(tree, 3 * leaves, seed=2))
    assert set(per_leaf.values()) == {3} and len(per_leaf) == leaves
    # a smaller draw repeats no leaf and spreads over many sub-domains
    few = proportional_items(tree, 200, seed=2)
    assert len({tuple(i["tag_path"]) for i in few}) == 200


def test_proportional_and_per_root_differ_where_roots_differ_in_size() -> None:
    tree = KnowledgeTree({"Big": {"S": [f"b{i}" for i in range(9)]}, "Small": {"S": ["s"]}})
    big = Counter(i["root_domain"] for i in sample_items(tree, 100, seed=0))
    assert big == {"Big": 90, "Small": 10}
    equal = Counter(i["root_domain"] for i in sample_items(tree, 100, sampling="per_root"))
    assert equal == {"Big": 50, "Small": 50}
    with pytest.raises(ValueError, match="tag_sampling"):
        sample_items(tree, 3, sampling="equal")


def test_proportional_sampling_is_seeded() -> None:
    tree = load_tree("default")
    assert proportional_items(tree, 80, seed=4) == proportional_items(tree, 80, seed=4)
    assert proportional_items(tree, 80, seed=4) != proportional_items(tree, 80, seed=5)


# ------------------------------------------------------------------ tag fraction


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_tag_fraction_keeps_that_share_of_the_leaves(fraction: float) -> None:
    tree = load_tree("default")
    subset = tag_subset(tree, fraction, seed=0)
    assert subset.counts()["leaf_tags"] == round(fraction * 1028)
    assert set(subset.leaf_paths()) <= set(tree.leaf_paths())
    subset.validate()  # no empty sub-domain or root left behind
    items = proportional_items(subset, 400, seed=0)
    assert {tuple(i["tag_path"]) for i in items} <= set(subset.leaf_paths())


def test_tag_fraction_is_deterministic_nested_and_seeded() -> None:
    tree = load_tree("default")
    quarter = set(tag_subset(tree, 0.25, seed=0).leaf_paths())
    assert quarter == set(tag_subset(load_tree("default"), 0.25, seed=0).leaf_paths())
    assert quarter <= set(tag_subset(tree, 0.5, seed=0).leaf_paths())
    assert quarter != set(tag_subset(tree, 0.25, seed=1).leaf_paths())
    # pinned: the subset is a hash of seed and path, the same on every run and machine
    assert tag_subset(tree, 0.01, seed=0).leaf_paths()[:1] == [PINNED_FIRST_LEAF]
    with pytest.raises(ValueError, match="tag_fraction"):
        tag_subset(tree, 0, seed=0)


def test_generator_step_draws_from_the_fraction_and_reports_it() -> None:
    step = SampleKnowledgeTasks(name="s", num_items=30, tag_fraction=0.25, seed=3, batch_size=50)
    rows = [r for batch, _ in step.process() for r in batch]
    allowed = set(tag_subset(load_tree(), 0.25, seed=3).leaf_paths())
    assert {tuple(r["tag_path"]) for r in rows} <= allowed
    assert rows[0]["knowledge_tree_stats"] == {
        "base_leaf_tags": 1028, "leaf_tags": 1028, "added_tags": 0, "rejected_tags": 0,
        "failed_calls": 0, "sampled_leaf_tags": 257,
    }  # fmt: skip


# ------------------------------------------------------------------ expansion


def _expand_task(**kwargs) -> ExpandKnowledgeTree:
    return ExpandKnowledgeTree(name="expand", llm=load_llm("builtin:tiny-random"), **kwargs)


@pytest.mark.parametrize(
    ("raw", "tags", "error"),
    [
        ('{"tags": ["Acoustics", "Fluid dynamics"]}', ["Acoustics", "Fluid dynamics"], None),
        ('```json\n{"tags": ["Acoustics"]}\n```', ["Acoustics"], None),
        ('{"tags": ["Acoustics", "Fluid dyn', None, "truncated JSON"),
        ("Acoustics, Fluid dynamics", None, "not JSON"),
        ('{"tags": []}', None, "schema: tags"),
        ('{"tags": ["' + "x" * 70 + '"]}', None, "schema: tags.0"),
        ('{"names": ["Acoustics"]}', None, "schema: tags"),
    ],
)
def test_expansion_parser(raw: str, tags: list[str] | None, error: str | None) -> None:
    out = _expand_task().format_output(
        raw, {"node_path": ["Science", "Physics"], "existing_children": []}
    )
    assert out["new_tags"] == tags
    if error is None:
        assert out["expand_error"] is None and out["expand_raw"] is None
    else:
        assert out["expand_error"].startswith(error)
        assert out["expand_raw"] == raw
    assert out["expand_prompt"].startswith("condor_expand_tree.jinja2@")


def test_expansion_prompt_lists_node_and_existing_children() -> None:
    chat, schema = _expand_task(num_new=5).format_input(
        {"node_path": ["Science", "Physics"], "existing_children": ["Optics"]}
    )
    text = chat[-1]["content"]
    assert text.rstrip().endswith("New specific leaf topics wanted: 5")
    assert "Node: Science > Physics" in text and "Existing children: Optics" in text
    assert schema["schema"]["properties"]["tags"]["maxItems"] == 12


def test_expand_tree_with_a_schema_forced_model_keeps_the_tree_valid() -> None:
    tree = small_tree()
    before = tree.counts()["leaf_tags"]
    llm = load_llm("builtin:tiny-random", max_new_tokens=200, temperature=0.7, seed=0)
    tree, log = expand_tree(
        tree, llm, level="leaves", nodes=[("Science", "Physics"), ("Cooking", "Baking")], num_new=3
    )
    assert [row["node_path"] for row in log] == [["Science", "Physics"], ["Cooking", "Baking"]]
    added = sum(len(row["accepted"]) for row in log)
    assert tree.counts()["leaf_tags"] == before + added
    for row in log:  # every node either added something, rejected something, or recorded why not
        assert row["accepted"] or row["rejected"] or row["error"]
    tree.validate()
    assert (
        len({normalize_tag(leaf) for _, _, leaf in tree.leaf_paths()}) == tree.counts()["leaf_tags"]
    )
