"""Run safety (issue 15): a run never hangs, never says "written" when it failed or was
stopped, and leaves nothing running behind it.

Every case is a real process and a real signal: the command starts in its own process
group (as a shell runs it) and the test sends what a terminal, the OOM killer or an
operator sends. Triggers are files the run writes (a batch the step finished, the pid
of a loading worker), never sleeps, so each case hits the same point on a slow machine.
Most cases use ``tests/safety_method.py`` (real distilabel workers, no model: seconds);
Ctrl-C during Condor and total failure against a loopback server use the real methods.

Numbered as in the issue: 1 Ctrl-C, 2 a dead worker / a stall, 4 total failure,
6 ``kill -9`` of the driver; 3, 5, 7 and 8 are in tests/test_preflight.py, except the
training and loop cases here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from loopback_llm import loopback_llm
from safety_method import METHOD as SAFETY

from synthalign.errors import RunFailed
from synthalign.run import generate, loop

TESTS = Path(__file__).resolve().parent
SAFETY_CLI = TESTS / "safety_cli.py"
SYNTHALIGN = "import sys; from synthalign.cli import app; sys.exit(app())"


def synthalign_args(*args: str) -> list[str]:
    """The ``synthalign`` command line, run with this interpreter."""
    return [sys.executable, "-c", SYNTHALIGN, *args]


STOPPED = "stopped; rerun the same command to resume"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _seeds(path: Path, n: int = 12, prefix: str = "instruction") -> Path:
    path.write_text(
        "".join(json.dumps({"instruction": f"{prefix} number {i}"}) + "\n" for i in range(n))
    )
    return path


def _recipe(tmp_path: Path, name: str = "safety.yaml", **extra: object) -> Path:
    seeds = extra.pop("seeds", None) or _seeds(tmp_path / "seeds.jsonl")
    data = {
        "name": "safety-test",
        "seed_data": {"source": str(seeds)},
        "cache_dir": str(tmp_path / "cache"),
        "marker_dir": str(tmp_path / "marks"),
        **extra,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


class Run:
    """A command in its own process group, its output in a log file."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log_path = cwd / f"run-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.descendants: list[psutil.Process] = []

    @classmethod
    def safety(cls, tmp_path: Path, *args: str) -> Run:
        return cls([sys.executable, str(SAFETY_CLI), *args], tmp_path)

    def wait_until(self, ready: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the run ended ({self.proc.returncode}) before the trigger:\n"
                    + self.output()[-3000:]
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"trigger not reached in {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        self.descendants = psutil.Process(self.proc.pid).children(recursive=True)

    def signal_group(self, signum: int) -> float:
        os.killpg(self.proc.pid, signum)  # what a terminal does: the whole foreground group
        return time.monotonic()

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def last_line(self) -> str:
        lines = [line for line in self.output().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def _survivors(processes: list[psutil.Process], within: float = 5.0) -> list[int]:
    """Pids of ``processes`` still running after ``within`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _stored(tmp_path: Path) -> Callable[[], bool]:
    """The trigger: the work step has a finished batch in the batch store (what a rerun reuses)."""
    return lambda: any((tmp_path / "cache").rglob("synthalign-batches/work/*.pkl"))


def _log(out: Path) -> str:
    """The run's log file (distilabel's and the engines' output, beside the folder)."""
    return out.with_name(f"{out.name}.log").read_text(errors="replace")


def _rows(folder: Path, config: str = "rows") -> list[dict]:
    from datasets import load_dataset

    return load_dataset(str(folder), config, split="train").to_list()


# ------------------------------------------------------------------ 1. stop means stop


def test_one_ctrl_c_stops_generate_within_seconds_writes_nothing_and_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    recipe, out = _recipe(tmp_path, delay=1.0), tmp_path / "out"
    run = Run.safety(tmp_path, "generate", str(recipe), str(out))
    run.wait_until(_stored(tmp_path))
    sent = run.signal_group(signal.SIGINT)
    assert run.finish(timeout=30) == 130, run.output()[-3000:]
    assert time.monotonic() - sent < 10
    assert run.last_line() == STOPPED
    assert "dataset written" not in run.output()
    assert not out.exists()  # no folder that looks complete
    assert _survivors(run.descendants) == []

    rerun = Run.safety(tmp_path, "generate", str(recipe), str(out))
    assert rerun.finish() == 0, rerun.output()[-3000:]
    assert "batch restored" in " ".join(
        _log(out).split()
    )  # the finished batches were not recomputed (distilabel's log is in the run's log file)
    assert sorted(r["instruction"] for r in _rows(out)) == sorted(
        f"instruction number {i}" for i in range(12)
    )


def test_sigterm_stops_with_143(tmp_path: Path) -> None:
    run = Run.safety(tmp_path, "generate", str(_recipe(tmp_path, delay=1.0)), str(tmp_path / "out"))
    run.wait_until(lambda: (tmp_path / "marks" / "round-1" / "batch-0").exists())
    run.signal_group(signal.SIGTERM)
    assert run.finish(timeout=30) == 143, run.output()[-3000:]
    assert run.last_line() == STOPPED and not (tmp_path / "out").exists()
    assert _survivors(run.descendants) == []


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    run = Run.safety(tmp_path, "generate", str(_recipe(tmp_path, delay=1.0)), str(tmp_path / "out"))
    run.wait_until(lambda: (tmp_path / "marks" / "round-1" / "batch-0").exists())
    run.signal_group(signal.SIGINT)
    sent = run.signal_group(signal.SIGINT)
    assert run.finish(timeout=30) == 130
    assert time.monotonic() - sent < 5
    assert run.last_line() in (STOPPED, "stopped at once; rerun the same command to resume")
    assert _survivors(run.descendants) == []


def test_ctrl_c_while_a_model_loads_stops_the_run(tmp_path: Path) -> None:
    run = Run.safety(
        tmp_path, "generate", str(_recipe(tmp_path, load_delay=600)), str(tmp_path / "out")
    )
    run.wait_until(lambda: (tmp_path / "marks" / "round-1" / "work.pid").exists())  # loading now
    sent = run.signal_group(signal.SIGINT)
    assert run.finish(timeout=30) == 130
    assert time.monotonic() - sent < 10 and run.last_line() == STOPPED
    assert _survivors(run.descendants) == []


def test_ctrl_c_during_a_loop_keeps_finished_rounds_and_the_rerun_completes(tmp_path: Path) -> None:
    recipe, out = _recipe(tmp_path, delay=0.5), tmp_path / "loop"
    args = ["loop", str(recipe), str(out), "--iterations", "2"]
    run = Run.safety(tmp_path, *args)
    run.wait_until(lambda: (tmp_path / "marks" / "round-2" / "batch-0").exists())
    run.signal_group(signal.SIGINT)
    assert run.finish(timeout=30) == 130 and run.last_line() == STOPPED
    first = (out / "round-1" / "README.md").stat().st_mtime_ns
    assert not (out / "round-2").exists()
    rerun = Run.safety(tmp_path, *args)
    assert rerun.finish() == 0, rerun.output()[-3000:]
    assert (out / "round-1" / "README.md").stat().st_mtime_ns == first  # finished round untouched
    assert {r["round"] for r in _rows(out / "round-2")} == {2}


@pytest.mark.slow
def test_ctrl_c_during_condor_generate_stops_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The issue's case: Condor printed "dataset written" over empty configs after one Ctrl-C."""
    cache = tmp_path / "cache"
    recipe = tmp_path / "condor.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "condor-stop", "llm": "builtin:tiny-random", "num_samples": 12,
        "cache_dir": str(cache), "drop_truncated": False, "max_failed_fraction": 1.0,
        "question": {"max_new_tokens": 80, "max_question_chars": 60, "batch_size": 2},
        "answer": {"max_new_tokens": 24, "batch_size": 2},
        "critique": {"max_new_tokens": 96, "max_field_chars": 40, "batch_size": 2},
        "refine": {"max_new_tokens": 24, "batch_size": 2},
    }))  # fmt: skip
    out = tmp_path / "out"
    args = synthalign_args("generate", "condor", "--config", str(recipe), "--output", str(out))
    run = Run(args, tmp_path)
    run.wait_until(lambda: any(cache.rglob("synthalign-batches/*/*.pkl")), timeout=600)
    run.signal_group(signal.SIGINT)
    assert run.finish(timeout=60) == 130, run.output()[-3000:]
    assert run.last_line() == STOPPED and "dataset written" not in run.output() and not out.exists()
    assert _survivors(run.descendants) == []
    rerun = Run(args, tmp_path)
    assert rerun.finish(timeout=900) == 0, rerun.output()[-3000:]
    assert "batch restored" in " ".join(_log(out).split()) and (out / "README.md").is_file()


# ------------------------------------------------------------------ 2. a dead worker, a stall


def test_a_killed_worker_ends_the_run_with_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    recipe, out = _recipe(tmp_path, delay=1.0), tmp_path / "out"
    run = Run.safety(tmp_path, "generate", str(recipe), str(out))
    marks = tmp_path / "marks" / "round-1"
    run.wait_until(_stored(tmp_path))
    worker = int((marks / "work.pid").read_text())
    os.kill(worker, signal.SIGKILL)  # the OOM killer, a segfaulting engine
    killed = time.monotonic()
    assert run.finish(timeout=60) == 1, run.output()[-3000:]
    assert time.monotonic() - killed < 15
    line = run.last_line()
    assert line.startswith(f"error: step 'work' died (worker pid {worker}, killed by SIGKILL) "), (
        line
    )
    assert " batch " in line  # on batch N, or after sending batch N
    assert line.endswith("finished batches are kept: rerun the same command to resume")
    assert not out.exists() and _survivors(run.descendants) == []
    rerun = Run.safety(tmp_path, "generate", str(recipe), str(out))
    assert rerun.finish() == 0 and len(_rows(out)) == 12


def test_a_batch_that_makes_no_progress_ends_the_run_after_stall_timeout(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, hang_at_batch=1, stall_timeout=3)
    run = Run.safety(tmp_path, "generate", str(recipe), str(tmp_path / "out"))
    run.wait_until(lambda: (tmp_path / "marks" / "round-1" / "batch-0").exists())
    assert run.finish(timeout=60) == 1, run.output()[-3000:]
    line = run.last_line()
    assert (
        line.startswith("error: no progress for ") and "(stall_timeout: 3s): step 'work'" in line
    ), line
    assert "stuck on batch 1" in line and "raise stall_timeout" in line
    assert not (tmp_path / "out").exists() and _survivors(run.descendants) == []


# ------------------------------------------------------------------ 6. kill -9 of the driver


def test_kill_9_of_the_driver_leaves_no_worker_running(tmp_path: Path) -> None:
    run = Run.safety(tmp_path, "generate", str(_recipe(tmp_path, delay=1.0)), str(tmp_path / "out"))
    run.wait_until(lambda: (tmp_path / "marks" / "round-1" / "batch-0").exists())
    assert len(run.descendants) >= 3  # the runner, its queue manager, the step workers
    os.kill(run.proc.pid, signal.SIGKILL)  # the driver alone: its children get no signal from us
    run.finish(timeout=30)
    assert _survivors(run.descendants) == []


# ------------------------------------------------------------------ 4. honest outcomes


@pytest.mark.slow
def test_every_chat_call_failing_exits_non_zero_with_the_funnel_and_pushes_nothing(
    tmp_path: Path, local_hub
) -> None:
    """HTTP 500 on every chat call: the run used to exit 0 with an empty dataset and push it."""
    with loopback_llm(chat_status=500) as (url, server):
        recipe = tmp_path / "condor.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "condor-500", "llm": f"openai:{url}#loopback", "num_samples": 6,
            "cache_dir": str(tmp_path / "cache"),
            "engine_kwargs": {"max_retries": 0},
        }))  # fmt: skip
        out = tmp_path / "out"
        args = synthalign_args(
            "generate",
            "condor",
            "--config",
            str(recipe),
            "--output",
            str(out),
            "--push-to-hub",
            "me/condor-500",
        )
        run = Run(args, tmp_path)
        assert run.finish(timeout=600) == 1, run.output()[-3000:]
    line = run.last_line()
    assert line.startswith(
        "error: condor 1:main: the default config 'refined' came out empty "
        "(6 considered, question -6 (6 failed: no output"
    ), line
    assert "0 kept" in line and "nothing was written or pushed" in line
    assert server.chats >= 2 and not out.exists()
    assert not local_hub.repo_exists("me/condor-500")


def test_a_failure_rate_over_max_failed_fraction_fails_and_a_partial_failure_reports_each_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _recipe(tmp_path, "failing.yaml", fail_every=2, max_failed_fraction=0.2)
    with pytest.raises(
        RunFailed,
        match=r"safety 1:echo: \d+ of 12 rows failed \(\d+% > max_failed_fraction 0.2; "
        r"12 considered, answer -\d+ \(\d+ failed: no output",
    ):
        generate(SAFETY, failing, output=tmp_path / "failing")
    assert not (tmp_path / "failing").exists()
    tolerant = _recipe(tmp_path, "tolerant.yaml", fail_every=2, max_failed_fraction=0.9)
    out = generate(SAFETY, tolerant, output=tmp_path / "tolerant")
    kept = len([r for r in _rows(out) if r["kept"]])
    assert 0 < kept < 12
    assert (
        f"{kept} of 12 rows published; "
        f"lost per stage: answer -{12 - kept} ({12 - kept} failed: no output" in caplog.text
    )


# ------------------------------------------------------------------ no stale reads


def test_loops_read_exactly_the_files_they_wrote(tmp_path: Path) -> None:
    """Rounds read the previous round by path: a rerun with --overwrite and other seeds,
    and a second loop in another folder (same run name, same cache), never mix rows."""
    a, b = _seeds(tmp_path / "a.jsonl", prefix="alpha"), _seeds(tmp_path / "b.jsonl", prefix="beta")
    out, other = tmp_path / "loop", tmp_path / "other"
    loop(SAFETY, _recipe(tmp_path, "a.yaml", seeds=a), iterations=2, output=out)
    loop(
        SAFETY,
        _recipe(tmp_path, "b.yaml", seeds=b, seed=7),
        iterations=2,
        output=out,
        overwrite=True,
    )
    loop(SAFETY, _recipe(tmp_path, "a2.yaml", seeds=a), iterations=2, output=other)
    for folder, prefix in ((out, "beta"), (other, "alpha")):
        for r in (1, 2):
            rows = _rows(folder / f"round-{r}")
            assert len(rows) == 12 and all(row["instruction"].startswith(prefix) for row in rows), (
                folder,
                r,
            )


# ------------------------------------------------------------------ 7. another kind's checkpoints


def _pref_folder(path: Path) -> Path:
    from datasets import Dataset

    from synthalign.cards.base import CardContent
    from synthalign.hub import write_hub_folder

    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {i} about art"}],
            "chosen": [{"role": "assistant", "content": f"a careful answer {i}"}],
            "rejected": [{"role": "assistant", "content": "no"}],
            "tau": 0.8,
        }
        for i in range(4)
    ]
    card = CardContent(metadata={"license": "apache-2.0"}, body="# data\n")
    data = {name: Dataset.from_list(rows) for name in ("rdpo", "dpo")}
    return write_hub_folder(path, data, card, pipeline_yaml=None, run_info={"method": "test"})


def _train(kind: str, recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    args = synthalign_args("train", kind, "--config", str(recipe), *extra)
    return subprocess.run(args, capture_output=True, text=True, timeout=900, env=_env())


@pytest.mark.slow
def test_training_into_another_kinds_checkpoints_refuses_and_overwrite_trains_afresh(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "builtin:tiny-random", "dataset": str(_pref_folder(tmp_path / "data")),
        "output_dir": str(tmp_path / "model"), "max_steps": 2, "save_steps": 1,
        "per_device_train_batch_size": 2, "max_length": 64, "logging_steps": 1,
    }))  # fmt: skip
    first = _train("rdpo", recipe)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = _train("dpo", recipe)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'model'} holds a rdpo training: "
        "choose another --output, or pass --overwrite to train dpo afresh"
    )
    again = _train("rdpo", recipe)  # the same kind resumes, and says from where
    assert (
        again.returncode == 0
        and f"resuming training from {tmp_path / 'model' / 'checkpoint-2'} (step 2)" in again.stderr
    )
    fresh = _train("dpo", recipe, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    record = json.loads((tmp_path / "model" / "synthalign-train.json").read_text())
    assert (
        record["kind"] == "dpo"
        and record["resumed_from"] is None
        and record["metrics"]["train_samples"] == 4
    )


@pytest.mark.slow
def test_a_pool_of_openai_members_sends_the_recipe_key_and_the_run_ends(tmp_path: Path) -> None:
    """GRA with a recipe ``api_key`` and a pool of ``openai:`` members: no member got the
    key (every request refused with 401), and then the run hung."""
    seeds = TESTS.parent / "pipelines" / "recipes" / "data" / "gra-seed.jsonl"
    with loopback_llm(key="sk-pool") as (url, server):
        recipe = tmp_path / "gra.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "gra-key", "api_key": "sk-pool", "cache_dir": str(tmp_path / "cache"),
            "pool": [f"openai:{url}#a", f"openai:{url}#b", f"openai:{url}#c"],
            "n_reviewers": 1, "min_valid_reviews": 1, "samples_per_round": 4, "rounds": 1,
            "seed_data": {"source": str(seeds), "limit": 4}, "generation": {"max_new_tokens": 16},
            "stall_timeout": 20,
        }))  # fmt: skip
        out = tmp_path / "out"
        args = synthalign_args("generate", "gra", "--config", str(recipe), "--output", str(out))
        run = Run(args, tmp_path)
        code = run.finish(timeout=600)
    assert (
        server.chats > 0 and server.auth and set(server.auth) == {"Bearer sk-pool"}
    )  # no 401, ever
    assert code in (0, 1), run.output()[-3000:]  # it ends: published, or one line saying why not
    assert code == 0 or run.last_line().startswith("error: ")
