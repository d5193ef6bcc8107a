"""Everything a run needs, checked before any model loads, each failure in one line.

A mistake found after an hour of generation costs the hour: a seed row without its
column (the step raised ``KeyError`` mid-run and the pipeline hung), an output folder
that cannot be written, a full disk, a misspelt repo id or a rejected token (found at
the push), a server that is down or refuses the key, a folder that is not a model.
:func:`preflight` (called by :mod:`synthalign.run` for every method) finds all of
these first:

- **seed rows**: every row of every seed section (each ``synthalign.recipes.SeedData``
  of the recipe) has the columns the section names (its ``*_column`` keys), with the
  expected type (text; a ``messages_column`` holds a chat) and no null, unless the
  section lists the column's key in ``nullable_columns``; the error names the file and
  line (JSONL) or row;
- **folders**: the output folder and the cache dir are folders (or can be made), are
  writable, and their disk has room for the run's estimate;
- **the Hub**: the repo id is valid and the token is accepted (``whoami``);
- **models**: every ``openai:`` server answers ``GET /models`` with its key, and every
  local model path is a model (a folder with ``config.json``, or a GGUF file).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from synthalign.errors import OutputError, SeedDataError
from synthalign.llms import check_model_folder
from synthalign.llms.openai import API_KEY_ENV_VAR, OpenAICompatLLM, parse_openai_spec
from synthalign.recipes import LLMRole, Recipe, RewardModel, SeedData
from synthalign.steps.decontaminate import load_eval_items
from synthalign.steps.seeds import read_seed_rows

__all__ = [
    "check_folder",
    "check_push",
    "check_seed_rows",
    "check_servers",
    "estimate_bytes",
    "preflight",
]

MIN_FREE_ENV = "SYNTHALIGN_MIN_FREE_MB"
MIN_FREE_MB = 256
"""Free space a run needs at least (models' outputs, the batch store, parquet, the card)."""


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every pydantic section of a recipe, with its dotted key."""
    if isinstance(value, BaseModel):
        yield path, value
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


# ------------------------------------------------------------------ seed rows


def seed_columns(section: SeedData) -> dict[str, str]:
    """``{key: column}`` of the columns a seed section reads.

    A section's ``columns`` (when it defines them) win; otherwise every ``*_column`` key
    that is set. A ``messages_column`` is the alternative to ``prompt_column``: with a
    prompt column set, the messages column is not read.
    """
    keys = {k: getattr(section, k) for k in type(section).model_fields if k.endswith("_column")}
    named = {k: v for k, v in keys.items() if isinstance(v, str) and v}
    listed = getattr(section, "columns", None)
    if isinstance(listed, list | tuple):
        return {next((k for k, v in named.items() if v == c), c): c for c in listed}
    if named.get("prompt_column"):
        named.pop("messages_column", None)
    return named


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )


def _problem(row: dict[str, Any], key: str, column: str, nullable: bool) -> str | None:
    if column not in row:
        return f"no '{column}' column"
    value = row[column]
    if value is None:
        return None if nullable else f"'{column}' is null"
    if key == "messages_column":
        return (
            None
            if _is_chat(value)
            else f"'{column}' must be a chat (a list of {{role, content}}), "
            f"got {type(value).__name__}"
        )
    if not isinstance(value, str):
        return f"'{column}' must be text, got {type(value).__name__} {value!r:.40}"
    return None


def _jsonl_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines (the rows) of a JSONL file."""
    with path.open("rb") as handle:
        return [n for n, raw in enumerate(handle, start=1) if raw.strip()]


def _locator(source: str) -> Any:
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        lines = _jsonl_lines(path)
        return lambda i: f"{path}:{lines[i]}" if i < len(lines) else f"{path} row {i + 1}"
    return lambda i: f"{source} row {i + 1}"


def check_seed_rows(where: str, section: SeedData) -> int:
    """Every row the run will read, checked; returns how many."""
    columns = seed_columns(section)
    rows = read_seed_rows(
        section.source, limit=section.limit, split=section.split, config=section.config
    )
    nullable = set(getattr(type(section), "nullable_columns", ()))
    locate = _locator(section.source)
    for i, row in enumerate(rows):
        for key, column in columns.items():
            problem = _problem(row, key, column, key in nullable)
            if problem:
                raise SeedDataError(
                    f"{locate(i)}: {problem} (the recipe's {where}.{key}): "
                    f"fix or remove that row, or set {where}.{key}"
                )
    return len(rows)


def seed_sections(recipe: Recipe) -> list[tuple[str, SeedData]]:
    return [(path, value) for path, value in _walk(recipe) if isinstance(value, SeedData)]


# ------------------------------------------------------------------ folders and disk


def estimate_bytes(recipe: Recipe) -> int:
    """Room a run needs: a floor, or four times its local seed files (inputs are copied
    through every step, with model outputs and the batch store beside them)."""
    floor = int(os.environ.get(MIN_FREE_ENV, MIN_FREE_MB)) * 2**20
    seeds = 0
    for _, section in seed_sections(recipe):
        path = Path(section.source).expanduser()
        seeds += path.stat().st_size if path.is_file() else 0
    return max(floor, 4 * seeds)


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def check_folder(path: Path, what: str, need: int) -> None:
    """``path`` is (or can become) a writable folder on a disk with ``need`` bytes free."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder: choose a folder path")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {base} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".synthalign-write-check-", dir=base).cleanup()
    except OSError as exc:
        raise OutputError(
            f"{what} {path} is not writable ({exc.strerror}): choose a folder you can write to"
        ) from None
    free = shutil.disk_usage(base).free
    if free < need:
        raise OutputError(
            f"{what} {path}: {free / 2**20:.0f} MiB free on its disk, "
            f"the run needs about {need / 2**20:.0f} MiB: "
            "free some space or choose another disk"
        )


def cache_folder(recipe: Recipe) -> Path:
    """Where distilabel caches the run (the recipe's ``cache_dir``, else distilabel's default)."""
    if recipe.cache_dir:
        return Path(recipe.cache_dir).expanduser()
    if os.environ.get("DISTILABEL_CACHE_DIR"):
        return Path(os.environ["DISTILABEL_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "distilabel" / "pipelines"


# ------------------------------------------------------------------ the Hub


def check_push(repo_id: str) -> None:
    """A valid repo id, and a token the Hub accepts, before any generation."""
    from huggingface_hub import HfApi, constants, get_token  # heavy: huggingface_hub
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0]
        raise OutputError(
            f"--push-to-hub {repo_id!r} is not a valid repo id ({reason}): write NAMESPACE/NAME"
        ) from None
    token = get_token()
    if not token:
        raise OutputError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"
        )
    try:
        HfApi().whoami(token=token)
    except Exception as exc:  # HTTP 401, a connection error: one line either way
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise OutputError(
                f"the Hub at {constants.ENDPOINT} rejected the token (HTTP {status}): "
                "run `hf auth login` with a token that can write, or set HF_TOKEN"
            ) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OutputError(
            f"cannot reach the Hub at {constants.ENDPOINT} to check the token ({first}): "
            "check the network"
        ) from None


# ------------------------------------------------------------------ servers and model folders


def _role_keys(recipe: Recipe) -> dict[str, SecretStr]:
    """``spec -> api_key`` of every LLM role that sets its own key."""
    default = getattr(recipe, "llm", None)
    keys: dict[str, SecretStr] = {}
    for _, section in _walk(recipe):
        if isinstance(section, LLMRole) and section.api_key is not None:
            spec = section.llm or default
            if spec:
                keys.setdefault(spec, section.api_key)
    return keys


def check_servers(recipe: Recipe) -> None:
    """Every ``openai:`` server answers ``GET /models`` with the key the run will send."""
    keys = _role_keys(recipe)
    env_key = os.environ.get(API_KEY_ENV_VAR)
    for spec in recipe.llm_specs():
        if not spec.startswith("openai:"):
            continue
        base_url, model = parse_openai_spec(spec)
        key = keys.get(spec) or recipe.api_key or (SecretStr(env_key) if env_key else None)
        probe = OpenAICompatLLM(
            model=model, base_url=base_url, api_key=key, max_retries=1, timeout=10.0, backoff_s=0.2
        )
        probe.check_reachable()


def check_reward_models(recipe: Recipe) -> None:
    for where, section in _walk(recipe):
        if isinstance(section, RewardModel) and not section.model.startswith("builtin:"):
            check_model_folder(section.model, f"{where}.model")


def check_eval_sets(recipe: Recipe) -> None:
    """Every decontamination set readable and with a text column, before any model loads."""
    block = getattr(recipe, "decontaminate", None)
    for spec in block.against if block else []:
        load_eval_items(spec)


# ------------------------------------------------------------------ all of it


def preflight(recipe: Recipe, output: Path, push_to_hub: str | None) -> None:
    """The checks no method has to think about (the driver runs the method's own first)."""
    for where, section in seed_sections(recipe):
        check_seed_rows(where, section)
    need = estimate_bytes(recipe)
    check_folder(output, "--output", need)
    check_folder(cache_folder(recipe), "cache_dir", need)
    check_reward_models(recipe)
    check_eval_sets(recipe)
    check_servers(recipe)
    if push_to_hub:
        check_push(push_to_hub)
