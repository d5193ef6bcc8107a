"""Pushing a validated Hub-layout folder to a dataset repo.

A push is a plain folder upload, because the folder already holds exactly the files a
Hub dataset repo holds. What this module adds is the guard rails: the folder is
validated first so nothing incomplete reaches the Hub, the token is looked up at push
time and never stored, and every failure of the client (HTTP errors, LFS failures, an
unreachable endpoint) becomes one line with no secret in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from synthalign.errors import OutputError
from synthalign.hub_layout import NAME_RE
from synthalign.hub_read import validate_hub_folder
from synthalign.secrets import known_secret_values, scrub_text

if TYPE_CHECKING:
    from huggingface_hub.errors import HfHubHTTPError

__all__ = ["push_hub_folder"]

# The name users configure logging by; it stayed the same when hub.py was split up.
logger = logging.getLogger("synthalign.hub")


def _one_line(text: str, secrets: Iterable[str]) -> str:
    """An error detail fit for a one-line message: scrubbed, whitespace collapsed."""
    return " ".join(scrub_text(text, secrets).split())


def _check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would reject, before any request is made."""
    if repo_id.count("/") != 1 or not all(NAME_RE.match(part) for part in repo_id.split("/")):
        raise OutputError(f"invalid Hub repo id {repo_id!r}: use the form namespace/name")


def _http_error(error: HfHubHTTPError, repo_id: str, secrets: list[str]) -> OutputError:
    """A one-line error for an HTTP error of the Hub, with a hint when auth failed."""
    status = error.response.status_code if error.response is not None else None
    detail = error.server_message or next(
        (line for line in str(error).splitlines() if line.strip()), ""
    )
    hint = (
        f"; check that the token has write access to {repo_id.split('/')[0]}"
        if status in (401, 403)
        else ""
    )
    return OutputError(
        f"push to {repo_id} failed (HTTP {status}): {_one_line(detail, secrets)}{hint}"
    )


def push_hub_folder(
    path: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a validated Hub-layout folder to the dataset repo ``repo_id``.

    The folder is validated first, so nothing incomplete is ever pushed. The token is
    ``token``, else ``HF_TOKEN``, else the ``hf auth login`` cache; without one this
    fails before any network call. Data shards and figures that the folder no longer
    has are deleted from the repo in the same commit, so the repo ends up holding
    exactly the folder. ``private`` None leaves a new repo's visibility to the Hub (an
    organisation's default); True / False set it (an existing repo keeps its own).
    ``revision`` pushes to that branch (created from the default branch when new);
    ``create_pr`` opens a pull request instead of committing. Returns the dataset's URL,
    or the pull request's.
    """
    from huggingface_hub import HfApi, get_token  # heavy: keeps import synthalign.hub light
    from huggingface_hub.errors import HfHubHTTPError  # heavy: as above

    folder = Path(path).expanduser().absolute()
    validate_hub_folder(folder)
    _check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise OutputError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")

    secrets = [token, *known_secret_values()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"Upload {folder.name} with synthalign",
            delete_patterns=["data/*", "figures/*"],
            revision=revision,
            create_pr=create_pr,
        )
    except HfHubHTTPError as error:
        raise _http_error(error, repo_id, secrets) from None
    except OSError as error:  # includes connection errors surfaced as OSError
        raise OutputError(
            f"push to {repo_id} failed: {_one_line(str(error), secrets)}; check the network "
            "and HF_ENDPOINT"
        ) from None
    except (RuntimeError, ValueError) as error:  # LFS and commit failures inside the client
        raise OutputError(
            f"push to {repo_id} failed: {_one_line(str(error), secrets) or type(error).__name__}"
        ) from None
    except Exception as error:
        if type(error).__module__.startswith(("httpx", "httpcore")):
            raise OutputError(
                f"cannot reach the Hugging Face Hub at {api.endpoint} to push {repo_id}: "
                f"{_one_line(str(error), secrets) or type(error).__name__}"
            ) from None
        raise
    pr_url = getattr(commit, "pr_url", None)
    logger.info(
        "pushed %s to %s (commit %s%s)",
        folder,
        url,
        getattr(commit, "oid", "?"),
        f", pull request {pr_url}" if pr_url else "",
    )
    return str(pr_url or url)
