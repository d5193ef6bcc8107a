"""Scaling out: per-stage resources (replicas, GPUs) and running on Ray.

Every method's LLM stage takes a ``resources`` section in its recipe
(:class:`synthalign.recipes.StageResources`), which becomes the step's distilabel ``StepResources``:

- ``replicas``: copies of the step, each with its own engine, fed batches in turn.
  On Ray with ``gpus: 1`` this is one vLLM replica per GPU.
- ``gpus``: GPUs per replica. On Ray the replica's actor reserves them (Ray sets its
  ``CUDA_VISIBLE_DEVICES``); set it to the engine's ``tensor_parallel_size``.
- ``cpus``: CPUs per replica (Ray scheduling only).

``synthalign generate METHOD --config R --ray`` runs the method's pipeline on
distilabel's ``RayPipeline`` through :func:`to_ray`. It connects to the cluster named by
``RAY_ADDRESS`` (or the one this process was submitted to with ``ray job submit``)
and otherwise starts a local Ray instance.

Why not plain ``Pipeline.ray()``: it is the same, but the driver also has to pass the
method's load stages (``load_stages: sequential``, the default with in-process
``vllm:`` engines) to ``run``; it does that for local and Ray runs alike
(:func:`synthalign.execute.run_pipeline`). Without it, a cluster with fewer GPUs
than LLM steps would wait forever: distilabel loads every step of a stage before it
sends the first batch, and Ray cannot place the actors that have no GPU left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthalign.errors import BackendError

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline, RayPipeline

RAY_HINT = "--ray needs Ray: pip install 'synthalign[ray]'"


def require_ray() -> None:
    """One-line error when Ray is not installed (checked before any model loads)."""
    try:
        import ray  # noqa: F401  # heavy: Ray, optional
    except ImportError:
        raise BackendError(RAY_HINT) from None


def to_ray(
    pipeline: Pipeline,
    *,
    ray_head_node_url: str | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> RayPipeline:
    """The same DAG on distilabel's RayPipeline (what ``Pipeline.ray()`` does)."""
    require_ray()
    from distilabel.pipeline import RayPipeline  # heavy: distilabel's Ray module imports Ray

    ray_pipeline = RayPipeline(
        name=pipeline.name,
        description=pipeline.description,
        cache_dir=pipeline._cache_dir,
        enable_metadata=pipeline._enable_metadata,
        requirements=pipeline.requirements,
        ray_head_node_url=ray_head_node_url,
        ray_init_kwargs=ray_init_kwargs,
    )
    ray_pipeline.dag = pipeline.dag
    return ray_pipeline
