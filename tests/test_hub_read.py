"""Reading a written folder back: ``read_hub_folder`` and ``load_dataset(DIR)``.

Both must give the rows and features that were written, for every config, sharded or
not, after ``filter``/``select`` and with zero rows, and ``load_dataset(DIR)`` without
a config must give the default one.
Shared fixtures: tests/hub_fixtures.py; shared data and helpers: tests/hub_helpers.py.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Dataset, load_dataset
from hub_helpers import (
    PIPELINE_YAML,
    SFT_FEATURES,
    WriteFolder,
    assert_same,
    hidden_siblings,
    listing,
    sft_rows,
)

from synthalign.hub import read_hub_folder, validate_hub_folder

pytest_plugins = ("hub_fixtures",)
pytestmark = pytest.mark.usefixtures("loopback_only")


def test_folder_has_hub_layout_and_loads_back_locally(
    write: WriteFolder, datasets_: dict[str, Dataset]
) -> None:
    out = write()

    assert listing(out) == {
        "README.md",
        "pipeline.yaml",
        "synthalign.json",
        "figures/scores.png",
        "data/sft/train-00000-of-00001.parquet",
        "data/preference/train-00000-of-00001.parquet",
    }
    assert (out / "pipeline.yaml").read_text() == PIPELINE_YAML
    assert (out / "figures/scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    validate_hub_folder(out)

    for name, expected in datasets_.items():
        assert_same(load_dataset(str(out), name, split="train"), expected)
    # Without a config name, the default (first) config loads.
    assert_same(load_dataset(str(out), split="train"), datasets_["sft"])

    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["license"] == "apache-2.0"
    assert front["size_categories"] == ["n<1K"]
    assert {"synthetic", "synthalign", "condor"} <= set(front["tags"])
    assert [c["config_name"] for c in front["configs"]] == ["sft", "preference"]
    assert front["configs"][0]["default"] is True
    assert front["configs"][1]["data_files"] == [
        {"split": "train", "path": "data/preference/train-*"}
    ]
    assert [i["splits"][0]["num_examples"] for i in front["dataset_info"]] == [40, 12]

    record = json.loads((out / "synthalign.json").read_text())
    assert record["method"] == "condor" and record["seed"] == 7
    assert record["rows"] == {"sft": {"train": 40}, "preference": {"train": 12}}
    assert "datasets" in record["versions"]

    loaded, info = read_hub_folder(out)
    assert list(loaded) == ["sft", "preference"]
    for name, expected in datasets_.items():
        assert_same(loaded[name], expected)
    assert info == record
    assert not hidden_siblings(out)


def test_default_config_is_marked(write: WriteFolder, datasets_: dict[str, Dataset]) -> None:
    out = write(default_config="preference")
    assert_same(load_dataset(str(out), split="train"), datasets_["preference"])


def test_big_datasets_are_sharded_in_order(write: WriteFolder) -> None:
    dataset = Dataset.from_list(sft_rows(300), features=SFT_FEATURES)
    out = write(datasets={"sft": dataset}, max_shard_bytes=4_000)
    shards = sorted(p.name for p in (out / "data/sft").iterdir())
    assert len(shards) > 2
    assert shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    assert sum(pq.read_metadata(out / "data/sft" / s).num_rows for s in shards) == 300
    validate_hub_folder(out)
    assert_same(load_dataset(str(out), "sft", split="train"), dataset)


def test_selected_and_empty_datasets(write: WriteFolder) -> None:
    """An index mapping (after filter/select) and a zero-row config both write correctly."""
    full = Dataset.from_list(sft_rows(30), features=SFT_FEATURES)
    picked = full.filter(lambda row: row["iteration"] is not None and row["iteration"] % 2 == 0)
    empty = full.select([])
    out = write(datasets={"picked": picked, "empty": empty})
    validate_hub_folder(out)
    loaded, _ = read_hub_folder(out)
    assert_same(loaded["picked"], picked)
    assert len(loaded["empty"]) == 0 and loaded["empty"].features == SFT_FEATURES
