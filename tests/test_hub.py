"""Hub-layout folders: writing, validation, and the push / load round trip.

The round trip runs against the local Hub stand-in (tests/hub_server.py) with the real
``huggingface_hub`` and ``datasets`` clients, so what passes here is what a push to
huggingface.co and a ``load_dataset(REPO_ID)`` do, minus the network.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import requests
import yaml
from datasets import Dataset, Features, List, Value, load_dataset
from pydantic import SecretStr

from synthalign.cards.base import (
    CardContent,
    base_metadata,
    counts_table,
    figure_png,
    markdown_table,
    new_figure,
    render_readme,
    size_category,
    versions,
)
from synthalign.errors import OutputError
from synthalign.hub import (
    push_hub_folder,
    read_hub_folder,
    update_card,
    validate_hub_folder,
    write_hub_folder,
)

if TYPE_CHECKING:
    from hub_server import LocalHub

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


def _sft_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
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


def _pref_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": f"p{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": None if i == 0 else f"bad {i}"}],
            "tau": i / n,
        }
        for i in range(n)
    ]


@pytest.fixture
def datasets_() -> dict[str, Dataset]:
    return {
        "sft": Dataset.from_list(_sft_rows(40), features=SFT_FEATURES),
        "preference": Dataset.from_list(_pref_rows(12), features=PREF_FEATURES),
    }


@pytest.fixture
def card(scores_png: bytes) -> CardContent:
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
    path = tmp_path / "pipeline-src.yaml"
    path.write_text(PIPELINE_YAML)
    return path


@pytest.fixture
def run_info() -> dict[str, Any]:
    return {
        "method": "condor",
        "recipe": {"seed": 7, "num_questions": 40},
        "seed": 7,
        "versions": versions(),
    }


def _write(out: Path, datasets_: dict[str, Dataset], card: CardContent, pipeline: Path | None,
           run_info: dict[str, Any], **kwargs: Any) -> Path:  # fmt: skip
    return write_hub_folder(
        out, datasets_, card, pipeline_yaml=pipeline, run_info=run_info, **kwargs
    )


def _assert_same(loaded: Dataset, expected: Dataset) -> None:
    assert loaded.features == expected.features
    assert loaded.to_list() == expected.to_list()


def _listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _hidden_siblings(folder: Path) -> list[Path]:
    return [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> Iterator[list[str]]:
    """Refuse, and afterwards fail the test for, any name look-up off this machine.

    Libraries swallow errors from optional look-ups (the dataset viewer, download
    counters), so the record is checked at teardown as well as refused on the spot.
    """
    import ipaddress
    import socket

    hosts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def is_loopback(name: str) -> bool:
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return name == "localhost"

    def guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else str(host)
        hosts.append(name)
        if not is_loopback(name):
            raise OSError(f"test_hub: look-up of {name!r} refused, tests stay on loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield hosts
    outside = sorted({h for h in hosts if not is_loopback(h)})
    assert not outside, f"the test tried to reach {outside}"


# ---------------------------------------------------------------------- writing


def test_folder_has_hub_layout_and_loads_back_locally(
    tmp_path, datasets_, card, pipeline_yaml, run_info
) -> None:
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)

    assert _listing(out) == {
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
        _assert_same(load_dataset(str(out), name, split="train"), expected)
    # Without a config name, the default (first) config loads.
    _assert_same(load_dataset(str(out), split="train"), datasets_["sft"])

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
        _assert_same(loaded[name], expected)
    assert info == record
    assert not _hidden_siblings(out)


def test_default_config_is_marked(tmp_path, datasets_, card, pipeline_yaml, run_info) -> None:
    out = _write(
        tmp_path / "out", datasets_, card, pipeline_yaml, run_info, default_config="preference"
    )
    _assert_same(load_dataset(str(out), split="train"), datasets_["preference"])


def test_big_datasets_are_sharded_in_order(tmp_path, card, pipeline_yaml, run_info) -> None:
    dataset = Dataset.from_list(_sft_rows(300), features=SFT_FEATURES)
    out = _write(
        tmp_path / "out", {"sft": dataset}, card, pipeline_yaml, run_info, max_shard_bytes=4_000
    )
    shards = sorted(p.name for p in (out / "data/sft").iterdir())
    assert len(shards) > 2
    assert shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    assert sum(pq.read_metadata(out / "data/sft" / s).num_rows for s in shards) == 300
    validate_hub_folder(out)
    _assert_same(load_dataset(str(out), "sft", split="train"), dataset)


def test_selected_and_empty_datasets(tmp_path, card, pipeline_yaml, run_info) -> None:
    """An index mapping (after filter/select) and a zero-row config both write correctly."""
    full = Dataset.from_list(_sft_rows(30), features=SFT_FEATURES)
    picked = full.filter(lambda row: row["iteration"] is not None and row["iteration"] % 2 == 0)
    empty = full.select([])
    out = _write(
        tmp_path / "out", {"picked": picked, "empty": empty}, card, pipeline_yaml, run_info
    )
    validate_hub_folder(out)
    loaded, _ = read_hub_folder(out)
    _assert_same(loaded["picked"], picked)
    assert len(loaded["empty"]) == 0 and loaded["empty"].features == SFT_FEATURES


def test_existing_folder_is_refused_without_overwrite(
    tmp_path, datasets_, card, pipeline_yaml, run_info
) -> None:
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    before = {p: (out / p).read_bytes() for p in _listing(out)}

    with pytest.raises(OutputError) as caught:
        _write(out, {"sft": datasets_["sft"].select(range(3))}, card, pipeline_yaml, run_info)
    message = str(caught.value)
    assert "\n" not in message and "--overwrite" in message and str(out) in message
    assert {p: (out / p).read_bytes() for p in _listing(out)} == before

    smaller = datasets_["sft"].select(range(3))
    _write(out, {"sft": smaller}, card, pipeline_yaml, run_info, overwrite=True)
    assert not (out / "data/preference").exists()
    _assert_same(load_dataset(str(out), "sft", split="train"), smaller)
    assert not _hidden_siblings(out)


def test_overwrite_never_replaces_a_foreign_folder(
    tmp_path, datasets_, card, pipeline_yaml, run_info
) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a synthalign output folder"):
        _write(precious, datasets_, card, pipeline_yaml, run_info, overwrite=True)
    assert (precious / "chapter1.tex").read_text() == "years of work"
    assert _listing(precious) == {"chapter1.tex"}


def test_failure_midway_leaves_nothing(tmp_path, datasets_, card, pipeline_yaml, run_info) -> None:
    broken = CardContent(card.metadata, card.body, {"scores.png": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(OutputError, match="PNG bytes"):
        _write(tmp_path / "out", datasets_, broken, pipeline_yaml, run_info)
    assert not (tmp_path / "out").exists()
    assert not _hidden_siblings(tmp_path / "out")

    # Replacing an existing folder: a failure keeps the old one intact.
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    before = {p: (out / p).read_bytes() for p in _listing(out)}
    with pytest.raises(OutputError):
        _write(out, datasets_, broken, pipeline_yaml, run_info, overwrite=True)
    assert {p: (out / p).read_bytes() for p in _listing(out)} == before
    assert not _hidden_siblings(out)


def test_killed_writer_leaves_no_complete_looking_folder(tmp_path) -> None:
    """SIGKILL just before the run record is written: the target never appears."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time
        from datasets import Dataset
        import synthalign.hub as hub
        from synthalign.cards.base import CardContent

        real_write_text = hub._write_text

        def stall_before_run_record(path, text):
            if path.name == hub.RUN_INFO_FILENAME:
                print("STALLED", flush=True)
                time.sleep(120)
            real_write_text(path, text)

        hub._write_text = stall_before_run_record
        hub.write_hub_folder(
            {str(out)!r}, {{"sft": Dataset.from_dict({{"x": [1, 2, 3]}})}},
            CardContent({{}}, "body"), pipeline_yaml=None, run_info={{"method": "t"}},
        )
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STALLED"
        partial = _hidden_siblings(out)
        assert len(partial) == 1 and (partial[0] / "data/sft").is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    with pytest.raises(OutputError, match="not a folder"):
        validate_hub_folder(out)
    # The leftover staging folder does not block the next run.
    write_hub_folder(
        out, {"sft": Dataset.from_dict({"x": [1]})}, CardContent({}, "b"), pipeline_yaml=None,
        run_info={},
    )  # fmt: skip
    assert (out / "synthalign.json").is_file()


def test_bad_names_are_refused_before_writing(tmp_path, datasets_, card, pipeline_yaml) -> None:
    with pytest.raises(OutputError, match="invalid config name"):
        write_hub_folder(
            tmp_path / "out", {"../evil": datasets_["sft"]}, card, pipeline_yaml=pipeline_yaml,
            run_info={},
        )  # fmt: skip
    with pytest.raises(OutputError, match="not found"):
        write_hub_folder(
            tmp_path / "out", datasets_, card, pipeline_yaml=tmp_path / "missing.yaml", run_info={}
        )
    with pytest.raises(OutputError, match="default config"):
        write_hub_folder(
            tmp_path / "out", datasets_, card, pipeline_yaml=pipeline_yaml, run_info={},
            default_config="nope",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_secrets_are_scrubbed_from_run_record_and_config(
    tmp_path, monkeypatch, datasets_, card
) -> None:
    canary = f"canary-{secrets.token_hex(12)}"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    hf_like = "hf_" + "A1b2C3d4" * 4
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE_YAML + f"note: base_url=http://x key {canary}\n")
    run_info = {
        "method": "rdpo",
        "recipe": {
            "llm": {"spec": "openai:http://h/v1#m", "api_key": "typed-in-the-recipe-123"},
            "generation": {"max_new_tokens": 64, "eos_token": "</s>"},
            "notes": f"the key was {canary} and {hf_like}",
        },
        "auth": {"token": "short"},
        "secret_str": SecretStr("shh-very-secret"),
        "headers": ["Authorization: Bearer abcdefghijklmnop"],
        "path": tmp_path,
    }
    out = _write(tmp_path / "out", datasets_, card, pipeline, run_info)
    record = json.loads((out / "synthalign.json").read_text())
    assert record["recipe"]["llm"] == {"spec": "openai:http://h/v1#m", "api_key": "<redacted>"}
    assert record["recipe"]["generation"] == {"max_new_tokens": 64, "eos_token": "</s>"}
    assert record["auth"]["token"] == "<redacted>"
    assert record["secret_str"] == "<redacted>"
    assert record["path"] == str(tmp_path)
    for path in _listing(out):
        data = (out / path).read_bytes()
        for leaked in (
            canary,
            hf_like,
            "typed-in-the-recipe-123",
            "shh-very-secret",
            "abcdefghijklmnop",
        ):
            assert leaked.encode() not in data, f"{leaked} leaked into {path}"
    assert "<redacted>" in (out / "pipeline.yaml").read_text()


# ---------------------------------------------------------------------- validation


def _break_readme_configs(out: Path) -> None:
    text = (out / "README.md").read_text()
    (out / "README.md").write_text(text.replace("configs:", "old_configs:", 1))


def _point_config_at_nothing(out: Path) -> None:
    text = (out / "README.md").read_text()
    (out / "README.md").write_text(text.replace("data/sft/train-*", "data/sft/missing-*", 1))


def _add_stray_shard(out: Path) -> None:
    (out / "data/extra").mkdir()
    (out / "data/extra/train-00000-of-00001.parquet").write_bytes(
        (out / "data/sft/train-00000-of-00001.parquet").read_bytes()
    )


def _miscount_rows(out: Path) -> None:
    record = json.loads((out / "synthalign.json").read_text())
    record["rows"]["sft"]["train"] += 1
    (out / "synthalign.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda out: (out / "README.md").unlink(), "no README.md"),
        (lambda out: (out / "pipeline.yaml").unlink(), "no pipeline.yaml"),
        (lambda out: (out / "synthalign.json").unlink(), "interrupted"),
        (lambda out: (out / "synthalign.json").write_text("{"), "not valid JSON"),
        (lambda out: (out / "README.md").write_text("# no front matter\n"), "no YAML front matter"),
        (lambda out: (out / "README.md").write_text("---\nconfigs: [\n---\n"), "not valid YAML"),
        (_break_readme_configs, "declares no `configs:`"),
        (_point_config_at_nothing, "matches no file"),
        (_add_stray_shard, "belongs to no config"),
        (_miscount_rows, "has 40 rows in its parquet files but synthalign.json records 41"),
        (lambda out: (out / "pipeline.yaml").write_text("- a list\n"), "not a distilabel pipeline"),
        (
            lambda out: (out / "data/sft/train-00000-of-00001.parquet").write_bytes(b"junk"),
            "not a readable parquet file",
        ),
    ],
    ids=[
        "no-card",
        "no-pipeline",
        "no-run-record",
        "bad-run-record",
        "no-front-matter",
        "bad-yaml",
        "no-configs",
        "missing-data",
        "stray-shard",
        "row-count",
        "pipeline-not-mapping",
        "corrupt-parquet",
    ],
)
def test_validation_failures_are_one_line(
    tmp_path, datasets_, card, pipeline_yaml, run_info, breakage, expected
) -> None:
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    breakage(out)
    with pytest.raises(OutputError) as caught:
        validate_hub_folder(out)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_update_card_rewrites_card_and_figures_only(
    tmp_path, datasets_, card, pipeline_yaml, run_info
) -> None:
    out = _write(
        tmp_path / "out", datasets_, card, pipeline_yaml, run_info, default_config="preference"
    )
    data_before = {p: (out / p).read_bytes() for p in _listing(out) if p.startswith("data/")}
    new_card = CardContent(
        {"license": "mit"}, "# Rewritten\n", {"other.png": figure_png(new_figure())}
    )
    update_card(out, new_card)
    assert (out / "README.md").read_text().endswith("# Rewritten\n")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["other.png"]
    assert {
        p: (out / p).read_bytes() for p in _listing(out) if p.startswith("data/")
    } == data_before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    validate_hub_folder(out)
    # The default config survives a card rewrite.
    _assert_same(load_dataset(str(out), split="train"), datasets_["preference"])


# ---------------------------------------------------------------------- pushing


def test_local_hub_lists_in_pages_and_serves_byte_ranges(
    tmp_path, monkeypatch, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    """The parts of the protocol the round trip does not reach with small repos."""
    import hub_server
    from huggingface_hub import HfApi, HfFileSystem

    repo_id = "synthalign-tests/protocol"
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    push_hub_folder(out, repo_id)
    api = HfApi()

    monkeypatch.setattr(hub_server, "_PAGE_SIZE", 2)
    seen = len(local_hub.requests)
    assert set(api.list_repo_files(repo_id, repo_type="dataset")) == _listing(out) | {
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
    tmp_path, monkeypatch, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    from huggingface_hub import constants

    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
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
    tmp_path, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    _miscount_rows(out)
    seen = len(local_hub.requests)
    with pytest.raises(OutputError, match="rows"):
        push_hub_folder(out, "synthalign-tests/invalid")
    valid = _write(tmp_path / "ok", datasets_, card, pipeline_yaml, run_info)
    with pytest.raises(OutputError, match="invalid Hub repo id"):
        push_hub_folder(valid, "no-namespace")
    assert len(local_hub.requests) == seen


def test_push_with_a_wrong_token_is_one_line_without_the_token(
    tmp_path, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    wrong = "hf_wrong" + secrets.token_hex(12)
    with pytest.raises(OutputError) as caught:
        push_hub_folder(out, "synthalign-tests/wrong-token", token=wrong)
    message = str(caught.value)
    assert "HTTP 401" in message and "Invalid credentials" in message
    assert "\n" not in message and wrong not in message
    assert not local_hub.repo_exists("synthalign-tests/wrong-token")


def test_push_to_an_unreachable_hub_is_one_line(
    tmp_path, monkeypatch, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    from huggingface_hub import constants

    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(OutputError) as caught:
        push_hub_folder(out, "synthalign-tests/unreachable")
    message = str(caught.value)
    assert message.startswith("cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert "\n" not in message


def test_push_then_load_dataset_from_the_hub(
    tmp_path, local_hub: LocalHub, loopback_only, datasets_, card, pipeline_yaml, run_info
) -> None:
    repo_id = "synthalign-tests/round-trip"
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    seen = len(local_hub.requests)

    url = push_hub_folder(out, repo_id)
    assert url == f"{local_hub.endpoint}/datasets/{repo_id}"

    uploads = local_hub.requests[seen:]
    assert any("/info/lfs/objects/batch" in r for r in uploads), "parquet must go through LFS"
    assert sum(r.startswith("PUT /__lfs/upload/") for r in uploads) == 3  # 2 parquet + 1 png
    stored = local_hub.files(repo_id)
    assert set(stored) == _listing(out) | {".gitattributes"}
    assert all(stored[p] == (out / p).read_bytes() for p in _listing(out))

    for name, expected in datasets_.items():
        _assert_same(load_dataset(repo_id, name, split="train"), expected)
    _assert_same(load_dataset(repo_id, split="train"), datasets_["sft"])

    raw = requests.get(local_hub.raw_url(repo_id, "pipeline.yaml"), timeout=10)
    assert raw.status_code == 200 and raw.text == PIPELINE_YAML
    assert local_hub.problems == []
    assert loopback_only, "the loopback guard saw no look-up: is it patching the right function?"


def test_repush_replaces_stale_shards(
    tmp_path, local_hub: LocalHub, card, pipeline_yaml, run_info
) -> None:
    repo_id = "synthalign-tests/repush"
    big = Dataset.from_list(_sft_rows(200), features=SFT_FEATURES)
    out = _write(
        tmp_path / "out", {"sft": big}, card, pipeline_yaml, run_info, max_shard_bytes=4_000
    )
    push_hub_folder(out, repo_id)
    assert sum(p.startswith("data/sft/") for p in local_hub.files(repo_id)) > 1

    small = Dataset.from_list(_sft_rows(5, offset=1000), features=SFT_FEATURES)
    no_figures = CardContent(card.metadata, "# second\n")
    out = _write(out, {"sft": small}, no_figures, pipeline_yaml, run_info, overwrite=True)
    push_hub_folder(out, repo_id)
    assert set(local_hub.files(repo_id)) == _listing(out) | {".gitattributes"}
    _assert_same(load_dataset(repo_id, "sft", split="train"), small)
    assert local_hub.problems == []


def test_private_repo_needs_the_token_to_load(
    tmp_path, monkeypatch, local_hub: LocalHub, datasets_, card, pipeline_yaml, run_info
) -> None:
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id = "synthalign-tests/private"
    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, run_info)
    push_hub_folder(out, repo_id, private=True)
    _assert_same(load_dataset(repo_id, "sft", split="train"), datasets_["sft"])

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises((DatasetNotFoundError, RepositoryNotFoundError)):
        load_dataset(repo_id, "sft", split="train", cache_dir=str(tmp_path / "fresh-cache"))


def test_canary_token_lands_in_no_file_and_no_log(
    tmp_path, monkeypatch, capfd, all_logs, local_hub: LocalHub, datasets_, card, pipeline_yaml,
    run_info,
) -> None:  # fmt: skip
    canary = f"hf_canary{secrets.token_hex(16)}"
    local_hub.accept_token(canary)
    monkeypatch.setenv("HF_TOKEN", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    repo_id = "synthalign-tests/canary"

    out = _write(tmp_path / "out", datasets_, card, pipeline_yaml, {**run_info, "hf_token": canary})
    push_hub_folder(out, repo_id)
    push_hub_folder(out, repo_id, token=canary)  # explicit token, second commit is a no-op
    _assert_same(load_dataset(repo_id, "sft", split="train"), datasets_["sft"])

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


# ---------------------------------------------------------------------- card helpers


def test_size_category_uses_hub_labels() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 999_999, 1_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
    ]
    assert size_category(10**13) == "n>1T"


def test_markdown_table_escapes_cells() -> None:
    table = markdown_table(
        [["a|b", 0.123456, None], {"x": "line\nbreak", "y": 2, "z": True}], ["x", "y", "z"]
    )
    assert table.splitlines() == [
        "| x | y | z |",
        "| --- | --- | --- |",
        "| a\\|b | 0.1235 |  |",
        "| line break | 2 | true |",
    ]
    with pytest.raises(ValueError):
        markdown_table([[1]], ["a", "b"])


def test_counts_table_groups_and_orders() -> None:
    ds = Dataset.from_dict({"task": ["qa", "code", "qa", "qa", None], "lvl": [1, 2, 1, 2, 1]})
    lines = counts_table(ds, ["task"]).splitlines()
    assert lines[0] == "| task | rows | share |"
    assert lines[2] == "| qa | 3 | 60.0% |"
    assert len(lines) == 5
    assert "| qa | 1 | 2 | 40.0% |" in counts_table(ds, ["task", "lvl"])
    with pytest.raises(ValueError, match="not in the dataset"):
        counts_table(ds, ["missing"])


def test_figure_png_is_deterministic() -> None:
    def draw() -> bytes:
        fig = new_figure(2, 2)
        fig.add_subplot().plot([1, 2, 3], [3, 1, 2])
        return figure_png(fig)

    first = draw()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == draw()
    assert b"Matplotlib version" not in first


def test_versions_and_base_metadata() -> None:
    found = versions()
    assert {"synthalign", "distilabel", "datasets", "transformers"} <= set(found)
    meta = base_metadata(
        "synpo", 12_345, ["preference", "synpo"], ["text-generation"], license="mit"
    )
    assert meta == {
        "license": "mit",
        "size_categories": ["10K<n<100K"],
        "tags": ["synthetic", "synthalign", "synpo", "preference"],
        "task_categories": ["text-generation"],
    }


def test_render_readme_front_matter() -> None:
    card = CardContent({"license": "mit", "configs": "ignored"}, "Body")
    text = render_readme(card, {"a": {"train": "data/a/train-*"}}, "a")
    assert text.startswith("---\nlicense: mit\nconfigs:\n- config_name: a\n")
    assert text.endswith("---\n\nBody\n")
    with pytest.raises(ValueError):
        render_readme(card, {"a": {"train": "x"}}, "b")
