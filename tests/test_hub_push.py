"""Pushing folders to the local Hub stand-in and loading them back with ``load_dataset``.

The round trip runs against tests/localhub with the real ``huggingface_hub`` and
``datasets`` clients, so what passes here is what a push to huggingface.co and a
``load_dataset(REPO_ID)`` do, minus the network. Pushes must refuse bad folders and
missing tokens before any request, fail in one line without the token, and leave no
token in any file, log or request.
Shared fixtures: tests/hub_fixtures.py; shared data and helpers: tests/hub_helpers.py.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import requests
from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetNotFoundError
from hub_helpers import (
    PIPELINE_YAML,
    SFT_FEATURES,
    WriteFolder,
    assert_same,
    listing,
    miscount_rows,
    sft_rows,
)
from huggingface_hub import HfApi, HfFileSystem, constants
from huggingface_hub.errors import RepositoryNotFoundError

from synthalign.cards.base import CardContent
from synthalign.errors import OutputError
from synthalign.hub import push_hub_folder

if TYPE_CHECKING:
    from localhub import LocalHub

pytest_plugins = ("hub_fixtures",)
pytestmark = pytest.mark.usefixtures("loopback_only")


def test_local_hub_lists_in_pages_and_serves_byte_ranges(
    monkeypatch: pytest.MonkeyPatch, local_hub: LocalHub, write: WriteFolder
) -> None:
    """The parts of the protocol the round trip does not reach with small repos."""

    repo_id = "synthalign-tests/protocol"
    out = write()
    push_hub_folder(out, repo_id)
    api = HfApi()

    monkeypatch.setattr(local_hub, "page_size", 2)
    seen = len(local_hub.requests)
    assert set(api.list_repo_files(repo_id, repo_type="dataset")) == listing(out) | {
        ".gitattributes"
    }
    assert len(local_hub.requests) - seen > 2, "the listing should have needed several pages"
    (info,) = api.get_paths_info(
        repo_id, ["data/sft/train-00000-of-00001.parquet"], repo_type="dataset", expand=True
    )
    assert info.lfs is not None and info.last_commit is not None

    fs = HfFileSystem(skip_instance_cache=True)
    shard = f"datasets/{repo_id}/data/sft/train-00000-of-00001.parquet"
    local = (out / "data/sft/train-00000-of-00001.parquet").read_bytes()
    with fs.open(shard, "rb", block_size=16) as remote:
        remote.seek(len(local) - 8)
        assert remote.read(8) == local[-8:]  # parquet footer: length + b"PAR1"
    assert pq.read_metadata(fs.open(shard, "rb")).num_rows == 40
    assert fs.glob(f"datasets/{repo_id}/data/*/*.parquet") == [
        f"datasets/{repo_id}/data/preference/train-00000-of-00001.parquet",
        shard,
    ]
    assert local_hub.problems == []


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every log record of every logger at DEBUG, formatted with its arguments."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    names = [
        "",
        "huggingface_hub",
        "datasets",
        "synthalign",
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "urllib3",
        "fsspec",
    ]
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate


def test_push_without_token_fails_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_hub: LocalHub, write: WriteFolder
) -> None:
    out = write()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    seen = len(local_hub.requests)

    with pytest.raises(OutputError) as caught:
        push_hub_folder(out, "synthalign-tests/no-token")
    assert str(caught.value) == "no Hugging Face token: run `hf auth login` or set HF_TOKEN"
    assert len(local_hub.requests) == seen
    assert not local_hub.repo_exists("synthalign-tests/no-token")


def test_push_refuses_an_invalid_folder_before_any_request(
    tmp_path: Path, local_hub: LocalHub, write: WriteFolder
) -> None:
    out = write()
    miscount_rows(out)
    seen = len(local_hub.requests)
    with pytest.raises(OutputError, match="rows"):
        push_hub_folder(out, "synthalign-tests/invalid")
    valid = write(tmp_path / "ok")
    with pytest.raises(OutputError, match="invalid Hub repo id"):
        push_hub_folder(valid, "no-namespace")
    assert len(local_hub.requests) == seen


def test_push_with_a_wrong_token_is_one_line_without_the_token(
    local_hub: LocalHub, write: WriteFolder
) -> None:
    out = write()
    wrong = "hf_wrong" + secrets.token_hex(12)
    with pytest.raises(OutputError) as caught:
        push_hub_folder(out, "synthalign-tests/wrong-token", token=wrong)
    message = str(caught.value)
    assert "HTTP 401" in message and "Invalid credentials" in message
    assert "\n" not in message and wrong not in message
    assert not local_hub.repo_exists("synthalign-tests/wrong-token")


def test_push_to_an_unreachable_hub_is_one_line(
    monkeypatch: pytest.MonkeyPatch, local_hub: LocalHub, write: WriteFolder
) -> None:
    out = write()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(OutputError) as caught:
        push_hub_folder(out, "synthalign-tests/unreachable")
    message = str(caught.value)
    assert message.startswith("cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert "\n" not in message


def test_push_then_load_dataset_from_the_hub(
    local_hub: LocalHub,
    loopback_only: list[str],
    write: WriteFolder,
    datasets_: dict[str, Dataset],
) -> None:
    repo_id = "synthalign-tests/round-trip"
    out = write()
    seen = len(local_hub.requests)

    url = push_hub_folder(out, repo_id)
    assert url == f"{local_hub.endpoint}/datasets/{repo_id}"

    uploads = local_hub.requests[seen:]
    assert any("/info/lfs/objects/batch" in r for r in uploads), "parquet must go through LFS"
    assert sum(r.startswith("PUT /__lfs/upload/") for r in uploads) == 3  # 2 parquet + 1 png
    stored = local_hub.files(repo_id)
    assert set(stored) == listing(out) | {".gitattributes"}
    assert all(stored[p] == (out / p).read_bytes() for p in listing(out))

    for name, expected in datasets_.items():
        assert_same(load_dataset(repo_id, name, split="train"), expected)
    assert_same(load_dataset(repo_id, split="train"), datasets_["sft"])

    raw = requests.get(local_hub.raw_url(repo_id, "pipeline.yaml"), timeout=10)
    assert raw.status_code == 200 and raw.text == PIPELINE_YAML
    assert local_hub.problems == []
    assert loopback_only, "the loopback guard saw no look-up: is it patching the right function?"


def test_repush_replaces_stale_shards(
    local_hub: LocalHub, write: WriteFolder, card: CardContent
) -> None:
    repo_id = "synthalign-tests/repush"
    big = Dataset.from_list(sft_rows(200), features=SFT_FEATURES)
    out = write(datasets={"sft": big}, max_shard_bytes=4_000)
    push_hub_folder(out, repo_id)
    assert sum(p.startswith("data/sft/") for p in local_hub.files(repo_id)) > 1

    small = Dataset.from_list(sft_rows(5, offset=1000), features=SFT_FEATURES)
    no_figures = CardContent(card.metadata, "# second\n")
    out = write(out, {"sft": small}, card=no_figures, overwrite=True)
    push_hub_folder(out, repo_id)
    assert set(local_hub.files(repo_id)) == listing(out) | {".gitattributes"}
    assert_same(load_dataset(repo_id, "sft", split="train"), small)
    assert local_hub.problems == []


def test_private_repo_needs_the_token_to_load(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_hub: LocalHub,
    write: WriteFolder,
    datasets_: dict[str, Dataset],
) -> None:
    repo_id = "synthalign-tests/private"
    out = write()
    push_hub_folder(out, repo_id, private=True)
    assert_same(load_dataset(repo_id, "sft", split="train"), datasets_["sft"])

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises((DatasetNotFoundError, RepositoryNotFoundError)):
        load_dataset(repo_id, "sft", split="train", cache_dir=str(tmp_path / "fresh-cache"))


def test_canary_token_lands_in_no_file_and_no_log(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    all_logs: list[str],
    local_hub: LocalHub,
    write: WriteFolder,
    datasets_: dict[str, Dataset],
    run_info: dict[str, Any],
) -> None:
    canary = f"hf_canary{secrets.token_hex(16)}"
    local_hub.accept_token(canary)
    monkeypatch.setenv("HF_TOKEN", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    repo_id = "synthalign-tests/canary"

    out = write(run_info={**run_info, "hf_token": canary})
    push_hub_folder(out, repo_id)
    push_hub_folder(out, repo_id, token=canary)  # explicit token, second commit is a no-op
    assert_same(load_dataset(repo_id, "sft", split="train"), datasets_["sft"])

    assert all_logs, "logging capture is not working"
    assert not [line for line in all_logs if canary in line]
    captured = capfd.readouterr()
    assert canary not in captured.out and canary not in captured.err
    for root in (out, Path(os.environ["HF_HOME"])):
        for path in root.rglob("*"):
            if path.is_file():
                assert canary.encode() not in path.read_bytes(), f"canary in {path}"
    assert not any(canary.encode() in data for data in local_hub.stored_bytes())
    assert not any(canary in line for line in local_hub.requests)
