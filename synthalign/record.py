"""The run record: ``synthalign.json`` in a run's output folder.

It says which method and recipe made the folder and which states of the run are
finished (their folders, row counts and trained models), so a rerun of the same
command resumes after the last finished state and refuses to mix two recipes in one
folder. When the run publishes the output folder itself (``State.folder == "."``),
the record travels inside that Hub folder's atomic write; otherwise (a run whose
states write subfolders) it is written on its own, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import versions
from synthalign.contract import Progress, State
from synthalign.errors import OutputError
from synthalign.secrets import known_secret_values, scrub

if TYPE_CHECKING:
    from synthalign.contract import Method
    from synthalign.recipes import Recipe

RUN_RECORD = "synthalign.json"
RECORD_KEYS = ("method", "recipe", "fingerprint", "seed", "versions", "states")

# Keys that say how or where to run, never what to make: a resume may change them.
_RUN_ONLY_KEYS = frozenset(
    {
        "cache_dir",
        "resources",
        "rounds",
        "api_key",
        "batch_size",
        "stall_timeout",
        "max_failed_fraction",
        "price_per_million",
    }
)


def _without_run_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_only(v) for k, v in value.items() if k not in _RUN_ONLY_KEYS}
    if isinstance(value, list):
        return [_without_run_only(v) for v in value]
    return value


def recipe_fingerprint(recipe: Recipe) -> str:
    """What must not change between a run and its resume."""
    data = _without_run_only(recipe.model_dump(mode="json"))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary sibling and rename it: a kill leaves old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunRecord:
    """The finished states of one run folder, and the facts every card and rerun needs."""

    def __init__(
        self, output: Path, method: Method, recipe: Recipe, data: dict[str, Any] | None = None
    ) -> None:
        self.output = output
        self.data = data or {
            "method": method.name,
            "recipe": recipe.model_dump(mode="json"),
            "fingerprint": recipe_fingerprint(recipe),
            "seed": recipe.seed,
            "versions": versions(),
            "states": [],
        }

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, output: Path, method: Method, recipe: Recipe, *, resume: bool) -> RunRecord:
        """A fresh record, or the folder's own when ``resume`` and it matches the recipe."""
        path = output / RUN_RECORD
        if not resume or not path.is_file():
            return cls(output, method, recipe)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise OutputError(f"{path} is unreadable: pass --overwrite to start over") from None
        if data.get("method") != method.name:
            raise OutputError(
                f"{output} holds a {data.get('method')!r} run, not {method.name!r}: "
                "choose another --output"
            )
        if data.get("fingerprint") != recipe_fingerprint(recipe):
            raise OutputError(
                f"{output} was made with a different {method.name} recipe: "
                "use that recipe to resume, or pass --overwrite to start over"
            )
        data.setdefault("states", [])
        # the record's own keys only: a Hub folder's copy also holds what its last
        # state's card showed (rows, counts, iteration), which the next state replaces
        return cls(output, method, recipe, {k: data[k] for k in RECORD_KEYS if k in data})

    # ------------------------------------------------------------ states

    @property
    def progress(self) -> Progress:
        return Progress(self.data["states"])

    def done(self, state: State) -> bool:
        entry = self.progress.record(state.key)
        return entry is not None and bool(entry.get("complete"))

    def written(self, state: State) -> dict[str, Any] | None:
        """The entry of a state whose folder is written (its training may be pending)."""
        return self.progress.record(state.key)

    def begin(
        self,
        state: State,
        path: Path,
        counts: dict[str, int],
        usage: list[dict[str, Any]] | None = None,
        facts: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a state whose folder is about to be written; complete once trained.

        ``usage``: what its model calls used (:mod:`synthalign.accounting`); ``facts``:
        the method's :attr:`~synthalign.contract.Method.record_fields` of the state."""
        entry = {
            "key": state.key,
            "iteration": state.iteration,
            "stage": state.stage,
            "folder": state.folder,
            "path": str(path),
            "counts": counts,
            "models": {},
            "complete": not state.train,
            "usage": list(usage or []),
            **({"facts": dict(facts)} if facts else {}),
        }
        self.data["states"] = [s for s in self.data["states"] if s["key"] != state.key] + [entry]
        return entry

    def complete(self, state: State, models: dict[str, str]) -> None:
        entry = self.progress.record(state.key)
        if entry is None:
            raise KeyError(state.key)
        entry["models"] = dict(models)
        entry["complete"] = True

    def state_info(self, state: State, counts: dict[str, int]) -> dict[str, Any]:
        """What the card and ``synthalign.json`` of one state's folder hold.

        The output folder itself carries the whole record (the states too: that is
        what a resume reads); a subfolder carries the run's facts and its own state.
        """
        info = (
            dict(self.data)
            if state.folder == "."
            else {k: v for k, v in self.data.items() if k != "states"}
        )
        entry = self.progress.record(state.key) or {}
        return {
            **info,
            "iteration": state.iteration,
            "stage": state.stage,
            "counts": counts,
            "usage": {state.key: list(entry.get("usage") or [])},
            **dict(entry.get("facts") or {}),
            **dict(state.data),
        }

    def save(self) -> None:
        """Write the record into the output folder, atomically.

        When the output folder is itself a state's Hub folder, its ``synthalign.json``
        also holds what the card shows (``rows``, ``counts``, ``iteration``...): those
        keys are kept, the record's own keys are updated.
        """
        path = self.output / RUN_RECORD
        existing: dict[str, Any] = {}
        if path.is_file():
            try:
                existing = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                existing = {}
        kept = (
            {k: v for k, v in existing.items() if k not in self.data}
            if isinstance(existing, dict)
            else {}
        )
        # scrubbed as the Hub folder's copy is: no credential, the home folder as ~
        write_json_atomic(path, scrub({**kept, **self.data}, known_secret_values()))
