"""Hub-layout output folders: write, validate, read back and push.

Every synthalign run ends in a folder holding exactly the files a Hugging Face Hub
dataset repo holds, so that ``load_dataset(DIR)`` and ``load_dataset(REPO_ID)`` give the
same rows and a push is a plain folder upload with nothing left to convert::

    README.md                                  card; YAML ``configs:`` lists data files
    pipeline.yaml                              distilabel config; reruns the pipeline
    data/<config>/train-00000-of-00001.parquet one folder per config, sharded if large
    figures/*.png                              plots the card shows
    synthalign.json                            run record: method, recipe, seed, versions, rows

Two guarantees matter to users who run pipelines for hours:

* **Atomic.** A folder is assembled in a hidden sibling and renamed into place only
  when complete; ``synthalign.json`` is the last file written. A crash mid-way leaves
  no folder that looks finished, and an existing folder is replaced only on request.
* **No secrets.** Run records and copied configs are scrubbed of anything that looks
  like a credential, and tokens are read from the environment or login cache at push
  time, never stored.

This module is the one place the rest of synthalign imports these from; the work is
done by one module per concern, so each stays small enough to read at once:

* :mod:`synthalign.hub_layout` -- file and shard names, the card's front matter;
* :mod:`synthalign.hub_write` -- atomic folder writing and card rewrites;
* :mod:`synthalign.hub_read` -- validation and reading a folder back;
* :mod:`synthalign.hub_push` -- the upload to a dataset repo;
* :mod:`synthalign.secrets` -- scrubbing credentials from what is written.
"""

from __future__ import annotations

from synthalign.hub_layout import DEFAULT_MAX_SHARD_BYTES, RUN_INFO_FILENAME, SPLIT
from synthalign.hub_push import push_hub_folder
from synthalign.hub_read import read_hub_folder, validate_hub_folder
from synthalign.hub_write import update_card, write_hub_folder
from synthalign.secrets import REDACTED
from synthalign.secrets import known_secret_values as _known_secret_values
from synthalign.secrets import scrub as _scrub
from synthalign.secrets import scrub_text as _scrub_text

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "REDACTED",
    "RUN_INFO_FILENAME",
    "SPLIT",
    # Private names kept for code that imported them from here before the split; new
    # code imports known_secret_values, scrub and scrub_text from synthalign.secrets.
    "_known_secret_values",
    "_scrub",
    "_scrub_text",
    "push_hub_folder",
    "read_hub_folder",
    "update_card",
    "validate_hub_folder",
    "write_hub_folder",
]
