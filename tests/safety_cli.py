"""The safety test method behind the ``synthalign`` CLI's contract, as a real process.

``python tests/safety_cli.py generate|loop RECIPE OUTPUT [--iterations N] [--overwrite]``
ends exactly like ``synthalign generate|loop`` (:func:`synthalign.cli.report`): one line
and the exit code of a user error, a failed run or a stop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from safety_method import METHOD

from synthalign.cli import report
from synthalign.run import generate, loop


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["generate", "loop"])
    parser.add_argument("recipe")
    parser.add_argument("output")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--push-to-hub", default=None)
    args = parser.parse_args()
    common = {"output": args.output, "overwrite": args.overwrite}
    if args.command == "generate":
        command = lambda: generate(METHOD, args.recipe, push_to_hub=args.push_to_hub, **common)  # noqa: E731
    else:
        command = lambda: loop(METHOD, args.recipe, iterations=args.iterations, **common)  # noqa: E731
    try:
        out = report(command)
    except typer.Exit as exit_:
        return exit_.exit_code
    print(f"dataset written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
