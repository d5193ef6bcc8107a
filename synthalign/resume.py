"""Crash-safe resume for ``synthalign generate``: a content-addressed store of step outputs.

Why not distilabel's own ``use_cache=True`` resume? distilabel 1.5.3 checkpoints its
batch manager after every batch, which survives a *graceful* stop (Ctrl-C), but not a
``SIGKILL``, an OOM kill or a lost machine:

* a batch that was sent to a step and not yet answered is in no saved state, so the
  rerun waits for it forever (the run hangs after loading its steps);
* rows of leaf steps are buffered in memory (50 at a time) before they reach
  ``steps_outputs/``, so they are lost while the batch manager counts them as done;
* its JSON files are written in place, so a kill mid-write leaves a truncated file.

synthalign therefore resumes one level lower. While a pipeline runs, every step that
does real work (a :class:`~distilabel.steps.tasks.Task` with its LLM, or any step with
its own ``load()``: reward models, embedders) stores the output of each input batch
under ``<cache_dir>/<pipeline name>/synthalign-batches/<step>/<key>.pkl``, where the key
hashes the step's distilabel signature (class, LLM, prompts, generation settings) and
the batch's rows. Each file is written to a temporary name and renamed, so it either
exists complete or not at all. A rerun runs the pipeline from the start with
distilabel's cache off; batches found in the store are returned without calling the
model. Batching is deterministic, so the rerun sees the same batches, and the final
dataset is exactly what an uninterrupted run writes: no row lost, none doubled.

A finished or interrupted rerun costs model loading plus reading the stored batches.
Change anything about a step (model, prompt, temperature, seed) and its signature
changes: its batches are recomputed, never reused by mistake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

__all__ = ["BATCH_STORE_DIRNAME", "BatchStore", "batch_store", "batch_store_dir", "install"]

logger = logging.getLogger(__name__)

BATCH_STORE_DIRNAME = "synthalign-batches"
_ENV = "SYNTHALIGN_BATCH_STORE"

_active: BatchStore | None = None
_installed = False


class BatchStore:
    """Step outputs keyed by (step signature, input rows); atomic, idempotent writes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, step_name: str, key: str) -> Path:
        return self.root / step_name / f"{key}.pkl"

    def get(self, step_name: str, key: str) -> Any | None:
        path = self._path(step_name, key)
        try:
            with path.open("rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry is recomputed, never trusted
            logger.warning("ignoring unreadable cached batch %s; it will be recomputed", path)
            return None

    def put(self, step_name: str, key: str, value: Any) -> None:
        path = self._path(step_name, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pkl", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def count(self, step_name: str | None = None) -> int:
        """Stored batches (of one step, or all): what a progress check or a test polls."""
        base = self.root / step_name if step_name else self.root
        return sum(1 for _ in base.rglob("*.pkl")) if base.is_dir() else 0


def batch_store_dir(pipeline: Pipeline) -> Path:
    """Where ``pipeline``'s step outputs are stored: next to distilabel's own cache."""
    return Path(pipeline._cache_dir) / pipeline.name / BATCH_STORE_DIRNAME


def _current() -> BatchStore | None:
    if _active is not None:
        return _active
    root = os.environ.get(_ENV)
    return BatchStore(root) if root else None


def _worth_storing(step: Any) -> bool:
    """Steps that call a model: a Task (its LLM) or any step with its own ``load()``."""
    from distilabel.steps.base import Step
    from distilabel.steps.tasks.base import _Task

    return isinstance(step, _Task) or type(step).load is not Step.load


def _encode(value: Any) -> Any:
    """JSON stand-ins for what rows may hold besides JSON (numpy arrays, bytes, paths).

    Never a summary: numpy's repr elides long arrays (``[0.1, ..., 0.3]``), which would
    let two different embedding batches share a key.
    """
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": hashlib.sha256(value).hexdigest()}
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return {"__repr__": repr(value)}


def _batch_key(step: Any, inputs: tuple[Any, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{type(step).__module__}.{type(step).__qualname__}\0{step.signature}\0".encode())
    digest.update(json.dumps(inputs, sort_keys=True, default=_encode, ensure_ascii=False).encode())
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_distilabel_writes_atomic() -> None:
    """distilabel writes its cache files (pipeline.yaml, batch manager JSON) in place; a
    kill mid-write leaves a truncated file that the next run fails to parse. Write to a
    temporary name and rename instead."""
    from distilabel.utils import serialization  # heavy: distilabel

    def write_json(filename: Path, data: Any) -> None:
        _atomic_write(Path(filename), orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))

    def write_yaml(filename: Path, data: dict[str, Any]) -> None:
        text = yaml.dump(data, default_flow_style=False, sort_keys=False)
        _atomic_write(Path(filename), text.encode("utf-8"))

    serialization.write_json = write_json
    serialization.write_yaml = write_yaml


def _drop_unreadable_cached_config(pipeline: Pipeline) -> None:
    """distilabel re-reads its cached pipeline.yaml at every start, cache or not; one left
    truncated by a crash before this module made the writes atomic would stop every rerun."""
    try:
        path = Path(pipeline._cache_location["pipeline"])
    except Exception:  # signature not computable yet: distilabel will report it
        return
    if not path.is_file():
        return
    try:
        type(pipeline).from_yaml(path)
    except Exception:
        logger.warning("removing %s: truncated by an interrupted run", path)
        path.unlink(missing_ok=True)


def install() -> None:
    """Wrap distilabel's ``Step.process_applying_mappings`` once (idempotent).

    The wrapper is a no-op unless a store is active (:func:`batch_store`). Step
    processes are forked from the process that runs the pipeline, so they inherit both
    the wrapper and the active store.
    """
    global _installed
    if _installed:
        return
    _make_distilabel_writes_atomic()
    from distilabel.steps.base import Step

    original = Step.process_applying_mappings

    def process_applying_mappings(self: Any, *args: Any) -> Iterator[Any]:
        store = _current()
        if store is None or not _worth_storing(self):
            yield from original(self, *args)
            return
        key = _batch_key(self, args)
        cached = store.get(self.name, key)
        if cached is not None:
            self._logger.info(f"♻️ '{self.name}': batch restored from {store.root} (no model call)")
            yield cached
            return
        outputs = original(self, *args)
        try:
            first = next(outputs)
        except StopIteration:
            return
        store.put(self.name, key, first)
        yield first
        yield from outputs

    process_applying_mappings.__wrapped__ = original  # type: ignore[attr-defined]
    Step.process_applying_mappings = process_applying_mappings  # type: ignore[method-assign]
    _installed = True


@contextmanager
def batch_store(pipeline: Pipeline) -> Iterator[BatchStore]:
    """Activate the store of ``pipeline`` for the duration of its run."""
    global _active
    install()
    _drop_unreadable_cached_config(pipeline)
    store = BatchStore(batch_store_dir(pipeline))
    previous, previous_env = _active, os.environ.get(_ENV)
    _active = store
    os.environ[_ENV] = str(store.root)
    try:
        yield store
    finally:
        _active = previous
        if previous_env is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous_env
