"""synthalign: alignment datasets from seed data and LLMs (Condor, GRA, SynPO, rDPO)."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Libraries that phone home do so at import or first use; switch that off before any
# of them is imported. Users who push to the Hub still can: these only stop telemetry.
for _key, _value in {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    "DO_NOT_TRACK": "1",
    "DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
}.items():
    os.environ.setdefault(_key, _value)

# distilabel 1.5.3 declares ``Field(default=None)`` inside ``Annotated`` aliases; pydantic
# warns about it on every import, burying the one-line errors users need to read.
import warnings as _warnings  # noqa: E402

try:
    from pydantic.warnings import UnsupportedFieldAttributeWarning as _Unsupported

    _warnings.filterwarnings("ignore", category=_Unsupported)
except ImportError:  # older pydantic: no such warning
    pass
