"""The GRA quickstart recipe made fast for tests: four ``builtin:tiny-random`` members
(the quickstart pool minus SmolLM2), a few seeds, short generations, a test cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "pipelines" / "recipes" / "gra-quickstart.yaml"
TINY = "builtin:tiny-random"


def tiny_gra_recipe(tmp_path: Path, *, limit: int, samples: int, **changes: Any) -> Path:
    """Write the recipe to ``tmp_path/gra.yaml``; ``changes`` are top-level recipe keys."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data.update(
        pool=[{"spec": TINY, "seed": s} for s in (1, 2, 3, 4)],
        seed_data={
            **data["seed_data"],
            "source": str(ROOT / data["seed_data"]["source"]),
            "limit": limit,
        },
        samples_per_round=samples,
        cache_dir=str(tmp_path / "cache"),
        **changes,
    )
    data["generation"].update(max_new_tokens=24, structured_max_new_tokens=200)
    path = tmp_path / "gra.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
