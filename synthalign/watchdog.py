"""A deadline on every wait: the driver watches the workers of a running pipeline.

distilabel runs each step in a worker of a ``multiprocessing`` pool. When a worker dies
(a segfaulting engine, the OOM killer, ``kill -9``) the pool quietly starts a new one
and the pipeline waits forever for the batch the dead one held; a step that hangs on
a batch (a server that never answers) waits forever too. A pipeline runs in a runner
process (:func:`synthalign.execute.run_pipeline`), and this module watches it from
both sides through one status folder:

- in every worker, each event of its step (loading, a batch received, a batch sent,
  done) rewrites ``workers/<pid>.json``: which step, which batch, since when;
- in the runner, a thread watches the pool's worker processes: one that exits while
  the pool runs is written to ``failure.json`` with its exit code, and the runner
  ends (its other workers die with it);
- in the driver, :class:`Watchdog` turns ``failure.json`` into one line, and ends the
  run when no worker event happened for ``stall_timeout`` seconds.

Either way the run ends with one line (which step, which batch, the signal or exit
code, how to resume) and a non-zero exit; the batch store keeps every finished batch,
so the rerun resumes.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from multiprocessing.pool import RUN
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthalign import accounting
from synthalign.errors import RESUME_HINT, RunFailed, SynthalignError
from synthalign.progress import StepCounter, count_generator
from synthalign.signals import die_with_parent_in_forks

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "EXIT_WORKER_DIED",
    "Watchdog",
    "arm_runner",
    "report_error",
    "report_result",
]

DEFAULT_STALL_TIMEOUT = 1800.0
"""Seconds without progress before a run ends (the recipe's ``stall_timeout``)."""
EXIT_WORKER_DIED = 3
FAILURE = "failure.json"
RESULT = "result.json"
ERROR = "error.pkl"
WORKERS = "workers"
KEPT = f"finished batches are kept: {RESUME_HINT}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def exit_description(code: int) -> str:
    """``killed by SIGKILL`` or ``exit code 1``, from a ``Popen``-style return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ------------------------------------------------------------------ in the workers


class _Notes:
    """What one worker is doing, rewritten at every event of its step."""

    def __init__(self, folder: Path, step: str, replica: int) -> None:
        self.path = folder / WORKERS / f"{os.getpid()}.json"
        self.step = step
        self.replica = replica

    def __call__(self, event: str, batch: int | None = None) -> None:
        data = {
            "pid": os.getpid(),
            "step": self.step,
            "replica": self.replica,
            "event": event,
            "batch": batch,
            "time": time.time(),
        }
        _write_json(self.path, data)


class _NotingQueue:
    """A step's input queue that notes every batch the step receives (and its rows)."""

    def __init__(self, queue: Any, notes: _Notes, counter: StepCounter) -> None:
        self._queue = queue
        self._notes = notes
        self._counter = counter

    def get(self, *args: Any, **kwargs: Any) -> Any:
        item = self._queue.get(*args, **kwargs)
        seq_no = getattr(item, "seq_no", None)
        if seq_no is not None:
            self._notes("batch", seq_no)
            self._counter.received(item)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


_counter: StepCounter | None = None  # the step this worker runs now (one at a time)


def _patch_generators() -> None:
    """A generator step counts its rows before yielding them: its bar knows the total."""
    from distilabel.steps.base import GeneratorStep  # heavy: distilabel

    original = GeneratorStep.process_applying_mappings

    def counted(self: GeneratorStep, offset: int = 0) -> Any:
        return count_generator(original(self, offset=offset), offset, _counter)

    functools.update_wrapper(counted, original)
    GeneratorStep.process_applying_mappings = counted  # type: ignore[method-assign]


def _patch_step_wrapper(folder: Path) -> None:
    """Note each step's events and rows (in the runner: the workers it forks inherit the
    patch); a worker's model calls are accounted to the step it runs."""
    from distilabel.pipeline.step_wrapper import _StepWrapper  # heavy: distilabel

    run, notify_load, send_batch = (
        _StepWrapper.run,
        _StepWrapper._notify_load,
        _StepWrapper._send_batch,
    )

    def noted_run(self: _StepWrapper) -> str:
        global _counter
        step = str(self.step.name)
        notes = _Notes(folder, step, self.replica)
        counter = StepCounter(folder, step, self.replica, generator=bool(self.step.is_generator))
        _counter = counter
        accounting.set_step(step)
        self._synthalign_notes = notes
        self._synthalign_counter = counter
        self.input_queue = _NotingQueue(self.input_queue, notes, counter)
        notes("loading")
        name = run(self)
        counter.finished()
        notes("done")
        return name

    def noted_load(self: _StepWrapper) -> None:
        self._synthalign_notes("loaded")
        notify_load(self)

    def noted_send(self: _StepWrapper, batch: Any) -> None:
        send_batch(self, batch)
        self._synthalign_counter.sent(batch)
        self._synthalign_notes("sent", batch.seq_no)

    for patched, original in (
        (noted_run, run),
        (noted_load, notify_load),
        (noted_send, send_batch),
    ):
        functools.update_wrapper(patched, original)  # pickled by name: the step's task is `run`
    _StepWrapper.run = noted_run  # type: ignore[method-assign]
    _StepWrapper._notify_load = noted_load  # type: ignore[method-assign]
    _StepWrapper._send_batch = noted_send  # type: ignore[method-assign]


# ------------------------------------------------------------------ in the runner


def _watch_pool(pipeline: Pipeline, folder: Path) -> None:
    """End the runner when a worker of its running pool exits (the pool would replace it
    and the pipeline would wait forever for the batch it held)."""
    seen: dict[int, Any] = {}
    while True:
        pool = getattr(pipeline, "_pool", None)
        if pool is not None:
            for process in list(getattr(pool, "_pool", [])):
                seen.setdefault(process.pid, process)
            dead = [p for p in seen.values() if p.exitcode is not None]
            # the pool may reap a dead worker and replace it between two looks: more
            # workers than the pool's size means one died unseen
            replaced = len(seen) > getattr(pool, "_processes", len(seen))
            if (dead or replaced) and getattr(
                pool, "_state", None
            ) == RUN:  # a stop terminates the pool first
                worker = dead[0] if dead else None
                failure = (
                    {"pid": worker.pid, "exitcode": worker.exitcode}
                    if worker
                    else {"pid": _unseen_dead(folder), "exitcode": None}
                )
                _write_json(folder / FAILURE, failure)
                os._exit(EXIT_WORKER_DIED)
        time.sleep(0.05)


def _unseen_dead(folder: Path) -> int | None:
    """The worker that died unseen: the one whose notes outlive its process."""
    for path in (folder / WORKERS).glob("*.json"):
        note = _read_json(path)
        if note and note.get("event") != "done" and not _alive(int(note["pid"])):
            return int(note["pid"])
    return None


def arm_runner(pipeline: Pipeline, folder: Path) -> None:
    """In the runner process, before the pipeline starts: workers note their events and
    die with the runner, and a thread watches the pool."""
    (folder / WORKERS).mkdir(parents=True, exist_ok=True)
    die_with_parent_in_forks()
    accounting.start(folder)
    _patch_generators()
    _patch_step_wrapper(folder)
    threading.Thread(
        target=_watch_pool, args=(pipeline, folder), daemon=True, name="synthalign-pool-watch"
    ).start()


def report_result(folder: Path, pipeline: Pipeline) -> None:
    """Where the finished pipeline left its outputs (read by the driver)."""
    location = pipeline._cache_location
    _write_json(
        folder / RESULT, {"data": str(location["data"]), "pipeline": str(location["pipeline"])}
    )


def _user_error(exc: BaseException) -> SynthalignError | None:
    """The first error of the cause chain a user can fix (distilabel wraps a step's load
    error in ``RuntimeError("Failed to load all the steps")``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SynthalignError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def report_error(folder: Path, exc: BaseException) -> None:
    """The exception the runner ended with, for the driver to raise (one line)."""
    error = _user_error(exc)
    if error is None:
        first = (str(exc).strip().splitlines() or [""])[0]
        error = RunFailed(
            f"the pipeline failed: {type(exc).__name__}: {first} (see the log); {KEPT}"
        )
    try:
        data = pickle.dumps(error)
    except Exception:
        data = pickle.dumps(RunFailed(str(error)))
    (folder / ERROR).write_bytes(data)


# ------------------------------------------------------------------ in the driver


class Watchdog:
    """The driver's view of one runner: its status folder, its deadline, its outcome."""

    def __init__(self, stall_timeout: float) -> None:
        self.stall_timeout = stall_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="synthalign-run-"))
        (self.folder / WORKERS).mkdir()
        self.started = time.time()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def notes(self) -> list[dict[str, Any]]:
        found = (_read_json(p) for p in (self.folder / WORKERS).glob("*.json"))
        return [n for n in found if n]

    def _last_event(self) -> float:
        times = [self.started]
        for path in (self.folder / WORKERS).glob("*.json"):
            try:
                times.append(path.stat().st_mtime)
            except OSError:  # rewritten while we looked
                times.append(time.time())
        return max(times)

    def check(self) -> None:
        """Raise :class:`RunFailed` when a worker died or nothing moved for ``stall_timeout``."""
        if (self.folder / FAILURE).is_file():
            raise RunFailed(self.death_line())
        idle = time.time() - self._last_event()
        if idle > self.stall_timeout:
            raise RunFailed(self.stall_line(idle))

    def death_line(self) -> str:
        failure = _read_json(self.folder / FAILURE) or {}
        pid, code = failure.get("pid"), failure.get("exitcode")
        how = exit_description(code) if isinstance(code, int) else "exit status unknown"
        note = _read_json(self.folder / WORKERS / f"{pid}.json")
        if not note:
            return f"a pipeline worker (pid {pid}) was {how} before it started a step; {KEPT}"
        return f"step '{note['step']}' died (worker pid {pid}, {how}) {_doing(note)}; {KEPT}"

    def stall_line(self, idle: float) -> str:
        notes = self.notes()
        busy = [n for n in notes if n.get("event") in ("loading", "batch")]
        head = f"no progress for {idle:.0f}s (stall_timeout: {self.stall_timeout:g}s)"
        tail = f"{KEPT}, or raise stall_timeout in the recipe for a slower model"
        if busy:
            note = min(busy, key=lambda n: n["time"])
            where = f"step '{note['step']}' (worker pid {note['pid']})"
            return f"{head}: {where} stuck {_doing(note)}; {tail}"
        if notes:
            note = max(notes, key=lambda n: n["time"])
            last = f"step '{note['step']}' {_doing(note)}"
            return f"{head}: the pipeline stopped moving (last: {last}); {tail}"
        return f"{head}: no step started; {tail}"

    def finish(self, code: int) -> dict[str, str]:
        """The runner's result (where its outputs are), or the error it ended with."""
        if (self.folder / FAILURE).is_file():
            raise RunFailed(self.death_line())
        result = _read_json(self.folder / RESULT)
        if code == 0 and result:
            return result
        error_file = self.folder / ERROR
        if error_file.is_file():
            try:
                error = pickle.loads(error_file.read_bytes())
            except Exception:
                error = None
            if isinstance(error, SynthalignError):
                raise error
        raise RunFailed(
            f"the pipeline process ended ({exit_description(code)}) before it finished; {KEPT}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _doing(note: dict[str, Any]) -> str:
    event, batch = note.get("event"), note.get("batch")
    since = time.strftime("%H:%M:%S", time.localtime(note.get("time", 0)))
    return {
        "loading": f"while loading (since {since})",
        "loaded": f"after loading, waiting for its first batch (since {since})",
        "batch": f"on batch {batch} (since {since})",
        "sent": f"after sending batch {batch} (at {since})",
        "done": f"after it finished (at {since})",
    }.get(str(event), f"({event})")
