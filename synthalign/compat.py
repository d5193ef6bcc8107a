"""Fixes for distilabel 1.5.3 behaviour that would hang a synthalign run.

Imported for its side effect by ``synthalign.steps.base`` (so every pipeline that uses
our steps gets it, a ``distilabel pipeline run`` rerun included) and by
``synthalign.methods``.

**Nothing left after a filter.** distilabel's batch manager only hands a step a batch
when it has rows for it. When a filtering step (invalid prompts, rejected instructions,
failed parses) drops *every* row, the next step never receives a batch flagged
``last_batch`` and the pipeline waits forever (seen with SynPO when a small model's
prompts all fail the filters). The patch lets the batch manager create that final,
empty batch exactly once, so the empty result flows through the remaining steps and
the run ends with empty configs the card can count.
"""

from __future__ import annotations

from typing import Any

from distilabel.pipeline.batch_manager import _BatchManagerStep

_LAST_SENT = "_synthalign_last_batch_sent"


def _needs_empty_last_batch(step: _BatchManagerStep) -> bool:
    """Every predecessor has sent its last batch, no rows are left, none was sent on."""
    if getattr(step, _LAST_SENT, False) or step.accumulate or step.convergence_step:
        return False
    if not step.data:
        return False
    return all(
        name in step.last_batch_received and sum(len(b.data[0]) for b in batches) == 0
        for name, batches in step.data.items()
    )


def _patch_batch_manager() -> None:
    if getattr(_BatchManagerStep, "_synthalign_patched", False):
        return
    original_ready = _BatchManagerStep._ready_to_create_batch_normal
    original_get = _BatchManagerStep.get_batch

    def ready(self: _BatchManagerStep) -> bool:
        return original_ready(self) or _needs_empty_last_batch(self)

    def get_batch(self: _BatchManagerStep) -> Any:
        batch = original_get(self)
        if batch is not None and batch.last_batch:
            setattr(self, _LAST_SENT, True)
        return batch

    _BatchManagerStep._ready_to_create_batch_normal = ready  # type: ignore[method-assign]
    _BatchManagerStep.get_batch = get_batch  # type: ignore[method-assign]
    _BatchManagerStep._synthalign_patched = True  # type: ignore[attr-defined]


_patch_batch_manager()
