"""What the bad-input and preflight tests share: a shipped recipe with changes, the CLI
args of a run, and the check that a command failed with exactly one ``error:`` line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from synthalign.cli import app

RECIPES = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"
SYNTHALIGN = Path(sys.executable).with_name("synthalign")


def recipe_with(tmp_path: Path, base: str, **changes: object) -> Path:
    """A shipped recipe with ``dotted.key=value`` changes (``None`` removes the key) and a
    cache in ``tmp_path``."""
    data = yaml.safe_load((RECIPES / base).read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def generate_args(method: str, recipe: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", method, "--config", str(recipe), "--output", str(out), *extra]


def fails_in_one_line(args: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit 2, one ``error:`` line holding every needle, no traceback."""
    result = CliRunner().invoke(app, args)
    output = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def generate_ok(
    method: str, recipe: Path, out: Path, *, cwd: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """``synthalign generate`` as a user runs it (a subprocess, the installed script); it
    must exit 0, else the test fails with the end of stderr."""
    proc = subprocess.run(
        [str(SYNTHALIGN), *generate_args(method, recipe, out)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
