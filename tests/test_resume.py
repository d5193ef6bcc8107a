"""Resume after a crash: SIGKILL a running command, run it again, get what an uninterrupted run gets.

Every case runs the real CLI in its own process group and kills the whole group
(distilabel forks one worker per step) with SIGKILL, the way an OOM killer or a lost
spot instance does: nothing gets a chance to clean up. The kill is triggered by what
the run has written (stored batches, the loop's run record, trainer checkpoints), never
by a sleep, so each case kills at the same point on a fast or a loaded machine.

* ``generate``: rDPO on ``builtin:tiny-random`` with greedy decoding, 8 prompts in
  batches of 2, killed at three points (while loading, after the first LLM batch, after
  most of the scoring). The rerun must restore the stored batches instead of calling
  the model again, and its dataset must equal an uninterrupted run's as a multiset of
  rows (no row lost, none doubled).
* ``loop synpo``: killed between iterations and inside one; the rerun keeps the finished
  iteration untouched and completes.
* ``train``: killed after the first checkpoint; the rerun continues from it
  (``resume_from_checkpoint: true``, the default) and reaches ``max_steps``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from rdpo_recipe import write_tiny_rdpo_recipe

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from synthalign.cli import app; sys.exit(app())"
N_PROMPTS = 8
BATCH = 2


def _env() -> dict[str, str]:
    # One thread everywhere: the reference and the resumed run must do the same float math.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env()
    )


def _run_and_kill(
    args: list[str], cwd: Path, trigger: Callable[[], bool], timeout: float = 1200
) -> None:
    """Start the command in its own process group; SIGKILL the whole group once ``trigger()``."""
    log = (cwd / "killed-run.log").open("w")
    proc = subprocess.Popen(
        _command(*args),
        cwd=cwd,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if trigger():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"kill trigger never fired within {timeout}s")
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (cwd / "killed-run.log").read_text()[-3000:]


def _rows(folder: Path) -> dict[str, Counter]:
    """Each config as a multiset of rows keyed by their full content."""
    from synthalign.hub import read_hub_folder

    datasets, _ = read_hub_folder(folder)
    return {
        name: Counter(json.dumps(row, sort_keys=True, default=str) for row in data)
        for name, data in datasets.items()
    }


# ---------------------------------------------------------------------------- batch store


def test_batch_store_is_keyed_by_step_signature_and_rows(tmp_path: Path) -> None:
    import numpy as np

    from synthalign.resume import BatchStore, _batch_key

    class FakeStep:
        def __init__(self, signature: str) -> None:
            self.signature = signature

    rows = ([{"prompt": "a", "embedding": np.arange(3000.0)}],)
    other = ([{"prompt": "a", "embedding": np.arange(3000.0) + (np.arange(3000) == 1500)}],)
    key = _batch_key(FakeStep("s1"), rows)
    assert key == _batch_key(FakeStep("s1"), ([{"embedding": np.arange(3000.0), "prompt": "a"}],))
    assert key != _batch_key(FakeStep("s2"), rows)  # another model / prompt / temperature
    assert key != _batch_key(FakeStep("s1"), other)  # a long array is hashed whole, not its repr

    store = BatchStore(tmp_path)
    assert store.get("step", key) is None
    store.put("step", key, [{"out": 1}])
    assert store.get("step", key) == [{"out": 1}] and store.count("step") == 1
    assert not [p for p in (tmp_path / "step").iterdir() if p.name.startswith(".tmp-")]
    (tmp_path / "step" / f"{key}.pkl").write_bytes(b"truncat")  # damaged: recomputed, not trusted
    assert store.get("step", key) is None


def test_a_config_truncated_by_a_kill_does_not_block_the_rerun(tmp_path: Path) -> None:
    from distilabel.pipeline import Pipeline
    from distilabel.steps import KeepColumns, LoadDataFromDicts
    from distilabel.utils import serialization

    from synthalign.resume import batch_store, batch_store_dir

    with Pipeline(name="truncated", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(name="load", data=[{"a": 1}]) >> KeepColumns(name="keep", columns=["a"])
    path = Path(pipeline._cache_location["pipeline"])
    pipeline.save(path=path, format="yaml")
    path.write_text(path.read_text()[: len(path.read_text()) // 2])  # killed mid-write
    with batch_store(pipeline) as store:
        assert (
            store.root == batch_store_dir(pipeline) == tmp_path / "truncated" / "synthalign-batches"
        )
    assert not path.exists()  # distilabel would fail to parse it at the next start
    assert (
        serialization.write_yaml.__module__ == "synthalign.resume"
    )  # from now on written atomically


# ---------------------------------------------------------------------------- generate


def _rdpo_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = folder / "seeds.jsonl"
    prompts = [{"prompt": f"Question {i}: how do I keep item {i} safe?"} for i in range(N_PROMPTS)]
    seeds.write_text("".join(json.dumps(row) + "\n" for row in prompts))
    greedy = {"max_new_tokens": 12, "temperature": 0.0}
    return write_tiny_rdpo_recipe(folder, "rdpo-resume", seeds, batch=BATCH, teacher=greedy)


def _stored(cache: Path, step: str | None) -> int:
    from synthalign.resume import BatchStore

    return BatchStore(cache / "rdpo-resume" / "synthalign-batches").count(step)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Counter]:
    """An uninterrupted run: what every resumed run must write."""
    work = tmp_path_factory.mktemp("reference")
    recipe = _rdpo_recipe(work)
    proc = _run(["generate", "rdpo", "--config", str(recipe), "--output", str(work / "out")], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(work / "out")
    assert sum(rows["all"].values()) == N_PROMPTS
    return rows


KILL_POINTS = {
    # before any batch: the steps are still loading their models
    "while-loading": ("self_critique_revision", 0),
    # the first LLM batch is stored, the rest in flight
    "after-first-llm-batch": ("self_critique_revision", 1),
    # generation done for most rows, scoring under way
    "during-scoring": ("score_with_reward_model", N_PROMPTS // BATCH - 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_generate_resumes_after_sigkill(
    point: str, reference: dict[str, Counter], tmp_path: Path
) -> None:
    step, after = KILL_POINTS[point]
    recipe = _rdpo_recipe(tmp_path)
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    args = ["generate", "rdpo", "--config", str(recipe), "--output", str(out)]

    if after == 0:
        # the distilabel cache folder appears once the pipeline starts; no batch is stored yet
        trigger = lambda: (cache / "rdpo-resume").is_dir()  # noqa: E731
    else:
        trigger = lambda: _stored(cache, step) >= after  # noqa: E731
    _run_and_kill(args, tmp_path, trigger)
    assert not out.exists()  # an interrupted run leaves no folder that looks complete
    stored_before = _stored(cache, None)  # finished batches of every model step
    # killed before the end, really
    assert _stored(cache, "score_with_reward_model") < N_PROMPTS // BATCH

    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dataset written to {out}" in proc.stdout
    # the finished batches came from the store, not from the model
    logs = (cache / "rdpo-resume").glob("*/executions/*/pipeline.log")
    log = "".join(p.read_text() for p in logs)
    assert log.count("batch restored from") >= stored_before
    assert _rows(out) == reference


# ---------------------------------------------------------------------------- train

TRAIN_STEPS = 6


def _training_data(folder: Path) -> Path:
    """A Hub-layout folder with an SFT config and a preference config (with tau)."""
    from datasets import Dataset

    from synthalign.cards.base import CardContent
    from synthalign.hub import write_hub_folder

    prompts = [f"Name a colour number {i}." for i in range(24)]
    sft = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": f"Blue {i}."}]
                for i, p in enumerate(prompts)
            ]
        }
    )
    pairs = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in prompts],
            "chosen": [
                [{"role": "assistant", "content": f"Blue {i}."}] for i in range(len(prompts))
            ],
            "rejected": [[{"role": "assistant", "content": "No."}] for _ in prompts],
            "tau": [0.8] * len(prompts),
        }
    )
    card = CardContent(metadata={"license": "apache-2.0"}, body="# resume test data\n")
    return write_hub_folder(
        folder,
        {"sft": sft, "rdpo": pairs},
        card,
        pipeline_yaml=None,
        run_info={"method": "test", "seed": 0},
    )


def _checkpoints(out: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in out.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "simpo", "rdpo"])
def test_train_resumes_from_the_last_checkpoint(kind: str, tmp_path: Path) -> None:
    data = _training_data(tmp_path / "data")
    recipe = {
        "model": "builtin:tiny-random",
        "dataset": str(data),
        "dataset_config": "sft" if kind == "sft" else "rdpo",
        "max_steps": TRAIN_STEPS,
        "save_steps": 2,
        "save_total_limit": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "max_length": 64,
        "precision": "fp32",
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "model"
    args = ["train", kind, "--config", str(path), "--output", str(out)]

    _run_and_kill(args, tmp_path, lambda: bool(_checkpoints(out)))
    assert not (out / "synthalign-train.json").exists()
    done_before = max(_checkpoints(out))
    assert done_before < TRAIN_STEPS

    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "synthalign-train.json").read_text())
    assert record["resumed_from"] == str(out / f"checkpoint-{done_before}")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == TRAIN_STEPS
    logged_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged_steps == sorted(set(logged_steps))  # no step trained twice
    assert set(range(done_before + 1, TRAIN_STEPS + 1)) <= set(logged_steps)


def test_an_incomplete_checkpoint_is_skipped(tmp_path: Path) -> None:
    from synthalign.trainers.common import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (tmp_path / "checkpoint-4").mkdir()  # killed while writing: no state yet
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # truncated
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


# ---------------------------------------------------------------------------- loop


def _small_synpo_recipe(folder: Path) -> Path:
    """The quickstart loop with one optimizer step per training stage.

    Its prompt sampling is kept: with greedy decoding and fewer prompts, every generated
    prompt can fail the filters, and the pairs pipeline then waits forever on empty
    batches (a SynPO issue of its own, not a resume one).
    """
    quickstart = ROOT / "pipelines" / "recipes" / "synpo-quickstart.yaml"
    data = yaml.safe_load(quickstart.read_text())
    for section in ("seed_data", "corpus"):
        data[section]["source"] = str(quickstart.parent / data[section]["source"])
    for training in ("generator_training", "improver_training", "simpo_training"):
        data[training].update(max_steps=1)  # max_length as the quickstart: prompts fit
    path = folder / "synpo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _states(out: Path) -> dict[str, dict]:
    """The run record's states by key ({} while the record is not written yet)."""
    try:
        record = json.loads((out / "synthalign.json").read_text())
    except (OSError, ValueError):
        return {}
    return {state["key"]: state for state in record.get("states", [])}


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_loop_resumes_after_sigkill_between_and_inside_iterations(tmp_path: Path) -> None:
    recipe = _small_synpo_recipe(tmp_path)
    out = tmp_path / "loop"
    args = ["loop", "synpo", "--config", str(recipe), "--iterations", "2", "--output", str(out)]

    # 1. between iterations: killed as soon as iteration 1's last state is recorded as done
    def first_done() -> bool:
        return bool(_states(out).get("1:preferences", {}).get("complete"))

    _run_and_kill(args, tmp_path, first_done)
    first = _mtimes(out / "iter-1")
    assert (out / "iter-1" / "policy" / "synthalign-train.json").is_file()

    # 2. inside iteration 2: killed once its improver set is recorded as written, before its pairs
    _run_and_kill(args, tmp_path, lambda: "2:improver-set" in _states(out))
    assert _mtimes(out / "iter-1") == first  # the finished iteration was not touched
    assert not (out / "iter-2" / "preferences").exists()
    improver = _mtimes(out / "iter-2" / "improver-set")

    # 3. the rerun finishes iteration 2 only
    proc = _run(args, tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _mtimes(out / "iter-1") == first
    assert _mtimes(out / "iter-2" / "improver-set") == improver
    states = _states(out)
    assert [k for k in states if k.startswith("2:")] == [
        "2:improver-set",
        "2:pairs",
        "2:preferences",
    ]
    assert all(state["complete"] for state in states.values())
    assert (out / "iter-2" / "policy" / "synthalign-train.json").is_file()
    from synthalign.hub import validate_hub_folder

    for stage in ("improver-set", "pairs", "preferences"):
        validate_hub_folder(out / "iter-2" / stage)  # every stage, the preference set too, reruns
