"""The ``local_hub`` pytest fixture: the session's hub, checked before a test uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .environment import session_hub
from .server import LocalHub

__all__ = ["local_hub"]


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    """The local Hub the environment points at; stopped at the end of the session.

    Fails early if a Hugging Face library captured another endpoint at import time.
    """
    hub = session_hub()
    from huggingface_hub import constants  # heavy; read only after HF_ENDPOINT is set

    if hub.endpoint != constants.ENDPOINT or not constants.HF_HUB_DISABLE_XET:
        pytest.fail(
            "huggingface_hub was imported before tests/localhub set HF_ENDPOINT; "
            "keep `from localhub import local_hub` first in tests/conftest.py"
        )
    if constants.HF_HUB_OFFLINE:
        pytest.fail(
            "HF_HUB_OFFLINE is set, so the Hub clients refuse to talk to the local test hub; "
            "unset it (HF_ENDPOINT already points at 127.0.0.1)"
        )
    # ``datasets`` first asks the dataset viewer for a parquet export, at a host derived
    # from HF_ENDPOINT ("datasets-server.127.0.0.1"): a DNS query that would leave the
    # machine. The local hub has no viewer, so skipping that look-up changes nothing but
    # the query: ``datasets`` takes the same path as for a repo the viewer has not seen.
    import datasets.config  # heavy: the fixture module stays light to import

    use_export = datasets.config.USE_PARQUET_EXPORT
    datasets.config.USE_PARQUET_EXPORT = False
    try:
        yield hub
    finally:
        datasets.config.USE_PARQUET_EXPORT = use_export
        hub.stop()
