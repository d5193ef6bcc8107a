"""The small offline Condor recipe the end-to-end tests run (tests/test_condor.py, test_ray.py).

Small enough that ``builtin:tiny-random`` finishes every step fast; the question budget
is tight on purpose, so some question calls run out of tokens mid-JSON and must be
recorded. Each test says what it varies.
"""

from __future__ import annotations

from typing import Any

TINY_CONDOR: dict[str, Any] = {
    "name": "condor-tiny-test",
    "llm": "builtin:tiny-random",
    "num_samples": 21,
    "question": {"max_new_tokens": 80, "max_question_chars": 60, "batch_size": 8},
    "answer": {"max_new_tokens": 24, "batch_size": 8},
    "critique": {"max_new_tokens": 96, "max_field_chars": 40, "batch_size": 8},
    "refine": {"max_new_tokens": 24, "batch_size": 8},
    "drop_truncated": False,
    # the draw these tests were written against (a random model's survivors depend on the tags)
    "tag_sampling": "per_root",
    # one step loaded at a time (the vLLM path); the rerun test covers concurrent
    "load_stages": "sequential",
}
