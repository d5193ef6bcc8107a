"""Prompt templates: Jinja files in ``steps/prompts/``, one file per prompt.

A template's name and a short content hash go into every row it produced, so a card
can say exactly which wording made a dataset and a changed prompt is visible.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template

PROMPTS_DIR = Path(__file__).parent / "prompts"

_env = Environment(
    loader=FileSystemLoader(PROMPTS_DIR),
    undefined=StrictUndefined,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


@cache
def load_template(name: str) -> Template:
    return _env.get_template(name)


@cache
def template_id(name: str) -> str:
    """``name@hash12``: what rows record as their prompt provenance."""
    digest = hashlib.sha256((PROMPTS_DIR / name).read_bytes()).hexdigest()[:12]
    return f"{name}@{digest}"


def render(name: str, **values: object) -> str:
    return load_template(name).render(**values).strip()
