"""User-facing errors.

Everything a user can fix (a typo in a recipe, a missing file, an unknown backend)
raises :class:`SynthalignError` with one line that says what is wrong and how to fix
it. The CLI prints that line and exits 2 without a traceback, so the message must be
complete on its own.
"""

from __future__ import annotations


class SynthalignError(Exception):
    """An error the user can fix; its message is one self-contained line."""


class RecipeError(SynthalignError):
    """A recipe (YAML config) is invalid."""


class BackendError(SynthalignError):
    """An LLM backend spec cannot be resolved or its engine is missing."""


class SeedDataError(SynthalignError):
    """Seed data is missing, empty or malformed."""


class OutputError(SynthalignError):
    """An output folder or Hub push cannot be done safely."""
