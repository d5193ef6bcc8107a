"""``synthalign generate ... --ray``: distilabel's RayPipeline on a local Ray cluster.

The test starts its own single-node Ray cluster on loopback (a driver process that
calls ``ray.init`` with 2 CPUs and no dashboard, in a private temp folder) and points
the CLI at it with ``RAY_ADDRESS``, as a user does with a real cluster. The Ray run
must publish the same rows as a plain local run of the same recipe (compared as
multisets: seeded decoding gives the same text, whatever process made it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from condor_recipe import TINY_CONDOR
from rerun import fresh_home_env

# Ray finds "this node's address" by routing a UDP socket toward a public address and
# then binds its services to this machine's first non-loopback interface. With this set
# (the name says Windows/OSX, it is honoured everywhere) every Ray process, the CLI's
# driver included, takes 127.0.0.1 instead: no probe, nothing listening beyond loopback.
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}

CLUSTER = """
import sys
import ray

ctx = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=sys.argv[1],
               object_store_memory=256 * 1024**2, configure_logging=False, log_to_driver=False)
print("RAY_ADDRESS=" + ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""

# Condor at test size (tests/condor_recipe.py's tiny recipe, smaller): every step runs,
# some rows survive every stage, others fail and are recorded.
CONDOR = {
    **TINY_CONDOR,
    "name": "condor-ray-test",
    "seed": 0,
    "num_samples": 12,
    "answer": {"max_new_tokens": 16, "batch_size": 8},
    "refine": {"max_new_tokens": 16, "batch_size": 8},
    # every step at once (fast); the sequential path has its own test below
    "load_stages": "concurrent",
}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = fresh_home_env(home, **{"OMP_NUM_THREADS": "1", **RAY_LOOPBACK})
    env.pop("RAY_ADDRESS", None)  # only the cluster this test started
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ray_cluster():
    """The environment that points a process at the test's cluster."""
    pytest.importorskip("ray", reason="pip install 'synthalign[ray]' (the test extra installs it)")
    # Ray's socket paths must stay under 107 characters: a short private folder
    temp = tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")
    # Ray >= 2.5x clusters that ray.init starts require a token: ours, given to every client
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, temp],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(Path(temp), **auth), start_new_session=True,
    )  # fmt: skip
    address = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("RAY_ADDRESS="):
            address = line.strip().split("=", 1)[1]
            break
    assert address, "local Ray cluster did not start:\n" + "".join(lines[-40:])
    assert address.startswith("127.0.0.1:"), address
    try:
        yield {"RAY_ADDRESS": address, **auth}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the driver calls ray.shutdown(), which stops every Ray process it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _generate(
    method: str, recipe: dict, tmp: Path, name: str, *, ray: dict[str, str] | None
) -> Path:
    recipe = {
        **recipe,
        "cache_dir": str(tmp / f"cache-{name}"),
    }  # separate caches: each run computes
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp / name
    args = [
        sys.executable,
        "-m",
        "synthalign.cli",
        "generate",
        method,
        "--config",
        str(path),
        "--output",
        str(out),
    ]
    if ray:
        args.append("--ray")
    proc = subprocess.run(
        args, env=_env(tmp / "home", **(ray or {})), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _rows(folder: Path, config: str) -> Counter:
    from datasets import load_dataset

    data = load_dataset(str(folder), config, split="train")
    return Counter(json.dumps(row, sort_keys=True, default=str) for row in data)


@pytest.mark.slow
def test_condor_on_ray_publishes_the_same_rows_as_a_local_run(
    tmp_path: Path, ray_cluster: dict[str, str]
) -> None:
    on_ray = _generate("condor", CONDOR, tmp_path, "ray", ray=ray_cluster)
    local = _generate("condor", CONDOR, tmp_path, "local", ray=None)

    # the Ray run really ran on the cluster (distilabel's RayPipeline logs its nodes)
    log = next((tmp_path / "cache-ray").rglob("pipeline.log")).read_text()
    assert "Ray nodes GPUs" in log
    info = json.loads((on_ray / "synthalign.json").read_text())
    assert info["counts"] == json.loads((local / "synthalign.json").read_text())["counts"]
    assert info["counts"]["generations"] == CONDOR["num_samples"]
    assert info["counts"]["refined"] > 0  # some rows made it through every stage
    for config in ("generations", "refined", "void"):
        assert _rows(on_ray, config) == _rows(local, config), config


def test_sequential_recipes_load_one_stage_at_a_time_on_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`load_stages: sequential` (the default with vllm: engines) survives the move to Ray;
    plain `Pipeline.ray()` drops it and every LLM step would load at once."""
    pytest.importorskip("ray")
    from distilabel.pipeline import RayPipeline

    from synthalign.execute import run_pipeline
    from synthalign.pipelines.condor import METHOD, CondorRecipe, build_pipeline

    seen = {}
    monkeypatch.setattr(RayPipeline, "run", lambda self, *a, **kw: seen.update(kw))
    for stages, expected in (("sequential", "sequential_step_execution"), ("concurrent", None)):
        seen.clear()
        recipe = CondorRecipe.model_validate({**CONDOR, "load_stages": stages})
        run_pipeline(build_pipeline(recipe), use_ray=True, sequential=METHOD.sequential(recipe))
        assert seen.get("load_groups") == expected, stages


def test_ray_missing_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from synthalign.distributed import RAY_HINT, require_ray
    from synthalign.errors import BackendError

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendError, match="pip install 'synthalign\\[ray\\]'"):
        require_ray()
    assert "\n" not in RAY_HINT


def test_to_ray_keeps_the_dag_and_the_load_stages() -> None:
    pytest.importorskip("ray")
    from distilabel.pipeline import RayPipeline

    from synthalign.distributed import to_ray
    from synthalign.pipelines.condor import CondorRecipe, build_pipeline

    recipe = CondorRecipe.model_validate(
        {
            **CONDOR,
            "load_stages": "sequential",
            "question": {**CONDOR["question"], "resources": {"replicas": 2, "gpus": 1}},
        }
    )
    pipeline = build_pipeline(recipe)
    on_ray = to_ray(pipeline)
    assert isinstance(on_ray, RayPipeline)
    assert on_ray.signature == pipeline.signature  # same DAG, same distilabel cache folder
    step = on_ray.dag.get_step("generate_questions")["step"]
    assert (step.resources.replicas, step.resources.gpus) == (2, 1)
    assert on_ray.dag.get_step("answer_question")["step"].resources.replicas == 1
    # pipeline.yaml still names the plain Pipeline, so `distilabel pipeline run` reruns it
    assert on_ray.dump()["pipeline"]["type_info"]["name"] == "Pipeline"
