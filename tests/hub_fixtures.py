"""Fixtures shared by the Hub-folder tests (tests/test_hub_*.py), as a pytest plugin.

The test modules load this with ``pytest_plugins = ("hub_fixtures",)`` rather than
importing the fixtures, so tests can name them as parameters without shadowing an
import. Nothing here is autouse: a plugin's autouse fixture would apply to every test
of the session, so the modules opt in to :func:`loopback_only` with ``pytestmark``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from hub_helpers import (
    PIPELINE_YAML,
    PREF_FEATURES,
    SFT_FEATURES,
    WriteFolder,
    pref_rows,
    sft_rows,
)

from synthalign.cards.base import CardContent, base_metadata, figure_png, new_figure, versions
from synthalign.hub import write_hub_folder

__all__ = [
    "card",
    "datasets_",
    "loopback_only",
    "pipeline_yaml",
    "run_info",
    "scores_png",
    "write",
]


@pytest.fixture
def datasets_() -> dict[str, Dataset]:
    """Two configs with nested features, as a method's run produces them."""
    return {
        "sft": Dataset.from_list(sft_rows(40), features=SFT_FEATURES),
        "preference": Dataset.from_list(pref_rows(12), features=PREF_FEATURES),
    }


@pytest.fixture
def card(scores_png: bytes) -> CardContent:
    """A card with one figure, so figures/ is part of every folder."""
    return CardContent(
        metadata=base_metadata("condor", 40, ["sft"], ["text-generation"]),
        body="# Test card\n\n![scores](figures/scores.png)\n",
        figures={"scores.png": scores_png},
    )


@pytest.fixture(scope="module")
def scores_png() -> bytes:
    """Rendered once: drawing is the slow part of building a card."""
    fig = new_figure(3, 2)
    fig.add_subplot().bar(["a", "b"], [3, 5])
    return figure_png(fig)


@pytest.fixture
def pipeline_yaml(tmp_path: Path) -> Path:
    """A distilabel config file to copy into the folder."""
    path = tmp_path / "pipeline-src.yaml"
    path.write_text(PIPELINE_YAML)
    return path


@pytest.fixture
def run_info() -> dict[str, Any]:
    """A run record as a method writes it."""
    return {
        "method": "condor",
        "recipe": {"seed": 7, "num_questions": 40},
        "seed": 7,
        "versions": versions(),
    }


@pytest.fixture
def write(
    tmp_path: Path,
    datasets_: dict[str, Dataset],
    card: CardContent,
    pipeline_yaml: Path,
    run_info: dict[str, Any],
) -> WriteFolder:
    """:func:`write_hub_folder` with the fixtures above as its defaults, into ``tmp_path/out``.

    A test names only what it changes: ``write()``, ``write(out, {"sft": rows},
    overwrite=True)``, ``write(card=broken)``.
    """

    def write_(
        out: Path | None = None, datasets: dict[str, Dataset] | None = None, **changes: Any
    ) -> Path:
        settings = {"card": card, "pipeline_yaml": pipeline_yaml, "run_info": run_info, **changes}
        return write_hub_folder(
            tmp_path / "out" if out is None else out,
            datasets_ if datasets is None else datasets,
            **settings,
        )

    return write_


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse, and afterwards fail the test for, any name look-up off this machine.

    Libraries swallow errors from optional look-ups (the dataset viewer, download
    counters), so the record is checked at teardown as well as refused on the spot.
    """
    hosts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def is_loopback(name: str) -> bool:
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return name == "localhost"

    def guarded_getaddrinfo(host: str | bytes | None, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        hosts.append(name)
        if not is_loopback(name):
            raise OSError(f"test_hub: look-up of {name!r} refused, tests stay on loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield hosts
    outside = sorted({h for h in hosts if not is_loopback(h)})
    assert not outside, f"the test tried to reach {outside}"
