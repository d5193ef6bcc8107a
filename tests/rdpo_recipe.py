"""The small offline rDPO recipe the end-to-end tests run as a user would.

A ``builtin:tiny-random`` teacher and the ``builtin:tiny-reward`` scorer, so a whole
``synthalign generate rdpo`` takes seconds on a CPU; each test says what it varies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_tiny_rdpo_recipe(
    folder: Path,
    name: str,
    seeds: Path,
    *,
    batch: int,
    teacher: dict[str, Any] | None = None,
    **keys: Any,
) -> Path:
    """``folder/recipe.yaml``: ``batch`` rows per teacher call and per reward-model pass,
    the distilabel cache in ``folder/cache``; ``teacher`` and ``keys`` add or override keys."""
    recipe = {
        "name": name,
        "cache_dir": str(folder / "cache"),
        "seed_data": {"source": str(seeds)},
        "teacher": {"llm": "builtin:tiny-random", "batch_size": batch, **(teacher or {})},
        "scoring": {
            "kind": "reward_model",
            "reward_model": {"model": "builtin:tiny-reward", "batch_size": batch},
        },
        **keys,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
