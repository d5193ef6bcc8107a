"""Scaling out: per-stage resources (replicas, GPUs) and running on Ray.

Every method's LLM stage takes a ``resources`` section in its recipe
(:class:`StageResources`), which becomes the step's distilabel ``StepResources``:

- ``replicas``: copies of the step, each with its own engine, fed batches in turn.
  On Ray with ``gpus: 1`` this is one vLLM replica per GPU.
- ``gpus``: GPUs per replica. On Ray the replica's actor reserves them (Ray sets its
  ``CUDA_VISIBLE_DEVICES``); set it to the engine's ``tensor_parallel_size``.
- ``cpus``: CPUs per replica (Ray scheduling only).

``synthalign generate METHOD --config R --ray`` runs the method's pipeline on
distilabel's ``RayPipeline`` through :func:`to_ray`. It connects to the cluster named by
``RAY_ADDRESS`` (or the one this process was submitted to with ``ray job submit``)
and otherwise starts a local Ray instance.

Why not plain ``Pipeline.ray()``: it builds a fresh ``RayPipeline`` from the DAG and
drops whatever the method's own Pipeline subclass does in ``run`` -- here, loading
one stage at a time when a recipe asks for it (``load_stages: sequential``, the
default with in-process ``vllm:`` engines). Without it, a cluster with fewer GPUs
than LLM steps would wait forever: distilabel loads every step of a stage before it
sends the first batch, and Ray cannot place the actors that have no GPU left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distilabel.pipeline import RayPipeline
from pydantic import Field

from synthalign.errors import BackendError
from synthalign.recipes import StrictModel

if TYPE_CHECKING:
    from distilabel.distiset import Distiset
    from distilabel.pipeline import Pipeline
    from distilabel.steps import StepResources

RAY_HINT = "--ray needs Ray: pip install 'synthalign[ray]'"


class StageResources(StrictModel):
    """Resources of one LLM stage (distilabel ``StepResources``); see the module docstring."""

    replicas: int = Field(
        default=1, ge=1, description="copies of the step, each with its own engine (one per GPU)"
    )
    gpus: int | None = Field(
        default=None,
        ge=1,
        description="GPUs per replica on Ray (= the engine's tensor_parallel_size)",
    )
    cpus: int | None = Field(default=None, ge=1, description="CPUs per replica on Ray")

    def step_resources(self) -> StepResources:
        from distilabel.steps import StepResources

        return StepResources(replicas=self.replicas, gpus=self.gpus, cpus=self.cpus)


def require_ray() -> None:
    """One-line error when Ray is not installed (checked before any model loads)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BackendError(RAY_HINT) from None


class SynthRayPipeline(RayPipeline):
    """distilabel's RayPipeline, loading one stage at a time when the recipe asks."""

    sequential_stages: bool = False

    def run(self, *args: Any, **kwargs: Any) -> Distiset:  # type: ignore[override]
        if self.sequential_stages and kwargs.get("load_groups") is None:
            kwargs["load_groups"] = "sequential_step_execution"
        return super().run(*args, **kwargs)


def to_ray(
    pipeline: Pipeline,
    *,
    ray_head_node_url: str | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> SynthRayPipeline:
    """The same DAG on distilabel's RayPipeline (what ``Pipeline.ray()`` does, keeping
    the method's ``sequential_stages``)."""
    require_ray()
    ray_pipeline = SynthRayPipeline(
        name=pipeline.name,
        description=pipeline.description,
        cache_dir=pipeline._cache_dir,
        enable_metadata=pipeline._enable_metadata,
        requirements=pipeline.requirements,
        ray_head_node_url=ray_head_node_url,
        ray_init_kwargs=ray_init_kwargs,
    )
    ray_pipeline.dag = pipeline.dag
    ray_pipeline.sequential_stages = bool(getattr(pipeline, "sequential_stages", False))
    return ray_pipeline
