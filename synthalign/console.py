"""What a run shows: one progress display, a log file for everything else, a short ending.

A tiny quickstart used to print hundreds of INFO lines from distilabel, vLLM and
``datasets``, and not one bar. Now every run of the driver

- writes every library's log (distilabel's step logs, engine output, ``datasets``'
  messages, the trainers' output) to a log file beside the output folder
  (``<output>.log``: never inside it, so never pushed); ``--verbose`` also shows them;
- shows one progress display: on a terminal, a bar per step of the running pipeline
  (rows done / expected, rate, time left; generation, scoring, dedup alike) and per
  training (optimizer steps); elsewhere (CI, a pipe) one line per finished state and
  training, and a status line every ``HEARTBEAT_S`` seconds of a long pipeline;
- names the output folder in its first and last lines (the CLI prints the last one,
  with the row counts), and prints one accounting line (:mod:`synthalign.accounting`).

synthalign's own warnings still reach the terminal: they are about the data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from synthalign.progress import PipelineProgress, StepStatus

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

__all__ = ["HEARTBEAT_S", "RunConsole", "log_path", "quiet_libraries", "redirect_output"]

HEARTBEAT_S = 60.0
"""Seconds between status lines of a pipeline when not on a terminal."""


def log_path(output: Path) -> Path:
    """The run's log file: beside the output folder, so a push never uploads it."""
    return output.with_name(f"{output.name}.log")


def redirect_output(log_file: Path) -> None:
    """Send this process's stdout and stderr (file descriptors, so engines' C++ output
    too) to ``log_file``: used in the runner and training processes of a quiet run."""
    logging.captureWarnings(False)  # the driver's capture: warnings go to stderr, the file
    os.environ["COLUMNS"] = "200"  # rich's log lines (distilabel's), unwrapped in the file
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def quiet_libraries() -> None:
    """No progress bars or INFO chatter from ``datasets`` and the Hub client in the driver."""
    from datasets.utils import logging as datasets_logging  # heavy: datasets
    from huggingface_hub.utils import disable_progress_bars  # heavy: huggingface_hub

    datasets_logging.disable_progress_bar()
    datasets_logging.set_verbosity_error()
    disable_progress_bars()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(rate: float | None) -> str:
    if rate is None:
        return ""
    return f"{rate:.1f} rows/s" if rate >= 0.1 else f"{60 * rate:.1f} rows/min"


class _SynthalignWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("synthalign")


class RunConsole:
    """The terminal side of one run (see the module docstring)."""

    def __init__(
        self, output: Path, *, verbose: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.output = output
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.log_file = log_path(output)
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal and not verbose
        self._handlers: list[logging.Handler] = []
        self._level: int | None = None

    # -------------------------------------------------------------- logging

    def __enter__(self) -> RunConsole:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        self._level = root.level
        root.setLevel(logging.INFO)
        to_file = logging.FileHandler(self.log_file, encoding="utf-8")
        to_file.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)-8s %(name)s: %(message)s")
        )
        to_terminal = logging.StreamHandler(self.stream)
        to_terminal.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        if self.verbose:
            to_terminal.setLevel(logging.INFO)
        else:
            to_terminal.setLevel(logging.WARNING)
            to_terminal.addFilter(_SynthalignWarnings())
            logging.captureWarnings(True)
            quiet_libraries()
        self._handlers = [to_file, to_terminal]
        for handler in self._handlers:
            root.addHandler(handler)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        if self._level is not None:
            root.setLevel(self._level)
        logging.captureWarnings(False)

    def line(self, text: str) -> None:
        """A line for the user (and the log)."""
        self.console.print(text, markup=False, highlight=False)
        logging.getLogger("synthalign.run").debug(text)

    @property
    def quiet_children(self) -> Path | None:
        """The log file the runner and trainings write to, or None (``--verbose``)."""
        return None if self.verbose else self.log_file

    # -------------------------------------------------------------- a pipeline

    def pipeline(self, label: str, pipeline: Pipeline) -> PipelineMonitor:
        return PipelineMonitor(self, label, pipeline)

    def training(self, label: str, heartbeat: Path) -> TrainingMonitor:
        return TrainingMonitor(self, label, heartbeat)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        console=console,
        transient=True,
        auto_refresh=False,
    )


class PipelineMonitor:
    """Bars (on a terminal) or status lines (elsewhere) for one running pipeline."""

    def __init__(self, run: RunConsole, label: str, pipeline: Pipeline) -> None:
        self.run = run
        self.label = label
        self.pipeline = pipeline
        self.started = time.time()
        self.tracker: PipelineProgress | None = None
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self._last_tick = 0.0
        self._last_line = self.started

    @contextlib.contextmanager
    def watching(self, folder: Path) -> Iterator[PipelineMonitor]:
        """Show the pipeline whose workers count into ``folder`` while it runs."""
        self.tracker = PipelineProgress(self.pipeline, folder)
        if self.run.live:
            self.progress = _progress(self.run.console)
            width = max(len(n) for n in self.tracker.order) + len(self.label) + 3
            for name in self.tracker.order:
                description = f"[{self.label}] {name}".ljust(width)
                self.tasks[name] = self.progress.add_task(
                    description, total=None, count="", rate="", eta=""
                )
            self.progress.start()
        try:
            yield self
        finally:
            if self.progress is not None:
                self.progress.stop()

    def tick(self) -> None:
        """Refresh (called by the driver's wait loop; throttled)."""
        now = time.time()
        if self.tracker is None or now - self._last_tick < 0.25:
            return
        self._last_tick = now
        statuses = self.tracker.statuses(now)
        if self.progress is not None:
            for status in statuses:
                self._update(status)
            self.progress.refresh()
        elif now - self._last_line >= HEARTBEAT_S:
            self._last_line = now
            self.run.line(self.status_line(statuses, now))

    def _update(self, status: StepStatus) -> None:
        assert self.progress is not None
        total = status.total if status.total is not None else None
        count = f"{status.done}/{total if total is not None else '?'} rows"
        eta = "done" if status.finished else (f"ETA {_duration(status.eta)}" if status.eta else "")
        self.progress.update(
            self.tasks[status.name],
            completed=status.done,
            total=max(total, status.done) if total is not None else None,
            count=count,
            rate=_rate(status.rate),
            eta=eta,
        )

    def status_line(self, statuses: list[StepStatus], now: float) -> str:
        """``[state] 1m00s: step 5/12 rows, 0.2 rows/s, ETA 35s (3/9 steps done)``."""
        finished = sum(s.finished for s in statuses)
        running = next((s for s in statuses if s.started and not s.finished), None)
        head = f"[{self.label}] {_duration(now - self.started)}"
        if running is None:
            return f"{head}: loading ({finished}/{len(statuses)} steps done)"
        total = running.total if running.total is not None else "?"
        parts = [f"{running.name} {running.done}/{total} rows", _rate(running.rate)]
        if running.eta:
            parts.append(f"ETA {_duration(running.eta)}")
        return f"{head}: {', '.join(p for p in parts if p)} ({finished}/{len(statuses)} steps done)"

    def seconds(self) -> float:
        return time.time() - self.started


class TrainingMonitor:
    """A bar for a training's optimizer steps (the heartbeat file holds step / max_steps)."""

    def __init__(self, run: RunConsole, label: str, heartbeat: Path) -> None:
        self.run = run
        self.label = label
        self.heartbeat = heartbeat
        self.started = time.time()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_tick = 0.0
        self.steps: tuple[int, int | None] = (0, None)

    @contextlib.contextmanager
    def watching(self) -> Iterator[TrainingMonitor]:
        if self.run.live:
            self.progress = _progress(self.run.console)
            self.task = self.progress.add_task(
                f"[{self.label}]", total=None, count="", rate="", eta=""
            )
            self.progress.start()
        try:
            yield self
        finally:
            if self.progress is not None:
                self.progress.stop()

    def read(self) -> tuple[int, int | None]:
        try:
            beat = json.loads(self.heartbeat.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return self.steps
        if isinstance(beat, dict) and beat.get("step") is not None:
            self.steps = (int(beat["step"]), beat.get("max_steps"))
        return self.steps

    def tick(self) -> None:
        now = time.time()
        if now - self._last_tick < 0.25:
            return
        self._last_tick = now
        step, total = self.read()
        if self.progress is None or self.task is None:
            return
        rate = step / max(now - self.started, 1e-6) if step else None
        eta = (total - step) / rate if rate and total else None
        self.progress.update(
            self.task,
            completed=step,
            total=total,
            count=f"{step}/{total or '?'} steps",
            rate=f"{rate:.2f} steps/s" if rate else "",
            eta=f"ETA {_duration(eta)}" if eta else "",
        )
        self.progress.refresh()

    def seconds(self) -> float:
        return time.time() - self.started


def read_counts(folder: Path) -> dict[str, Any]:
    """The row counts of an output folder's last written state (for the last line)."""
    try:
        record = json.loads((folder / "synthalign.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    states = record.get("states") or []
    return dict(states[-1].get("counts") or {}) if states else dict(record.get("counts") or {})
