"""A minimal real pipeline for foundation tests: JSONL seeds -> one structured LLM step.

Run as a script (``python tests/demo_pipeline.py SPEC SEEDS OUT``) it builds the
pipeline, runs it, and writes the Hub-layout folder; the foundation tests use it per
backend and then rerun the folder's ``pipeline.yaml`` with the distilabel CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from distilabel.pipeline import Pipeline
from pydantic import BaseModel, Field

from synthalign.cards.base import CardContent
from synthalign.hub import write_hub_folder
from synthalign.llms import load_llm
from synthalign.steps.base import SchemaTask, provenance_columns
from synthalign.steps.seeds import LoadSeeds


class Rating(BaseModel):
    score: int = Field(ge=0, le=10)
    label: Literal["good", "bad", "neutral"]
    reason: str = Field(max_length=60)


class RateInstruction(SchemaTask):
    """Rates an instruction; exists so tests exercise a real structured step."""

    output_model: ClassVar[type[BaseModel]] = Rating
    template: ClassVar[str] = "demo_rate_instruction.jinja2"
    column_prefix: ClassVar[str] = "rating"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["score", "label", "reason", *provenance_columns(self.column_prefix)]


def build(spec: str, seeds: str, cache_dir: str | None = None, **engine: Any) -> Pipeline:
    with Pipeline(name="synthalign-demo", cache_dir=cache_dir) as pipeline:
        load = LoadSeeds(source=seeds, columns=["instruction"])
        rate = RateInstruction(
            llm=load_llm(spec, max_new_tokens=64, temperature=0, engine_kwargs=engine),
            input_batch_size=64,
        )
        load >> rate
    return pipeline


def run(spec: str, seeds: str, out: str, cache_dir: str | None = None, **engine: Any) -> Path:
    distiset = build(spec, seeds, cache_dir, **engine).run(use_cache=False)
    data = distiset["default"]["train"].remove_columns(["distilabel_metadata"])
    card = CardContent(
        metadata={"license": "apache-2.0", "tags": ["synthetic"]}, body="# demo\n", figures={}
    )
    return write_hub_folder(
        Path(out),
        {"default": data},
        card,
        pipeline_yaml=distiset.pipeline_path,
        run_info={"method": "demo", "counts": {"default": len(data)}},
        default_config="default",
    )


if __name__ == "__main__":
    print(run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None))
