"""The Hub options of a push (``--private/--public``, ``--revision``, ``--create-pr``),
checked against what the local test Hub (tests/localhub) records.

The visibility tests set the namespace's default to private on the server, as an
organisation can: a push without ``--private/--public`` must send no visibility at all,
so the repo ends up with that default; ``private=False`` would have overridden it.
The end-to-end test drives ``synthalign generate`` with tests/echo_method.py (a real
distilabel pipeline that needs no model), so the CLI's options reach the server.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from cli_checks import fails_in_one_line, recipe_with
from echo_method import METHOD as ECHO
from gra_recipe import tiny_gra_recipe
from hub_helpers import WriteFolder

from synthalign.hub import push_hub_folder
from synthalign.run import generate

if TYPE_CHECKING:
    from localhub import LocalHub

pytest_plugins = ("hub_fixtures",)
pytestmark = pytest.mark.usefixtures("loopback_only")

SEEDS = Path(__file__).parent / "data" / "instructions.jsonl"
SHARD = "data/sft/train-00000-of-00001.parquet"


@pytest.fixture
def private_by_default(local_hub: LocalHub) -> Iterator[LocalHub]:
    """The namespace's default visibility is private (an organisation's setting)."""
    local_hub.store.default_private = True
    try:
        yield local_hub
    finally:
        local_hub.store.default_private = False


def _private(hub: LocalHub, repo_id: str) -> bool:
    return hub.store.repos[("dataset", repo_id)].private


def _branches(hub: LocalHub, repo_id: str) -> dict[str, str]:
    return dict(hub.store.repos[("dataset", repo_id)].branches)


def test_without_a_visibility_the_hub_default_applies(
    private_by_default: LocalHub, write: WriteFolder
) -> None:
    push_hub_folder(write(), "synthalign-tests/org-default")
    assert _private(private_by_default, "synthalign-tests/org-default") is True


def test_public_and_private_are_sent_when_asked(
    private_by_default: LocalHub, write: WriteFolder
) -> None:
    out = write()
    push_hub_folder(out, "synthalign-tests/asked-public", private=False)
    push_hub_folder(out, "synthalign-tests/asked-private", private=True)
    assert _private(private_by_default, "synthalign-tests/asked-public") is False
    assert _private(private_by_default, "synthalign-tests/asked-private") is True


def test_revision_pushes_to_a_new_branch_and_leaves_main(
    local_hub: LocalHub, write: WriteFolder
) -> None:
    repo_id = "synthalign-tests/on-a-branch"
    out = write()
    push_hub_folder(out, repo_id, revision="v2-candidate")
    assert SHARD in local_hub.files(repo_id, revision="v2-candidate")
    assert SHARD not in local_hub.files(repo_id)  # main holds only the initial commit
    (out / "figures" / "scores.png").unlink()  # a change, pushed to the branch it now exists
    push_hub_folder(out, repo_id, revision="v2-candidate")
    assert "figures/scores.png" not in local_hub.files(repo_id, revision="v2-candidate")
    assert local_hub.problems == []


def test_create_pr_opens_a_pull_request_and_commits_nothing_to_main(
    local_hub: LocalHub, write: WriteFolder
) -> None:
    repo_id = "synthalign-tests/as-a-pr"
    out = write()
    push_hub_folder(out, repo_id)
    main = _branches(local_hub, repo_id)["main"]
    (out / "figures" / "scores.png").unlink()  # the change the pull request proposes
    url = push_hub_folder(out, repo_id, create_pr=True)
    branches = _branches(local_hub, repo_id)
    assert url.endswith(f"/datasets/{repo_id}/discussions/1"), url
    assert branches["main"] == main and "refs/pr/1" in branches
    assert "figures/scores.png" in local_hub.files(repo_id)
    assert "figures/scores.png" not in local_hub.files(repo_id, revision="refs/pr/1")


def _echo_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "echo.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "echo-hub", "seed_data": {"source": str(SEEDS)}, "cache_dir": str(tmp_path)}
        )
    )
    return path


def test_generate_passes_the_options_to_the_hub(
    private_by_default: LocalHub, tmp_path: Path
) -> None:
    repo_id = "synthalign-tests/echo-options"
    generate(
        ECHO,
        _echo_recipe(tmp_path),
        output=tmp_path / "out",
        push_to_hub=repo_id,
        hub_options={"private": False, "create_pr": True},
    )
    assert _private(private_by_default, repo_id) is False
    assert "refs/pr/1" in _branches(private_by_default, repo_id)
    assert "README.md" in private_by_default.files(repo_id, revision="refs/pr/1")
    assert "README.md" not in private_by_default.files(repo_id)  # main: nothing committed

    branch_repo = "synthalign-tests/echo-branch"
    generate(
        ECHO,
        _echo_recipe(tmp_path),
        output=tmp_path / "out2",
        push_to_hub=branch_repo,
        hub_options={"revision": "review"},
    )
    assert _private(private_by_default, branch_repo) is True  # nothing sent: the default
    assert "README.md" in private_by_default.files(branch_repo, revision="review")
    assert "README.md" not in private_by_default.files(branch_repo)


@pytest.mark.parametrize(
    "option", [["--private"], ["--public"], ["--revision", "b"], ["--create-pr"]]
)
def test_hub_options_without_a_push_fail_before_the_run(tmp_path: Path, option: list[str]) -> None:
    fails_in_one_line(
        ["generate", "condor", "--config", str(recipe_with(tmp_path, "condor-quickstart.yaml")),
         *option],
        f"{option[0]} only apply to a push",
    )  # fmt: skip
    assert not (tmp_path / "outputs").exists()


def test_a_revision_that_is_no_branch_name_fails_before_the_run(tmp_path: Path) -> None:
    fails_in_one_line(
        ["generate", "condor", "--config", str(recipe_with(tmp_path, "condor-quickstart.yaml")),
         "--push-to-hub", "me/data", "--revision", "no spaces"],
        "is not a branch name",
    )  # fmt: skip


def test_a_pull_request_to_a_branch_fails_before_the_run(tmp_path: Path) -> None:
    """The Hub opens pull requests against the default branch only; found before generating."""
    fails_in_one_line(
        ["generate", "condor", "--config", str(recipe_with(tmp_path, "condor-quickstart.yaml")),
         "--push-to-hub", "me/data", "--revision", "b", "--create-pr"],
        "drop --revision",
    )  # fmt: skip


def test_a_synpo_loop_refuses_a_push_before_the_run(tmp_path: Path) -> None:
    """A SynPO loop writes a dataset folder per stage, so there is no one folder to push:
    said before any model loads, not after the iterations."""
    fails_in_one_line(
        ["loop", "synpo", "--config", str(recipe_with(tmp_path, "synpo-quickstart.yaml")),
         "--iterations", "1", "--push-to-hub", "me/data"],
        "writes one dataset folder per stage",
    )  # fmt: skip
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_gra_loop_pushes_its_rounds_with_the_options(
    private_by_default: LocalHub, tmp_path: Path
) -> None:
    """``loop gra --push-to-hub`` pushes the output folder (every round) after the last
    round, with the same Hub options as ``generate``."""
    recipe = tiny_gra_recipe(
        tmp_path, limit=4, samples=8, n_reviewers=1, min_valid_reviews=1, min_mean_score=0.0
    )
    repo_id = "synthalign-tests/gra-loop"
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.cli", "loop", "gra", "--config", str(recipe),
         "--iterations", "1", "--output", str(tmp_path / "out"), "--push-to-hub", repo_id,
         "--public"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pushed to {repo_id}" in proc.stdout
    assert _private(private_by_default, repo_id) is False  # --public overrode the default
    files = private_by_default.files(repo_id)
    assert {"README.md", "synthalign.json", "pipeline.yaml"} <= set(files)
    assert any(f.startswith("data/rejected/") for f in files)
