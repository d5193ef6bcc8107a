"""Where SynPO's rows come from: the seed SFT data, the corpus, earlier iterations' pairs.

Each is a distilabel generator step that reads the recipe's own source (a file or a
Hub dataset), so a stage folder's ``pipeline.yaml`` reruns from the same sources and
not from work files written beside the run:

- :class:`LoadSeedExamples`: the seed data's first user turn and the answer after it
  (``prompt``, ``response``, ``seed_index``);
- :class:`BuildGeneratorExamples`: a global step that turns the seed prompts into the
  self-prompt generator's examples (two of the prompt's keywords, one noise keyword
  from another prompt; section 2.1);
- :class:`SampleKeywordLists`: keyword lists from corpus paragraphs, skipping the
  paragraphs earlier iterations consumed (``skip``, passed in by the loop);
- :class:`LoadPairs`: the ``pairs`` configs of earlier iterations' folders, for the
  growing preference set.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.steps import GeneratorStep, GlobalStep, StepInput
from pydantic import Field

from synthalign.errors import SeedDataError
from synthalign.steps.columns import FixedColumns
from synthalign.steps.keywords import (
    KeywordExtractor,
    build_generator_examples,
    read_paragraphs,
    sample_keyword_lists,
)
from synthalign.steps.seeds import generator_batches, read_seed_rows

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns, StepOutput

__all__ = [
    "BuildGeneratorExamples",
    "LoadPairs",
    "LoadSeedExamples",
    "SampleKeywordLists",
    "first_exchange",
    "read_config",
    "read_seed_examples",
]

logger = logging.getLogger(__name__)


def _extractor(step: Any) -> KeywordExtractor:
    """YAKE with a step's ``language`` / ``max_ngram`` / ``top`` (the recipe's ``keywords``)."""
    return KeywordExtractor(language=step.language, max_ngram=step.max_ngram, top=step.top)


# ------------------------------------------------------------------ seed data


def first_exchange(messages: Any) -> tuple[str | None, str | None]:
    """The first user turn and the assistant turn right after it (or ``(None, None)``)."""
    if not isinstance(messages, list):
        return None, None
    for i, message in enumerate(messages[:-1]):
        if isinstance(message, dict) and message.get("role") == "user":
            reply = messages[i + 1]
            if isinstance(reply, dict) and reply.get("role") == "assistant":
                return message.get("content"), reply.get("content")
            return None, None
    return None, None


def read_seed_examples(
    source: str,
    *,
    messages_column: str | None = "messages",
    prompt_column: str | None = None,
    response_column: str | None = None,
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Seed rows as ``{"prompt", "response", "seed_index"}``; rows without both are skipped.

    ``prompt_column`` / ``response_column`` name plain text columns; otherwise the first
    user turn of ``messages_column`` and the assistant turn after it are used.
    """
    columns = [prompt_column, response_column] if prompt_column else [messages_column]
    rows = read_seed_rows(
        source, [c for c in columns if c], limit=limit, split=split, config=config
    )
    out: list[dict[str, Any]] = []
    for row in rows:
        if prompt_column:
            prompt, response = row.get(prompt_column), row.get(response_column or "")
        else:
            prompt, response = first_exchange(row.get(messages_column or ""))
        if (
            isinstance(prompt, str)
            and isinstance(response, str)
            and prompt.strip()
            and response.strip()
        ):
            out.append(
                {"prompt": prompt.strip(), "response": response.strip(), "seed_index": len(out)}
            )
    if not out:
        raise SeedDataError(f"seed data {source}: no row has a user prompt and an assistant answer")
    return out


class LoadSeedExamples(FixedColumns, GeneratorStep):
    """Yields the seed data's (prompt, gold answer) pairs; its fields are ``seed_data``'s keys."""

    output_columns: ClassVar[tuple[str, ...]] = ("prompt", "response", "seed_index")

    source: str = Field(description="local file (jsonl/json/csv/parquet) or Hub dataset id")
    split: str = "train"
    config: str | None = None
    limit: int | None = None
    messages_column: str | None = "messages"
    prompt_column: str | None = None
    response_column: str | None = None

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        rows = read_seed_examples(
            self.source,
            messages_column=self.messages_column,
            prompt_column=self.prompt_column,
            response_column=self.response_column,
            split=self.split,
            config=self.config,
            limit=self.limit,
        )
        yield from generator_batches(rows, self.batch_size, offset)


class BuildGeneratorExamples(FixedColumns, GlobalStep):
    """Seed prompts -> the self-prompt generator's examples (keywords in, the prompt out).

    Global, because each prompt's noise keyword comes from another prompt. A prompt
    with too few keywords (or no noise donor) gives no example.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "seed_index")
    output_columns: ClassVar[tuple[str, ...]] = (
        "keywords", "prompt_keywords", "noise_keywords", "source_index", "completion",
    )  # fmt: skip

    seed: int = 0
    language: str = "en"
    max_ngram: int = 2
    top: int = 12
    from_prompt: int = Field(
        default=2, ge=1, description="keywords drawn from the seed prompt itself"
    )
    noise: int = Field(default=1, ge=0, description="noise keywords drawn from another seed prompt")

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = sorted(inputs, key=lambda row: row["seed_index"])
        examples, stats = build_generator_examples(
            [row["prompt"] for row in rows],
            seed=self.seed,
            extractor=_extractor(self),
            keywords_from_prompt=self.from_prompt,
            noise_keywords=self.noise,
        )
        logger.info("generator examples from %d seed prompts: %s", len(rows), stats)
        for example in examples:
            example["source_index"] = rows[example["source_index"]]["seed_index"]
        yield examples


# ------------------------------------------------------------------ corpus


class SampleKeywordLists(FixedColumns, GeneratorStep):
    """``num_lists`` keyword lists, each from its own corpus paragraph (section 2.1).

    Paragraphs are visited in one order seeded by ``seed``; the first ``skip`` of that
    order were consumed by earlier iterations and are passed over. When the corpus is
    used up, sampling starts over from its first paragraph rather than stopping.
    """

    output_columns: ClassVar[tuple[str, ...]] = (
        "keywords", "paragraph_index", "paragraph_position",
    )  # fmt: skip

    source: str = Field(
        description="local .txt (a paragraph per line) / JSONL, or a Hub dataset id (streamed)"
    )
    text_column: str = "text"
    split: str = "train"
    config: str | None = None
    max_documents: int | None = None
    min_words: int = 20
    language: str = "en"
    max_ngram: int = 2
    top: int = 12
    num_lists: int = Field(default=1, ge=1)
    skip: int = Field(
        default=0, ge=0, description="paragraphs of the seeded order used by earlier iterations"
    )
    per_list: int = Field(default=3, ge=1)
    seed: int = 0

    def sample(self) -> list[dict[str, Any]]:
        paragraphs = read_paragraphs(
            self.source,
            text_column=self.text_column,
            split=self.split,
            config=self.config,
            max_documents=self.max_documents,
            min_words=self.min_words,
            seed=self.seed,
        )
        options = {"seed": self.seed, "per_list": self.per_list, "extractor": _extractor(self)}
        rows, stats = sample_keyword_lists(paragraphs, self.num_lists, skip=self.skip, **options)
        if not rows and self.skip:
            logger.warning(
                "corpus %s used up after %d paragraphs; reusing paragraphs", self.source, self.skip
            )
            rows, stats = sample_keyword_lists(paragraphs, self.num_lists, skip=0, **options)
        if not rows:
            raise SeedDataError(
                f"corpus {self.source} gave no keyword list: use a larger corpus or lower "
                "keywords.per_list"
            )
        logger.info(
            "keyword lists from %d paragraphs (skip %d): %s", len(paragraphs), self.skip, stats
        )
        return [
            {k: row[k] for k in ("keywords", "paragraph_index", "paragraph_position")}
            for row in rows
        ]

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        yield from generator_batches(self.sample(), self.batch_size, offset)


# ------------------------------------------------------------------ preference set


def read_config(folder: str, config: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of one config of a Hub-layout folder, read from its parquet shards ([] if none)."""
    import pyarrow.parquet as pq  # heavy: pyarrow

    files = sorted((Path(folder).expanduser() / "data" / config).glob("*.parquet"))
    return [row for file in files for row in pq.read_table(file, columns=columns).to_pylist()]


class LoadPairs(GeneratorStep):
    """Rows of one config (``pairs``) of earlier stage folders, in the order given."""

    folders: list[str] = Field(
        default_factory=list, description="Hub-layout folders, absolute paths"
    )
    config: str = "pairs"
    columns: list[str] = Field(default_factory=list)

    @property
    def outputs(self) -> "StepColumns":
        return self.columns

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        rows = [
            row
            for folder in self.folders
            for row in read_config(folder, self.config, self.columns or None)
        ]
        yield from generator_batches(rows, self.batch_size, offset)
