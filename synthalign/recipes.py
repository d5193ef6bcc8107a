"""Recipes: one YAML per run, validated into a pydantic config before anything loads.

Validation errors become one line that names the file, the key path and the fix;
unknown keys get the closest known key as a suggestion (``thresold`` -> ``threshold``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from synthalign.errors import RecipeError

if TYPE_CHECKING:
    from distilabel.steps import StepResources

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


def _is_number(annotation: Any) -> bool:
    """``int``, ``float`` or an optional one (and never ``bool``)."""
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)


RecipePath = Annotated[str, AfterValidator(_resolve_recipe_path)]
"""A file path (or Hub id) in a recipe, resolved against the recipe's folder."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, not silently ignored.

    ``renamed`` maps keys a section used to have to their new names, so an old recipe
    gets "renamed to ..." instead of a guess.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    renamed: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes ``true`` for ``1``; a count or a rate given as a boolean is a mistake."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _is_number(field.annotation):
            raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
        return value


class EvalSet(StrictModel):
    """One evaluation set to check against: a local file or a Hub id, its split and column.

    Written in a recipe either as this mapping or as ``SOURCE[:split[:column]]``.
    """

    source: RecipePath = Field(description="local file (relative to the recipe) or Hub dataset id")
    split: str = Field(default="test", description="Hub split")
    config: str | None = Field(default=None, description="Hub dataset config")
    column: str | None = Field(
        default=None,
        description="text column (default: the first of prompt, question, instruction, problem,"
        " text, input)",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        source, _, rest = value.partition(":")
        split, _, column = rest.partition(":")
        return {"source": source, "split": split or "test", "column": column or None}

    @property
    def name(self) -> str:
        """How the card and the rows name this set: the file's stem or the Hub id."""
        path = Path(self.source)
        return path.stem if path.suffix else f"{self.source}:{self.split}"


class Decontaminate(StrictModel):
    """Check every prompt and answer against evaluation sets before publishing.

    A row matches when it shares a word ``ngram`` (13 by default, the usual contamination
    check; an eval item shorter than that must appear whole) or when its embedding is
    within ``embedding_threshold`` cosine of an item (``null`` turns that check off).
    """

    against: list[EvalSet] = Field(min_length=1, description="SOURCE[:split[:column]] each")
    ngram: int = Field(default=13, ge=4, le=64)
    embedding_threshold: float | None = Field(default=0.9, gt=0, le=1)
    action: Literal["drop", "flag"] = Field(
        default="drop", description="drop the matching rows, or publish them flagged"
    )
    model: str = Field(default="builtin:minilm", description="sentence-transformers model")
    batch_size: int = Field(default=64, ge=1)


class Price(StrictModel):
    """A model's price in USD per million tokens (for the run's accounting)."""

    input: float = Field(default=0.0, ge=0, description="USD per million input tokens")
    output: float = Field(default=0.0, ge=0, description="USD per million output tokens")


class Recipe(StrictModel):
    """Fields every method's recipe has."""

    name: str = Field(default="synthalign", description="run name, used for the distilabel cache")
    seed: int = Field(default=0, description="seeds sampling, role draws and generation")
    cache_dir: str | None = Field(
        default=None,
        description="distilabel cache folder (default ~/.cache/distilabel); a rerun resumes from it",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "API key for the recipe's openai: LLM servers (default: $OPENAI_API_KEY); kept as a "
            "SecretStr and never written to pipeline.yaml, the card, the run record or logs"
        ),
    )
    stall_timeout: float = Field(
        default=1800.0,
        gt=0,
        description=(
            "seconds a run may go without progress (no model loaded, no batch finished, no training "
            "step) before it ends with one line naming the stuck step; the rerun resumes"
        ),
    )
    max_failed_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "the run fails, publishing and pushing nothing, when more of the rows it considered "
            "than this fraction failed (a model gave no usable output)"
        ),
    )
    decontaminate: Decontaminate | None = Field(
        default=None,
        description="check every prompt and answer against evaluation sets (drop or flag)",
    )

    def llm_specs(self) -> list[str]:
        """Every LLM spec the recipe uses (checked before the run starts)."""
        return []


# ------------------------------------------------------------------ shared blocks
# One vocabulary for every method: the same key means the same thing in every recipe.


class StageResources(StrictModel):
    """Resources of one LLM stage (distilabel ``StepResources``; see docs/perf-ray.md).

    ``replicas``: copies of the step, each with its own engine, fed batches in turn (on
    Ray with ``gpus: 1``, one vLLM replica per GPU). ``gpus``: GPUs per replica on Ray
    (the engine's ``tensor_parallel_size``). ``cpus``: CPUs per replica (Ray only).
    """

    replicas: int = Field(
        default=1, ge=1, description="copies of the step, each with its own engine (one per GPU)"
    )
    gpus: int | None = Field(
        default=None,
        ge=1,
        description="GPUs per replica on Ray (= the engine's tensor_parallel_size)",
    )
    cpus: int | None = Field(default=None, ge=1, description="CPUs per replica on Ray")

    def step_resources(self) -> StepResources:
        from distilabel.steps import StepResources  # heavy: distilabel

        return StepResources(replicas=self.replicas, gpus=self.gpus, cpus=self.cpus)


class LLMRole(StrictModel):
    """One role's model and decoding (question writer, teacher, judge, reviewer...).

    ``llm`` empty means the recipe's own ``llm``. The defaults are common chat-sampling
    values; each method's recipe sets the paper's where the paper gives them.
    """

    llm: str | None = Field(
        default=None, description="LLM spec for this role (default: the recipe's llm)"
    )
    temperature: float = Field(default=0.7, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    batch_size: int = Field(
        default=256,
        ge=1,
        description="rows per engine call (distilabel input_batch_size); large keeps the engine busy",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="backend options (tensor_parallel_size, gpu_memory_utilization, ...)",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="key for this role's openai: server (default: the recipe's api_key)",
    )
    resources: StageResources = Field(
        default_factory=StageResources, description="replicas / GPUs of this role's step"
    )
    price_per_million: Price | None = Field(
        default=None,
        description=(
            "USD per million input / output tokens of this role's model, e.g. "
            "{input: 0.15, output: 0.6}: the run's accounting then shows cost"
        ),
    )

    def spec(self, default: str | None) -> str:
        spec = self.llm or default
        if not spec:
            raise RecipeError(
                "an LLM role has no `llm` and the recipe sets no default `llm`: add one"
            )
        return spec

    def decoding(self, seed: int) -> dict[str, Any]:
        """The generation settings recorded in rows and cards."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "seed": seed,
        }


class SeedData(StrictModel):
    """Seed rows: a local file (JSONL/JSON/CSV/Parquet/TXT, relative to the recipe) or a Hub id."""

    source: RecipePath = Field(description="local file (relative to the recipe) or Hub dataset id")
    split: str = Field(default="train", description="Hub split")
    config: str | None = Field(default=None, description="Hub dataset config")
    limit: int | None = Field(default=None, ge=1, description="use the first N rows")


class RewardModel(StrictModel):
    """A transformers sequence-classification reward model (Skywork/ArmoRM-style)."""

    model: str = Field(
        default="builtin:tiny-reward", description="builtin:NAME, a local folder or a Hub id"
    )
    batch_size: int = Field(default=8, ge=1)
    max_length: int | None = Field(default=None, ge=8)
    padding_side: Literal["auto", "left", "right"] = "auto"
    torch_dtype: str = "float32"
    trust_remote_code: bool = False


class Dedup(StrictModel):
    """Embedding deduplication: model and cosine threshold (GRA: all-MiniLM-L6-v2, 0.9)."""

    threshold: float = Field(
        default=0.9, gt=-1, le=1, description="a row is a duplicate at cosine >= this"
    )
    model: str = Field(default="builtin:minilm", description="sentence-transformers model")
    text_columns: list[str] = Field(default_factory=lambda: ["instruction", "response"])
    batch_size: int = Field(default=64, ge=1)
    device: str | None = None
    backend: Literal["torch", "onnx", "openvino"] = Field(
        default="torch",
        description="sentence-transformers backend; onnx/openvino need their pip extra",
    )


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``loc`` (for suggestions)."""
    current: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[0] if nested else annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _renamed_to(cls: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The new name of the key at ``loc``, when its section renamed it."""
    owner = _model_at(cls, loc)
    return owner.renamed.get(str(loc[-1])) if owner and issubclass(owner, StrictModel) else None


def describe_validation_error(exc: ValidationError, cls: type[BaseModel], source: str) -> str:
    errors = exc.errors()
    # a renamed key comes first: it is why its new name is "missing"
    renamed = [
        e for e in errors if e["type"] == "extra_forbidden" and _renamed_to(cls, tuple(e["loc"]))
    ]
    err = (renamed or errors)[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        owner = _model_at(cls, loc)
        known = list(owner.model_fields) if owner else []
        new_name = _renamed_to(cls, loc)
        if new_name:
            return f"{source}: key '{where}' was renamed to '{new_name}': rename it in the recipe"
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"{source}: unknown key '{where}'{hint}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) else ""
    return f"{source}: '{where}' {err['msg'].lower()}{shown}"


def parse_recipe(
    data: dict[str, Any], cls: type[R], source: str = "recipe", recipe_dir: Path | None = None
) -> R:
    try:
        return cls.model_validate(data, context={"recipe_dir": recipe_dir})
    except ValidationError as exc:
        raise RecipeError(describe_validation_error(exc, cls, source)) from None


def read_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """``path`` parsed as YAML; text that is not UTF-8 or not YAML is one ``error`` line
    naming the file and where (recipes and knowledge trees alike)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; save the {what} as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}: invalid YAML{where}: {problem}") from None


def load_recipe(path: str | Path, cls: type[R]) -> R:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"recipe {path} not found: pass an existing YAML file (see pipelines/recipes/)"
        )
    data = read_yaml(path, "recipe", RecipeError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a YAML mapping of keys to values, got {type(data).__name__}"
        )
    return parse_recipe(data, cls, str(path), recipe_dir=path.parent)


class PairwiseModel(LLMRole):
    """A pairwise scorer (PairRM-style): sees two responses to one prompt and gives
    P(the second is preferred). Today an LLM asked to compare them in both orders
    (:class:`synthalign.steps.pairwise.CompareWithLLM`); greedy, as a verdict."""

    llm: str = Field(description="LLM spec of the pairwise judge")
    temperature: float = Field(default=0.0, ge=0, description="0 = greedy")
    max_new_tokens: int = Field(default=256, ge=16)
    batch_size: int = Field(default=512, ge=1, description="comparisons per engine call / 2")
    criterion: str | None = Field(
        default=None, description="what makes a response better (default: the method's own)"
    )
