"""Growing the knowledge tree with an LLM: deduplicated, bounded, checkpointed, counted."""

from __future__ import annotations

from pathlib import Path

import yaml

from synthalign.llms import load_llm
from synthalign.steps.knowledge_tree import KnowledgeTree, load_tree, normalize_tag
from synthalign.steps.tree_expansion import (
    ExpandKnowledgeTree,
    GrowKnowledgeTree,
    SampleGrownTree,
    grow_tree,
    grown_tree_file,
    load_grown,
)


def small_tree() -> KnowledgeTree:
    return KnowledgeTree(
        {
            "Science": {"Physics": ["Optics", "Gravity"], "Biology": ["Cells"]},
            "Cooking": {"Baking": ["Bread", "Cakes", "Pastry"]},
        },
        name="small",
    ).validate()


def _task(max_new_tokens: int = 200, num_new: int = 4) -> ExpandKnowledgeTree:
    llm = load_llm("builtin:tiny-random", max_new_tokens=max_new_tokens, temperature=0.7, seed=0)
    task = ExpandKnowledgeTree(
        name="expand", llm=llm, num_new=num_new, add_raw_output=False, add_raw_input=False
    )
    task.load()
    return task


def assert_deduplicated(tree: KnowledgeTree) -> None:
    tree.validate()  # no two siblings share a normalized name
    leaves = [normalize_tag(leaf) for _, _, leaf in tree.leaf_paths()]
    assert len(set(leaves)) == len(leaves)  # and no leaf repeats one elsewhere


def test_growth_on_tiny_random_gives_a_bigger_deduplicated_tree(tmp_path: Path) -> None:
    tree, base = small_tree(), small_tree()
    checkpoint = tmp_path / "grown.partial.yaml"
    tree, counts = grow_tree(tree, _task(), 14, checkpoint=checkpoint)
    leaves = tree.counts()["leaf_tags"]
    assert 6 < leaves <= 14  # grew, never past the target
    assert counts["base_leaf_tags"] == 6 and counts["leaf_tags"] == leaves
    assert counts["added_tags"] == leaves - 6
    assert counts["calls"] >= counts["failed_calls"] and counts["rounds"] >= 1
    assert_deduplicated(tree)
    assert set(base.leaf_paths()) <= set(tree.leaf_paths())  # nothing of the base is lost
    saved, saved_counts = load_grown(checkpoint)  # the checkpoint is the last round's state
    assert saved.domains == tree.domains and saved_counts == counts


def test_unparsable_model_output_is_counted_never_a_crash() -> None:
    # 3 tokens cannot hold a tag list: every call fails to parse; growth stops after the round
    tree, counts = grow_tree(small_tree(), _task(max_new_tokens=3), 20)
    assert tree.domains == small_tree().domains
    assert counts["failed_calls"] == counts["calls"] > 0
    assert counts["added_tags"] == 0 and counts["rounds"] == 1


def test_proposals_that_repeat_the_tree_are_rejected() -> None:
    tree = small_tree()
    accepted, rejected = tree.add(
        ["Science", "Physics"], ["optics ", "Acoustics", "ACOUSTICS", "Cells"]
    )
    assert accepted == ["Acoustics"] and rejected == ["optics ", "ACOUSTICS", "Cells"]
    assert_deduplicated(tree)


def test_grow_step_checkpoints_to_its_file_and_reuses_it(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    small_tree().save(base)
    key = {"llm": "builtin:tiny-random", "max_new_tokens": 200}
    path = grown_tree_file(tmp_path / "cache", str(base), 12, key)
    assert path == grown_tree_file(tmp_path / "cache", str(base), 12, key)  # keyed, stable
    assert path != grown_tree_file(tmp_path / "cache", str(base), 13, key)
    assert path != grown_tree_file(tmp_path / "cache", str(base), 12, {**key, "llm": "other"})

    def step() -> GrowKnowledgeTree:
        llm = load_llm("builtin:tiny-random", max_new_tokens=200, seed=0)
        grow = GrowKnowledgeTree(
            name="grow", llm=llm, base=str(base), expand_to=12, tree_file=str(path), num_new=4
        )
        grow.load()
        return grow

    first = step()
    [(rows, last)] = list(first.process())
    first.unload()
    assert last and rows[0]["tree_file"] == str(path) and path.is_file()
    counts = rows[0]["tree_expansion"]
    grown = load_tree(path)
    assert grown.counts()["leaf_tags"] == counts["leaf_tags"] > 6
    assert grown.name == "small+grown-12"
    assert not path.with_name(f"{path.stem}.partial.yaml").exists()
    assert_deduplicated(grown)

    again = step()  # the file is the checkpoint: reused, no model loaded
    [(rows_again, _)] = list(again.process())
    assert rows_again == rows and again._task is None

    sample = SampleGrownTree(name="sample", num_items=9, input_batch_size=4, seed=1)
    sample.load()
    batches = list(sample.process(rows))
    drawn = [r for batch in batches for r in batch]
    assert [len(b) for b in batches] == [4, 4, 1]
    assert {tuple(r["tag_path"]) for r in drawn} <= set(grown.leaf_paths())
    stats = drawn[0]["knowledge_tree_stats"]
    assert stats["base_leaf_tags"] == 6 and stats["leaf_tags"] == grown.counts()["leaf_tags"]
    assert stats["added_tags"] == counts["added_tags"]
    assert drawn[0]["knowledge_tree"] == grown.fingerprint()
    assert yaml.safe_load(path.read_text())["expansion"] == counts
