"""Stop means stop: one Ctrl-C or SIGTERM ends a run within seconds, and no child outlives it.

distilabel's own SIGINT handling stops a pipeline gracefully and then returns as if
it had finished (the driver would publish a folder of empty configs), and it does
nothing while models load or a training subprocess runs. synthalign therefore owns
the signals of a run, once, for every method and every phase:

- the driver runs every pipeline and every training in a child process with its own
  process group (:func:`wait_child`), so a terminal's Ctrl-C reaches only the driver,
  which ends the whole group itself;
- the first SIGINT/SIGTERM ends those groups (SIGTERM, then SIGKILL after a short
  grace) and raises :class:`~synthalign.errors.RunStopped` in the main thread: nothing
  is published, and the batch store and trainer checkpoints (written to survive
  SIGKILL) make the same command resume; inside :meth:`StopGuard.critical` (an atomic
  folder write) the stop waits for the section's end;
- a second signal ends the groups with SIGKILL and exits at once;
- every child dies with its parent (:func:`die_with_parent`), so even ``kill -9`` of
  the driver leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from synthalign.errors import RESUME_HINT, RunStopped

__all__ = [
    "StopGuard",
    "die_with_parent",
    "die_with_parent_in_forks",
    "kill_group",
    "stop_guard",
    "wait_child",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
KILL_GRACE_S = 2.0
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "SYNTHALIGN_DIE_WITH_PARENT"
"""Set for a child started with ``subprocess``: the pid it must not outlive."""


def kill_group(pgid: int, grace: float = KILL_GRACE_S) -> None:
    """End a child's process group: SIGTERM, then (once the leader is gone, or after
    ``grace`` seconds) SIGKILL for whatever is left of the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _leader_alive(pgid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _leader_alive(pid: int) -> bool:
    """Whether our child ``pid`` still runs (reaping it once it ended)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child, or already reaped
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return done == 0


class StopGuard:
    """The run's handler of SIGINT and SIGTERM, and the child groups it must end."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.groups: set[int] = set()
        self._critical = 0
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        """Take over the stop signals (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: no more waiting
            for pgid in list(self.groups):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            os.write(2, f"stopped at once; {RESUME_HINT}\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        for pgid in list(self.groups):
            kill_group(pgid)
        if not self._critical:
            raise RunStopped(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a stop must not cut in two (renaming a finished folder into place)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.signum is not None and not self._critical:
            raise RunStopped(self.signum)


_active: StopGuard | None = None


@contextlib.contextmanager
def stop_guard() -> Iterator[StopGuard]:
    """Own the stop signals for the duration of a run (nested calls share one guard)."""
    global _active
    if _active is not None:
        yield _active
        return
    guard = StopGuard()
    installed = guard.install()
    _active = guard
    try:
        yield guard
    finally:
        _active = None
        if installed:
            guard.restore()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """:meth:`StopGuard.critical` of the active guard (a no-op outside a run)."""
    if _active is None:
        yield
    else:
        with _active.critical():
            yield


def wait_child(
    pid: int,
    poll: Callable[[], int | None] | None = None,
    check: Callable[[], None] | None = None,
    interval: float = 0.2,
) -> int:
    """Wait for child ``pid`` (leader of its own process group) and return its exit code
    (negative: killed by that signal). ``check()`` runs between polls and raises to end
    the wait (a watchdog's deadline); a stop signal or any raise ends the whole group."""
    guard = _active
    if guard is not None:
        guard.groups.add(pid)
    try:
        while True:
            code = poll() if poll is not None else _poll_pid(pid)
            if code is not None:
                return code
            if check is not None:
                check()
            time.sleep(interval)
    except BaseException:
        kill_group(pid)
        raise
    finally:
        if guard is not None:
            guard.groups.discard(pid)


def _poll_pid(pid: int) -> int | None:
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


# ------------------------------------------------------------------ children die with their parent


def die_with_parent(parent: int | None = None) -> None:
    """Get SIGKILL when the parent process dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a
    thread that watches the parent pid). ``parent`` is the pid this process must not
    outlive; if it is already gone, exit now."""
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:  # pragma: no cover - non-Linux fallback
        threading.Thread(
            target=_watch_parent, args=(parent,), daemon=True, name="synthalign-parent"
        ).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:  # pragma: no cover - non-Linux fallback
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


_forker: int | None = None


def _remember_forker() -> None:
    global _forker
    _forker = os.getpid()


def _child_dies_with_forker() -> None:
    if _forker is not None:
        die_with_parent(_forker)


def die_with_parent_in_forks() -> None:
    """Every process this one forks from now on (distilabel's step workers, its queue
    manager) dies with it. Permanent for the process: call it in a disposable one."""
    os.register_at_fork(before=_remember_forker, after_in_child=_child_dies_with_forker)


def die_with_parent_if_asked() -> None:
    """In a child started by ``subprocess`` with :data:`PARENT_ENV` set: die with that parent."""
    expected = os.environ.pop(PARENT_ENV, None)
    if expected and expected.isdigit():
        die_with_parent(int(expected))
