"""distilabel fixes in synthalign.compat, on real pipelines with a real model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from synthalign.llms import load_llm
    from synthalign.steps.synpo import AnswerPrompt, KeepValidPrompts

    if __name__ == "__main__":
        invalid = sys.argv[1] == "all"
        rows = [
            {"prompt": f"Name a colour number {i}.", "kept": not (invalid or i % 2)}
            for i in range(6)
        ]
        with Pipeline(name="compat-filter", cache_dir=sys.argv[2]) as pipeline:
            load = LoadDataFromDicts(data=rows, batch_size=2)
            keep = KeepValidPrompts(input_batch_size=2)
            answer = AnswerPrompt(
                llm=load_llm("builtin:tiny-random", max_new_tokens=8, temperature=0), input_batch_size=4
            )
            load >> keep >> answer
        distiset = pipeline.run(use_cache=False)
        rows = [r for config in distiset.values() for r in config["train"]]
        print("ROWS", len(rows), sorted(r["prompt"] for r in rows))
    """
)


def _run(tmp_path: Path, which: str) -> str:
    script = tmp_path / "filter_pipeline.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), which, str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=240,  # distilabel alone would wait forever
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith("ROWS"))


def test_a_filter_that_drops_every_row_ends_the_run_with_no_rows(tmp_path: Path) -> None:
    assert _run(tmp_path, "all") == "ROWS 0 []"


def test_a_partial_filter_still_answers_the_rows_it_keeps(tmp_path: Path) -> None:
    expected = sorted(f"Name a colour number {i}." for i in range(0, 6, 2))
    assert _run(tmp_path, "some") == f"ROWS 3 {expected}"
