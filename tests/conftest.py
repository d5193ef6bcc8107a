"""Shared pytest configuration and fixtures."""

# Must stay the first import: it points the Hugging Face libraries at a local test hub
# (HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_DISABLE_XET) before anything imports them.
from localhub import local_hub  # noqa: F401
