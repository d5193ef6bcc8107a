"""User-facing errors, and how a run that did not finish ends.

Everything a user can fix (a typo in a recipe, a missing file, an unknown backend)
raises :class:`SynthalignError` with one line that says what is wrong and how to fix
it. The CLI prints that line and exits with the error's ``exit_code`` (2 for a mistake
found before anything ran, 1 for a run that started and failed), without a traceback,
so the message must be complete on its own.

A stop (Ctrl-C, SIGTERM) is not an error: it raises :class:`RunStopped`, a
``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` in a
library swallows it on its way out.
"""

from __future__ import annotations

import signal

RESUME_HINT = "rerun the same command to resume"


class SynthalignError(Exception):
    """An error the user can fix; its message is one self-contained line."""

    exit_code: int = 2


class RecipeError(SynthalignError):
    """A recipe (YAML config) is invalid."""


class BackendError(SynthalignError):
    """An LLM backend spec cannot be resolved or its engine is missing."""


class SeedDataError(SynthalignError):
    """Seed data is missing, empty or malformed."""


class OutputError(SynthalignError):
    """An output folder or Hub push cannot be done safely."""


class RunFailed(SynthalignError):
    """The run started and could not finish: a worker died, a wait passed its deadline,
    or the outcome failed its checks. Nothing was published; finished batches are kept,
    so the same command resumes once the cause is fixed."""

    exit_code = 1


class RunStopped(BaseException):
    """A stop signal ended the run; exit ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped; {RESUME_HINT}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name
