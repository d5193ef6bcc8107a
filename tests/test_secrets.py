"""No leaked secrets: canaries in HF_TOKEN, OPENAI_API_KEY and a recipe's ``api_key``.

A full ``synthalign generate rdpo`` runs as a user would (a subprocess), with the teacher
behind an OpenAI-compatible stub server on 127.0.0.1 (tests/test_openai_backend.py) and
``--push-to-hub`` to the local test Hub (tests/localhub/). Afterwards no canary may
appear in any file the run wrote (the Hub folder with pipeline.yaml, card and run
record; distilabel's cache with its pipeline.log and synthalign's batch store; the
Hugging Face home), in what the Hub stored or was sent, in the request bodies the LLM
server received, or in anything printed on stdout or stderr. The recipe's key must still
reach the server, as a bearer header: it is secret, not dropped.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from localhub import LocalHub
from pydantic import SecretStr
from rdpo_recipe import write_tiny_rdpo_recipe
from test_openai_backend import stub_server  # noqa: F401  (fixture)

CLI = "import sys; from synthalign.cli import app; sys.exit(app())"


def _canary(kind: str) -> str:
    # Deliberately not shaped like hf_... or sk-...: the run must not rely on spotting a
    # token's shape.
    return f"canary{kind}{secrets.token_hex(12)}"


def test_recipe_api_key_is_a_secret_str() -> None:
    from synthalign.pipelines.rdpo import RDPORecipe
    from synthalign.recipes import parse_recipe

    key = _canary("recipe")
    recipe = parse_recipe({"seed_data": {"source": "x.jsonl"}, "api_key": key}, RDPORecipe)
    assert isinstance(recipe.api_key, SecretStr) and recipe.api_key.get_secret_value() == key
    for text in (
        repr(recipe),
        str(recipe),
        json.dumps(recipe.model_dump(mode="json")),
        recipe.model_dump_json(),
    ):
        assert key not in text


@pytest.mark.slow
def test_no_canary_in_any_file_log_or_push(
    tmp_path: Path,
    local_hub: LocalHub,
    stub_server: tuple[str, type],  # noqa: F811
) -> None:
    url, handler = stub_server
    # a plain answer: the JSON echo of the prompt would be dropped by the cleaning step as scaffolding
    handler.reply = "Keep it in a password manager, never in a plain file or a chat message."
    hf_token, env_key, recipe_key = _canary("hf"), _canary("env"), _canary("recipe")
    local_hub.accept_token(hf_token)
    canaries = [hf_token, env_key, recipe_key]

    user = tmp_path / "user"  # what the user wrote: the only place the recipe key may be
    user.mkdir()
    seeds = user / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"prompt": f"How should I store secret number {i}?"}) + "\n"
            for i in range(4)
        )
    )
    recipe_path = write_tiny_rdpo_recipe(
        user,
        "secrets-e2e",
        seeds,
        batch=2,
        teacher={"llm": f"openai:{url}#stub-model", "max_new_tokens": 16, "temperature": 0.0},
        cache_dir=str(tmp_path / "cache"),  # scanned below, unlike `user`
        api_key=recipe_key,
    )
    out = tmp_path / "out"
    repo_id = "synthalign-tests/secrets-e2e"
    env = {
        **os.environ,
        "HF_TOKEN": hf_token,
        "OPENAI_API_KEY": env_key,
        "HF_HOME": str(tmp_path / "hf-home"),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "generate", "rdpo", "-c", str(recipe_path), "-o", str(out),
         "--push-to-hub", repo_id],
        capture_output=True, text=True, timeout=900, cwd=work, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pushed to {repo_id}" in proc.stdout

    # the recipe's key was used (it wins over $OPENAI_API_KEY), only as a header
    assert handler.auth and set(handler.auth) == {f"Bearer {recipe_key}"}
    bodies = json.dumps(handler.bodies)
    assert not [c for c in canaries if c in bodies]

    # nothing printed
    for canary in canaries:
        assert canary not in proc.stdout and canary not in proc.stderr

    # no file written anywhere by the run
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and user not in path.parents:
            data = path.read_bytes()
            scanned += 1
            leaked = [c for c in canaries if c.encode() in data]
            assert not leaked, f"canary in {path}"
    assert (out / "pipeline.yaml").is_file() and (out / "README.md").is_file()
    assert list((tmp_path / "cache").rglob("pipeline.log")) and list(
        (tmp_path / "cache").rglob("*.pkl")
    )
    assert scanned > 20

    # the run record keeps the key's place, not its value
    record = json.loads((out / "synthalign.json").read_text())
    assert record["recipe"]["api_key"] in ("**********", "<redacted>")
    assert isinstance(yaml.safe_load((out / "pipeline.yaml").read_text()), dict)

    # nor on the Hub, nor in any request the Hub received
    assert local_hub.repo_exists(repo_id)
    for canary in canaries:
        assert not any(canary.encode() in data for data in local_hub.stored_bytes())
        assert not any(canary in line for line in local_hub.requests)
