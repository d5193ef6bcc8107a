"""A local stand-in for the Hugging Face Hub, so push and load round trips run offline.

The real ``huggingface_hub`` and ``datasets`` clients talk to it over HTTP exactly as
they talk to huggingface.co; only ``HF_ENDPOINT`` differs. It implements the slice of
the Hub API those clients use for a dataset repo, following their code in
``huggingface_hub`` (``hf_api``, ``_commit_api``, ``lfs``, ``file_download``,
``hf_file_system``):

* writing (:mod:`.routes_repos`, :mod:`.routes_write`): ``POST /api/repos/create``,
  ``/api/validate-yaml``, the ``preupload`` and NDJSON ``commit`` endpoints, and the
  git-LFS batch API with presigned-style ``PUT`` upload URLs and a ``verify`` step.
  Parquet and PNG files are declared LFS, as on the Hub, so the LFS path is what
  ``upload_folder`` exercises.
* reading (:mod:`.routes_read`): repo info (``/api/datasets/{id}[/revision/{rev}]``),
  tree listings (recursive, paginated with ``Link`` headers), ``paths-info``, commit
  lists, and file downloads from ``/resolve/`` (``HEAD``, ``GET``, byte ranges,
  ``ETag`` and ``X-Repo-Commit`` headers) and ``/raw/`` (what ``distilabel pipeline run
  --config URL`` fetches).

Errors carry the Hub's ``X-Error-Code`` headers so the clients raise the same
exceptions they raise against the Hub (``RepositoryNotFoundError``,
``EntryNotFoundError``, ...). Writes need a bearer token the server accepts; public
repos are readable without one. The server never records request headers, so a token
sent to it cannot leak through its logs.

The parts: :mod:`.store` (the in-memory git-like repos), :mod:`.listing` (tree
entries), :mod:`.request` (what a route sees and answers), the three route groups,
:mod:`.handler` (HTTP plumbing and the route table), :mod:`.server` (:class:`LocalHub`),
:mod:`.environment` and :mod:`.fixtures`.

Importing this package (tests/conftest.py does it first) starts one server on a free
127.0.0.1 port and points the Hugging Face libraries at it by setting ``HF_ENDPOINT``,
``HF_TOKEN`` (a fake token the server accepts), ``HF_HUB_DISABLE_XET=1`` and a temporary
``HF_HOME``. Those variables are read when the libraries are imported, hence the import
side effect: it must happen before any test module imports ``datasets``,
``huggingface_hub``, ``transformers`` or ``distilabel``. It also means no test can reach
huggingface.co by accident. The ``local_hub`` fixture hands out that server.
"""

from __future__ import annotations

from .environment import hub_environment, session_hub
from .fixtures import local_hub
from .server import LocalHub

__all__ = ["LocalHub", "hub_environment", "local_hub", "session_hub"]

session_hub()
