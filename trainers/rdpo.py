"""rDPO: DPO with a per-example soft preference label ``tau``, on TRL's DPOTrainer.

The rDPO paper (arXiv 2402.08005) scores both responses of a synthetic pair with an
external reward model and turns the scores into ``tau``, the probability that the
``chosen`` response is really the better one. Its loss is per-example label smoothing:

    L = -tau * log sigmoid(beta * delta) - (1 - tau) * log sigmoid(-beta * delta)

with ``delta`` the usual DPO margin of policy/reference log-ratios. At ``tau = 1`` it
is TRL's sigmoid DPO loss; at ``tau = 0`` the sigmoid loss on the swapped pair; its
gradient ``beta * (sigmoid(beta * delta) - tau)`` vanishes when the policy's implied
preference equals the scorer's. TRL's ``loss_type="robust"`` (Chowdhury et al.) is a
different, unbiased-noise method with one global rate, and TRL 1.16 has no per-row
label: hence this subclass.

How little it overrides, and why that is exact: since
``log sigmoid(x) - log sigmoid(-x) = x``, the rDPO loss is the sigmoid loss plus a
linear term, ``L = -log sigmoid(beta * delta) + (1 - tau) * beta * delta``. TRL 1.16 has
no per-example loss hook (its losses are computed inline in the private
``_compute_loss``), so :class:`RDPOTrainer` overrides the narrowest public method,
``compute_loss``: TRL runs its own forward pass, reference handling, sigmoid loss and
metrics, and the linear term is added from TRL's own numbers: the policy's sequence
log-probs are TRL's public ``compute_ref_log_probs`` reduction applied to a replay of
the outputs of the forward pass TRL just ran (no second forward, no re-implemented
reduction), and the reference log-probs are the ones TRL reads for the batch. A TRL
upgrade that changes how sequences are scored changes both terms together.

``tau`` travels as a dataset column: it survives TRL's tokenization (``map`` keeps
columns), is kept by the signature-column filter, and a thin collator wrapper adds it
to each batch as a float tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field
from trl import DPOConfig, DPOTrainer

from synthalign.errors import RecipeError
from synthalign.trainers.common import (
    TrainRecipe,
    load_train_recipe,
    run_training,
    trl_config_kwargs,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "RDPOConfig",
    "RDPOTrainRecipe",
    "RDPOTrainer",
    "SoftPreferenceCollator",
    "train_from_recipe",
]


@dataclass
class RDPOConfig(DPOConfig):
    r"""Configuration for :class:`RDPOTrainer`: TRL's ``DPOConfig`` plus where ``tau`` lives.

    Parameters:
        tau_column (`str`, *optional*, defaults to `"tau"`):
            Dataset column holding the per-example probability, in [0, 1], that ``chosen`` is
            preferred to ``rejected``. Rows whose value is missing are an error: drop them
            when building the data (synthalign's rDPO pipeline does).

    The rDPO loss generalizes TRL's ``loss_type="sigmoid"`` with reverse-KL log-ratios, so
    ``loss_type`` must be ``["sigmoid"]``, ``f_divergence_type`` ``"reverse_kl"`` and
    ``use_weighting`` off; ``label_smoothing`` must be 0 (``tau`` replaces it per row).
    """

    tau_column: str = field(
        default="tau",
        metadata={
            "help": "Dataset column with the per-example preference probability tau in [0, 1]."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(
                f"RDPOConfig needs loss_type=['sigmoid'] (rDPO is per-example label smoothing of it), got {self.loss_type}"
            )
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                "RDPOConfig supports f_divergence_type='reverse_kl' only (standard DPO log-ratios)"
            )
        if self.use_weighting:
            raise ValueError(
                "RDPOConfig does not combine with use_weighting (WPO); turn one of them off"
            )
        if self.label_smoothing != 0.0:
            raise ValueError(
                "RDPOConfig: label_smoothing must be 0; the per-row tau column replaces it"
            )


class SoftPreferenceCollator:
    """Wraps a preference collator and adds each example's ``tau`` as a float tensor.

    Wrapping (rather than subclassing ``DataCollatorForPreference``) keeps whatever
    collator the trainer or the user chose, padding and truncation included.
    """

    def __init__(self, base: Any, tau_column: str = "tau") -> None:
        self.base = base
        self.tau_column = tau_column

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.base(examples)
        if examples and self.tau_column in examples[0]:
            values = [example[self.tau_column] for example in examples]
            if any(v is None for v in values):
                raise ValueError(
                    f"a row has no {self.tau_column!r}: drop unscored pairs before training"
                )
            batch["tau"] = torch.tensor(values, dtype=torch.float32)
        return batch


class _Tap:
    """Calls the model and keeps the outputs of its first call: TRL's policy forward pass."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        if self.outputs is None:
            self.outputs = out
        return out


class _Replay:
    """Stands in for the model in TRL's ``compute_ref_log_probs``: returns recorded outputs."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs


def _keep_autograd() -> Any:
    """A torch function mode that runs every op with autograd on.

    ``compute_ref_log_probs`` reduces per-token log-probs under ``torch.no_grad()`` (it is
    meant for the frozen reference); replaying the policy's outputs through it inside
    this mode keeps the reduction differentiable, so rDPO's gradient flows through TRL's
    own sequence scoring.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class KeepAutograd(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            with torch.enable_grad():
                return func(*args, **(kwargs or {}))

    return KeepAutograd()


class RDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with the rDPO loss: a per-row soft label ``tau`` (see module doc).

    Overrides ``compute_loss`` (TRL's loss plus rDPO's linear term, see the module doc)
    and ``compute_ref_log_probs`` (only to keep ``tau``, a label, out of the model's
    inputs). Everything else (tokenization, LoRA/PEFT reference via disabled adapters,
    precomputed reference log-probs, DeepSpeed/FSDP/DDP through accelerate, metrics) is
    TRL's. Extra logged metric: ``tau`` (batch mean).
    """

    _tag_names = ["trl", "dpo", "rdpo", "synthalign"]
    _name = "rDPO"
    _paper = {
        "title": "Refined Direct Preference Optimization with Synthetic Data for Behavioral Alignment of LLMs",
        "id": "2402.08005",
        "citation": (
            "@article{gallego2024refined,\n"
            "    title   = {{Refined Direct Preference Optimization with Synthetic Data for Behavioral Alignment of LLMs}},\n"
            "    author  = {V\\'ictor Gallego},\n"
            "    year    = 2024,\n"
            "    journal = {arXiv preprint arXiv:2402.08005},\n"
            "}"
        ),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if not isinstance(config, RDPOConfig):
            raise TypeError(
                "RDPOTrainer needs args=RDPOConfig(...) (DPOConfig lacks the tau settings)"
            )
        train_dataset = (
            kwargs.get("train_dataset")
            if "train_dataset" in kwargs
            else (args[4] if len(args) > 4 else None)
        )
        if train_dataset is not None:
            first = next(iter(train_dataset))
            if config.tau_column not in first:
                raise ValueError(
                    f"train_dataset has no {config.tau_column!r} column: RDPOTrainer needs a soft label per row "
                    "(use DPOTrainer for hard labels)"
                )
        super().__init__(*args, **kwargs)
        # After TRL's __init__: a reference precompute there used the plain collator (no tau needed).
        self.data_collator = SoftPreferenceCollator(self.data_collator, config.tau_column)
        # transformers drops dataset columns outside this list before collation: TRL's list plus tau
        self._set_signature_columns_if_needed()
        if config.tau_column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, config.tau_column]

    def compute_ref_log_probs(
        self, model: Any, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # tau is a label, not a model input
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "tau"})

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """TRL's sigmoid DPO loss on the batch plus ``(1 - tau) * beta * delta`` (mean over rows)."""
        inputs = dict(inputs)
        tau = inputs.pop("tau", None)
        if tau is None:
            raise ValueError("the batch has no 'tau': RDPOTrainer needs its SoftPreferenceCollator")
        if "ref_chosen_logps" not in inputs:
            # The reference forward TRL would run inline, run here once so both terms read it.
            ref_model = self.ref_model if self.ref_model is not None else self.model
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = self.compute_ref_log_probs(
                ref_model, inputs
            )
        tap = _Tap(model)
        precompute, self.precompute_ref_logps = (
            self.precompute_ref_logps,
            True,
        )  # TRL reads them from the batch
        try:
            result = super().compute_loss(tap, inputs, return_outputs, num_items_in_batch)
        finally:
            self.precompute_ref_logps = precompute
        with _keep_autograd():
            chosen_logps, rejected_logps = self.compute_ref_log_probs(_Replay(tap.outputs), inputs)
        delta = (chosen_logps - inputs["ref_chosen_logps"]) - (
            rejected_logps - inputs["ref_rejected_logps"]
        )
        tau = tau.to(device=delta.device, dtype=delta.dtype)
        # -log s(b d) + (1 - tau) b d  ==  -tau log s(b d) - (1 - tau) log s(-b d)
        linear = self.loss_weights[0] * ((1.0 - tau) * self.beta * delta).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["tau"].append(
            self.accelerator.gather_for_metrics(tau.detach()).mean().item()
        )
        return (result[0] + linear, result[1]) if return_outputs else result + linear


# ------------------------------------------------------------------ recipes / CLI

PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected"]


class RDPOTrainRecipe(TrainRecipe):
    """A ``synthalign train rdpo`` / ``train dpo`` run over an rDPO dataset folder.

    ``dataset_config`` defaults by kind: ``rdpo`` (with ``tau``) for rDPO and ``dpo`` (the
    same pairs without ``tau``) for the plain-DPO baseline. The paper trains the student
    with LoRA; set ``lora: {}`` for its defaults.
    """

    beta: float = Field(default=0.1, gt=0, description="DPO temperature beta")
    precompute_ref_log_probs: bool = Field(
        default=False,
        description="score the reference once before training (saves memory without LoRA)",
    )
    tau_column: str = "tau"

    trl_config: ClassVar[str | None] = "trl:DPOConfig"


def build_trainer(
    recipe: RDPOTrainRecipe,
    kind: Literal["rdpo", "dpo"],
    model: Any,
    tokenizer: Any,
    dataset: Any,
    output_dir: Path,
) -> DPOTrainer:
    """RDPOTrainer (kind ``rdpo``) or TRL's DPOTrainer (kind ``dpo``) configured from the recipe."""
    config_cls = RDPOConfig if kind == "rdpo" else DPOConfig
    kwargs = trl_config_kwargs(recipe, config_cls, output_dir)
    kwargs.setdefault("beta", recipe.beta)
    kwargs.setdefault("precompute_ref_log_probs", recipe.precompute_ref_log_probs)
    if kind == "rdpo":
        kwargs.setdefault("tau_column", recipe.tau_column)
    try:
        args = config_cls(**kwargs)
    except ValueError as exc:
        raise RecipeError(f"{kind} trainer settings: {str(exc).splitlines()[0]}") from None
    trainer_cls = RDPOTrainer if kind == "rdpo" else DPOTrainer
    return trainer_cls(**recipe.trainer_kwargs(model, tokenizer, dataset, args))


def train_from_recipe(
    config: str | Path | dict[str, Any] | RDPOTrainRecipe,
    *,
    kind: str = "rdpo",
    dataset: str | None = None,
    model: str | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    dataset_config: str | None = None,
) -> Path:
    """Train rDPO (or the plain-DPO baseline) and return the saved model folder.

    The CLI maps both ``synthalign train rdpo`` and ``synthalign train dpo`` here.
    """
    if kind not in ("rdpo", "dpo"):
        raise RecipeError(f"trainers.rdpo trains 'rdpo' or 'dpo', not {kind!r}")
    recipe = load_train_recipe(
        config, RDPOTrainRecipe, dataset=dataset, model=model, output=output,
        dataset_config=dataset_config,
    )  # fmt: skip
    if recipe.dataset_config is None:
        recipe = recipe.model_copy(update={"dataset_config": kind})
    required = [*PREFERENCE_COLUMNS, recipe.tau_column] if kind == "rdpo" else PREFERENCE_COLUMNS
    return run_training(
        recipe,
        kind=kind,
        required_columns=required,
        build_trainer=lambda m, t, d, o: build_trainer(recipe, kind, m, t, d, o),  # type: ignore[arg-type]
        overwrite=overwrite,
    )
