"""Data and helpers shared by the Hub-folder tests (tests/test_hub_*.py).

Imported by name. The fixtures built from this data live in tests/hub_fixtures.py,
which the test modules load as a pytest plugin instead. Helpers here are not
assertion-rewritten by pytest (only test modules, conftest files and plugins are), so
their checks say what differs themselves.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value

__all__ = [
    "PIPELINE_YAML",
    "PREF_FEATURES",
    "SFT_FEATURES",
    "WriteFolder",
    "assert_same",
    "hidden_siblings",
    "listing",
    "miscount_rows",
    "pref_rows",
    "sft_rows",
]

# The ``write`` fixture (tests/hub_fixtures.py): write_hub_folder with the fixtures as defaults.
WriteFolder = Callable[..., Path]

MESSAGE = {"role": Value("string"), "content": Value("string")}
SFT_FEATURES = Features(
    {
        "messages": List(MESSAGE),
        "score": Value("float32"),
        "critique": Value("string"),
        "tags": List(Value("string")),
        "iteration": Value("int64"),
        "meta": {"model": Value("string"), "temperature": Value("float64")},
    }
)
PREF_FEATURES = Features(
    {
        "prompt": List(MESSAGE),
        "chosen": List(MESSAGE),
        "rejected": List(MESSAGE),
        "tau": Value("float64"),
    }
)
PIPELINE_YAML = textwrap.dedent(
    """\
    distilabel:
      version: 1.5.3
    pipeline:
      name: synthalign-test
      description: a stand-in config for hub tests
      steps: []
      connections: []
    """
)


def sft_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """SFT rows with the awkward parts real data has: nulls, unicode, pipes, newlines."""
    rows = []
    for i in range(offset, offset + n):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"question {i} — ünïcode ✓"},
                    {"role": "assistant", "content": None if i % 5 == 0 else f"answer {i}"},
                ],
                "score": None if i % 7 == 0 else i / 4,
                "critique": None if i % 3 == 0 else f"critique {i}\nwith | pipe",
                "tags": [] if i % 2 else ["a", f"t{i}"],
                "iteration": None if i % 11 == 0 else i,
                "meta": {"model": "builtin:tiny-random", "temperature": None if i % 2 else 0.7},
            }
        )
    return rows


def pref_rows(n: int) -> list[dict[str, Any]]:
    """Preference rows, one with a null rejected answer."""
    return [
        {
            "prompt": [{"role": "user", "content": f"p{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": None if i == 0 else f"bad {i}"}],
            "tau": i / n,
        }
        for i in range(n)
    ]


def assert_same(loaded: Dataset, expected: Dataset) -> None:
    """Same features and same rows, in order; a failure names the first difference."""
    assert loaded.features == expected.features, (
        f"features differ: {loaded.features} != {expected.features}"
    )
    got, want = loaded.to_list(), expected.to_list()
    assert len(got) == len(want), f"{len(got)} rows loaded, {len(want)} expected"
    first = next((i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w), None)
    assert first is None, f"row {first} differs: {got[first]} != {want[first]}"


def listing(folder: Path) -> set[str]:
    """Every file under ``folder``, as relative POSIX paths (what a repo would hold)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def hidden_siblings(folder: Path) -> list[Path]:
    """Staging and trash folders of ``folder``: a finished write leaves none."""
    return [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def miscount_rows(out: Path) -> None:
    """Break a folder the way an interrupted copy does: the record claims one more row."""
    record = json.loads((out / "synthalign.json").read_text())
    record["rows"]["sft"]["train"] += 1
    (out / "synthalign.json").write_text(json.dumps(record))
