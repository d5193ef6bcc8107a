"""Pointing the Hugging Face libraries at the local hub, for this process and children.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HOME``
when they are imported, so the session's hub must be started and the environment set
before any test module imports them (tests/conftest.py imports this package first).
Setting them also means no test can reach huggingface.co, or the user's own caches and
login, by accident.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from .server import LocalHub

__all__ = ["hub_environment", "session_hub"]


def hub_environment(endpoint: str, token: str, home: str | Path) -> dict[str, str]:
    """Variables that point the Hugging Face libraries at a local hub.

    Pass them to subprocesses (``distilabel pipeline run``, ``synthalign`` CLI) as is;
    in-process they must be set before any Hugging Face library is imported.
    """
    return {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # ``datasets`` pings s3.amazonaws.com to count each Hub load unless told not to.
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    }


# Locations that would otherwise override HF_HOME and reach the user's own caches or
# login; the test session gets none of them.
_HERMETIC_UNSET = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
)

_SESSION: tuple[LocalHub, Path] | None = None


def _warn_if_imported_too_late() -> None:
    """A Hugging Face library imported already has read its endpoint: say so early."""
    late = sorted(
        m for m in ("huggingface_hub", "datasets", "transformers", "distilabel") if m in sys.modules
    )
    if late:
        warnings.warn(
            f"{', '.join(late)} imported before tests/localhub: HF_ENDPOINT may not apply; "
            "import localhub first in tests/conftest.py",
            stacklevel=3,
        )


def session_hub() -> LocalHub:
    """The process-wide hub, started (and the environment pointed at it) on first use."""
    global _SESSION
    if _SESSION is None:
        _warn_if_imported_too_late()
        hub = LocalHub().start()
        home = Path(tempfile.mkdtemp(prefix="synthalign-test-hf-home-"))
        for name in _HERMETIC_UNSET:
            os.environ.pop(name, None)
        os.environ.update(hub_environment(hub.endpoint, hub.token, home))
        _SESSION = (hub, home)

        def cleanup() -> None:
            hub.stop()
            shutil.rmtree(home, ignore_errors=True)

        atexit.register(cleanup)
    return _SESSION[0]
