"""Secret scrubbing: what keeps credentials out of everything synthalign writes.

A run record, a copied ``pipeline.yaml`` or a card may hold a recipe's ``api_key``, an
``HF_TOKEN`` picked up from the environment, or a bearer header quoted in free text.
Everything synthalign writes to disk or shows in an error goes through :func:`scrub`
or :func:`scrub_text` first, which replace such values by :data:`REDACTED`. Three
nets catch them, because any one alone misses cases users hit:

* keys that name a credential (``api_key``, ``token``, ``password``...), whatever the
  value looks like;
* the secret values present in this process (credential-like environment variables
  and the Hugging Face token), wherever they appear;
* strings shaped like a token (``hf_...``, ``sk-...``, ``Bearer ...``), under any key.

This module imports nothing heavy: ``huggingface_hub`` is loaded only when the known
secrets are collected, so the CLI and ``synthalign.hub`` stay quick to import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["REDACTED", "known_secret_values", "scrub", "scrub_text"]

REDACTED = "<redacted>"
"""What a secret is replaced by: visible, so a reader sees that something was there."""

# Keys whose values are credentials. Tokenizer special tokens ("eos_token") share the
# suffix but are configuration, not secrets, so they are exempt.
_SECRET_KEY_RE = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|secret(?:[_\-]?key)?|token|access[_\-]?key|password|passwd|"
    r"authorization|credentials?|private[_\-]?key)$|^(?:api[_\-]?key|token|secret|password|"
    r"authorization|credentials?)$",
    re.I,
)
_NOT_SECRET_KEYS = {
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "chat_token",
}
# Credential shapes worth catching even under an innocent key or inside free text.
_SECRET_VALUE_RES = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.=:/+]{8,}"),
)
_SECRET_ENV_RE = re.compile(r"(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
# ...except variables that name where a secret lives or how it is used (HF_TOKEN_PATH,
# TOKENIZERS_PARALLELISM): their values are ordinary text worth keeping in records.
_NOT_SECRET_ENV_RE = re.compile(r"(_PATH|_FILE|_DIR|_URL|_ENDPOINT|TOKENIZERS_PARALLELISM)$", re.I)
_MIN_SECRET_LEN = 8


def known_secret_values() -> list[str]:
    """Secret values present in this process: credential-like env vars and the HF token.

    Longest first, so that a secret containing another is replaced whole.
    """
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_ENV_RE.search(name)
        and not _NOT_SECRET_ENV_RE.search(name)
        and len(value) >= _MIN_SECRET_LEN
    }
    try:
        from huggingface_hub import get_token  # heavy: keeps import synthalign.secrets light

        token = get_token()
    except Exception:  # a broken login cache must not stop a write
        token = None
    if token and len(token) >= _MIN_SECRET_LEN:
        values.add(token)
    return sorted(values, key=len, reverse=True)


def home_relative(text: str) -> str:
    """``text`` with the home folder written ``~``: a published path names no user.

    Everything that reads such a path back (seed files, earlier stage folders, trained
    models, the resume record) expands ``~``, so a rerun by the same user still works.
    """
    home = os.path.expanduser("~").rstrip("/")
    if len(home) <= 1:
        return text
    return text.replace(home + "/", "~/")


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with known secrets and token-shaped strings replaced by :data:`REDACTED`,
    and the home folder by ``~``.

    For free text (a copied config, an error message) where no key says what is secret.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_VALUE_RES:
        text = pattern.sub(REDACTED, text)
    return home_relative(text)


def _is_secret_key(key: str) -> bool:
    """Whether a mapping key names a credential (tokenizer special tokens do not)."""
    return key.lower() not in _NOT_SECRET_KEYS and bool(_SECRET_KEY_RE.search(key))


def scrub(value: Any, secrets: list[str]) -> Any:
    """A JSON-ready copy of ``value`` with credentials replaced by ``<redacted>``.

    Values under credential-named keys are replaced whatever they look like; known
    secret values and token-shaped strings are replaced anywhere. Objects JSON cannot
    hold (paths, dates, pydantic models, numpy scalars) are converted, not rejected,
    because a run record that fails to save would lose the whole run.
    """
    if isinstance(value, (SecretStr, SecretBytes)):
        return REDACTED
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return _scrub_container(value, secrets)
    return _scrub_object(value, secrets)


def _scrub_container(value: Any, secrets: list[str]) -> Any:
    """Mappings become dicts with string keys, sequences lists, sets sorted lists."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_secret_key(name) and item not in (None, "", False):
                out[name] = REDACTED
            else:
                out[name] = scrub(item, secrets)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    return sorted((scrub(item, secrets) for item in value), key=repr)


def _scrub_object(value: Any, secrets: list[str]) -> Any:
    """Objects JSON cannot hold, converted to what they mean; text as the last resort."""
    if isinstance(value, BaseModel):
        return scrub(value.model_dump(mode="python"), secrets)
    if is_dataclass(value) and not isinstance(value, type):
        return scrub(asdict(value), secrets)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return scrub_text(os.fspath(value), secrets)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return scrub(value.item(), secrets)
        except (TypeError, ValueError):
            pass
    return scrub_text(str(value), secrets)
