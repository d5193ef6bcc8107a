"""Recipes: one YAML per run, validated into a pydantic config before anything loads.

Validation errors become one line that names the file, the key path and the fix;
unknown keys get the closest known key as a suggestion (``thresold`` -> ``threshold``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
)

from synthalign.errors import RecipeError

R = TypeVar("R", bound="Recipe")


def _resolve_recipe_path(value: str, info: ValidationInfo) -> str:
    """A relative path in a recipe means relative to the recipe file, when it exists
    there; otherwise it is left as written (a path relative to the working directory,
    or a Hub id)."""
    recipe_dir = (info.context or {}).get("recipe_dir")
    if recipe_dir is None or not value or Path(value).is_absolute() or value.startswith("builtin:"):
        return value
    candidate = Path(recipe_dir) / value
    if candidate.exists() and not Path(value).exists():
        return str(candidate.resolve())
    if Path(value).exists():
        return str(Path(value).resolve())
    return value


RecipePath = Annotated[str, AfterValidator(_resolve_recipe_path)]
"""A file path (or Hub id) in a recipe, resolved against the recipe's folder."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Recipe(StrictModel):
    """Fields every method's recipe has."""

    name: str = Field(default="synthalign", description="run name, used for the distilabel cache")
    seed: int = Field(default=0, description="seeds sampling, role draws and generation")
    cache_dir: str | None = Field(
        default=None, description="distilabel cache folder (default ~/.cache/distilabel); a rerun resumes from it"
    )
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "API key for the recipe's openai: LLM servers (default: $OPENAI_API_KEY); kept as a "
            "SecretStr and never written to pipeline.yaml, the card, the run record or logs"
        ),
    )

    def llm_specs(self) -> list[str]:
        """Every LLM spec the recipe uses (checked before the run starts)."""
        return []


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``loc`` (for suggestions)."""
    current: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[0] if nested else annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def describe_validation_error(exc: ValidationError, cls: type[BaseModel], source: str) -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        owner = _model_at(cls, loc)
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"{source}: unknown key '{where}'{hint}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) else ""
    return f"{source}: '{where}' {err['msg'].lower()}{shown}"


def parse_recipe(data: dict[str, Any], cls: type[R], source: str = "recipe", recipe_dir: Path | None = None) -> R:
    try:
        return cls.model_validate(data, context={"recipe_dir": recipe_dir})
    except ValidationError as exc:
        raise RecipeError(describe_validation_error(exc, cls, source)) from None


def load_recipe(path: str | Path, cls: type[R]) -> R:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found: pass an existing YAML file (see pipelines/recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text; save the recipe as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of keys to values, got {type(data).__name__}")
    return parse_recipe(data, cls, str(path), recipe_dir=path.parent)


def apply_api_key(pipeline: Any, api_key: SecretStr | None) -> int:
    """Give ``api_key`` to every OpenAI-compatible LLM of ``pipeline`` that has none.

    The key stays a :class:`~pydantic.SecretStr` on the LLM object (an excluded field),
    so distilabel never serializes it. Returns how many LLMs received it.
    """
    if api_key is None:
        return 0
    from distilabel.constants import STEP_ATTR_NAME

    from synthalign.llms.openai import OpenAICompatLLM

    def llms_in(value: Any) -> list[OpenAICompatLLM]:
        if isinstance(value, OpenAICompatLLM):
            return [value]
        if isinstance(value, list | tuple):
            return [llm for item in value for llm in llms_in(item)]
        if isinstance(value, dict):
            return [llm for item in value.values() for llm in llms_in(item)]
        return []

    given = 0
    for name in pipeline.dag:
        step = pipeline.dag.get_step(name)[STEP_ATTR_NAME]
        for value in vars(step).values():
            for llm in llms_in(value):
                if llm.api_key is None:
                    llm.api_key = api_key
                    given += 1
    return given
