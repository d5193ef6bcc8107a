"""How far a running pipeline is: rows done per step, expected totals, rate and ETA.

The pipeline runs in a runner process whose step workers are forked from it
(:func:`synthalign.execute.run_pipeline`). Each worker counts the rows of its step
(:class:`StepCounter`, driven by the step-wrapper patch in :mod:`synthalign.watchdog`)
and rewrites ``progress/<step>.<replica>.json`` in the run's status folder; a
generator step also records how many rows it will yield in all. The driver reads those
files (:class:`PipelineProgress`) and estimates every step's total from the DAG: a
step expects what its predecessors will send, and a step that is not finished sends
as many rows per row received as it has so far (Condor's split makes three of one).
Nothing here imports distilabel at module level: the driver reads plain JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

__all__ = ["PROGRESS", "PipelineProgress", "StepCounter", "StepStatus", "count_generator"]

PROGRESS = "progress"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _rows(batch: Any) -> int:
    data = getattr(batch, "data", None) or []
    return sum(len(part) for part in data)


# ------------------------------------------------------------------ in the workers


class StepCounter:
    """The rows one replica of a step has received, finished and sent."""

    def __init__(self, folder: Path, step: str, replica: int, *, generator: bool) -> None:
        (folder / PROGRESS).mkdir(parents=True, exist_ok=True)
        self.path = folder / PROGRESS / f"{step}.{replica}.json"
        self.data: dict[str, Any] = {
            "step": step,
            "replica": replica,
            "generator": generator,
            "rows_in": 0,
            "rows_done": 0,
            "rows_out": 0,
            "total": None,
            "started": time.time(),
            "finished": None,
        }
        self._pending = 0
        self._write()

    def _write(self) -> None:
        with contextlib.suppress(OSError):  # the folder is gone (a stop): best effort
            _write_json(self.path, self.data)

    def received(self, batch: Any) -> None:
        self._pending = _rows(batch)
        self.data["rows_in"] += self._pending

    def sent(self, batch: Any) -> None:
        out = _rows(batch)
        self.data["rows_out"] += out
        self.data["rows_done"] += out if self.data["generator"] else self._pending
        self._pending = 0
        self._write()

    def total(self, rows: int) -> None:
        self.data["total"] = rows
        self._write()

    def finished(self) -> None:
        self.data["finished"] = time.time()
        self._write()


def count_generator(
    batches: Iterable[tuple[list[dict[str, Any]], bool]], offset: int, counter: StepCounter | None
) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """A generator step's batches, counted first so the bar knows its total.

    synthalign's generator steps build their rows in memory anyway (seed files, the
    knowledge tree's draws, earlier rounds), so listing the batches costs nothing new.
    """
    listed = list(batches)
    if counter is not None:
        counter.total(offset + sum(len(rows) for rows, _ in listed))
    yield from listed


# ------------------------------------------------------------------ in the driver


@dataclass(frozen=True)
class StepStatus:
    """One step's bar: rows done of the expected total, rate and time left."""

    name: str
    done: int
    total: int | None
    rate: float | None
    eta: float | None
    finished: bool
    started: bool


class PipelineProgress:
    """The driver's view of a running pipeline's steps (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, folder: Path) -> None:
        dag = pipeline.dag
        self.folder = folder
        self.order = [name for level in dag.iter_based_on_trophic_levels() for name in level]
        self.predecessors = {name: list(dag.get_step_predecessors(name)) for name in self.order}

    def _notes(self) -> dict[str, dict[str, Any]]:
        """Every replica's counts, summed per step."""
        steps: dict[str, dict[str, Any]] = {}
        for path in (self.folder / PROGRESS).glob("*.json"):
            try:
                note = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            step = steps.setdefault(
                note["step"],
                {"rows_in": 0, "rows_done": 0, "rows_out": 0, "total": None, "replicas": []},
            )
            for key in ("rows_in", "rows_done", "rows_out"):
                step[key] += int(note.get(key) or 0)
            if note.get("total") is not None:
                step["total"] = (step["total"] or 0) + int(note["total"])
            step["replicas"].append(note)
        return steps

    def statuses(self, now: float | None = None) -> list[StepStatus]:
        now = time.time() if now is None else now
        notes = self._notes()
        expected_out: dict[str, float | None] = {}
        out = []
        for name in self.order:
            note = notes.get(name)
            finished = bool(note) and all(r.get("finished") for r in note["replicas"])
            total = self._expected_in(name, note, expected_out)
            expected_out[name] = self._expected_out(note, total, finished)
            done = int(note["rows_done"]) if note else 0
            started = note is not None
            if finished:
                total = done
            rate = eta = None
            if note and done:
                began = min(r.get("started") or now for r in note["replicas"])
                ended = max((r.get("finished") or now) for r in note["replicas"])
                elapsed = max(ended - began, 1e-6)
                rate = done / elapsed
                if total is not None and not finished:
                    eta = max(total - done, 0) / rate
            out.append(StepStatus(name, done, total, rate, eta, finished, started))
        return out

    def _expected_in(
        self, name: str, note: dict[str, Any] | None, expected_out: dict[str, float | None]
    ) -> int | None:
        preds = self.predecessors[name]
        if not preds:  # a generator: its own count, once it has made its rows
            return int(note["total"]) if note and note.get("total") is not None else None
        upstream = [expected_out.get(p) for p in preds]
        if any(v is None for v in upstream):
            return None
        return round(sum(v for v in upstream if v is not None))

    @staticmethod
    def _expected_out(
        note: dict[str, Any] | None, total_in: int | None, finished: bool
    ) -> float | None:
        if note and finished:
            return float(note["rows_out"])
        if total_in is None:
            return None
        if note and note["rows_done"] and note["rows_in"]:
            if note.get("total") is not None:  # a generator yields its total
                return float(note["total"])
            return total_in * note["rows_out"] / note["rows_done"]
        return float(total_in)
