"""RDPOTrainer's loss is TRL's sigmoid DPO loss, per-example label-smoothed by tau.

Every comparison is on the same fixed tiny model and the same batch: the policy is
nudged away from the reference by a seeded perturbation so the DPO margin is not zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

datasets = pytest.importorskip("datasets")
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from synthalign.models import tiny_random_path  # noqa: E402
from synthalign.trainers.rdpo import RDPOConfig, RDPOTrainer  # noqa: E402

datasets.disable_progress_bars()

TAUS = [1.0, 0.0, 0.3, 0.8]
BETA = 0.5


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i, tau in enumerate(TAUS):
        rows.append(
            {
                "prompt": [{"role": "user", "content": "question about science " * (3 * i + 1)}],
                "chosen": [{"role": "assistant", "content": "an answer with reasoning " * (i + 2)}],
                "rejected": [{"role": "assistant", "content": "no " * (6 - i)}],
                "tau": tau,
            }
        )
    return rows


def _swapped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def _build(
    kind: str, rows: list[dict[str, Any]], setup: str, out: Path, **extra: Any
) -> DPOTrainer:
    from peft import LoraConfig

    path = tiny_random_path()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config_cls, trainer_cls = (
        (RDPOConfig, RDPOTrainer) if kind == "rdpo" else (DPOConfig, DPOTrainer)
    )
    if kind != "rdpo":
        rows = [{k: v for k, v in r.items() if k != "tau"} for r in rows]
    args = config_cls(
        output_dir=str(out),
        beta=BETA,
        bf16=False,
        gradient_checkpointing=False,
        precompute_ref_log_probs=setup == "precomputed",
        per_device_train_batch_size=len(rows),
        report_to="none",
        dataloader_pin_memory=False,
        **extra,
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
        if setup == "lora"
        else None,
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # same nudge for every trainer: policy != reference
        for _, param in sorted(trainer.model.named_parameters()):
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return trainer


def _batch(
    trainer: DPOTrainer,
    *,
    swap: bool = False,
    tau: float | list[float] | None = None,
    rows: list[int] | None = None,
) -> dict:
    examples = [dict(trainer.train_dataset[i]) for i in (rows or range(len(trainer.train_dataset)))]
    if swap:  # swap after tokenization: identical padding, so agreement is to float rounding
        for ex in examples:
            ex["chosen_ids"], ex["rejected_ids"] = ex["rejected_ids"], ex["chosen_ids"]
            if "ref_chosen_logps" in ex:
                ex["ref_chosen_logps"], ex["ref_rejected_logps"] = (
                    ex["ref_rejected_logps"],
                    ex["ref_chosen_logps"],
                )
    batch = trainer.data_collator(examples)
    if tau is not None:
        batch["tau"] = torch.tensor(
            tau if isinstance(tau, list) else [tau] * len(examples), dtype=torch.float32
        )
    return trainer._prepare_inputs(batch)


def _loss(trainer: DPOTrainer, batch: dict) -> torch.Tensor:
    return trainer.compute_loss(trainer.model, batch)


@pytest.fixture(scope="module", params=["full", "precomputed", "lora"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, DPOTrainer, DPOTrainer]:
    out = tmp_path_factory.mktemp(request.param)
    rows = _rows()
    return (
        request.param,
        _build("rdpo", rows, request.param, out / "rdpo"),
        _build("dpo", rows, request.param, out / "dpo"),
    )


@pytest.mark.slow
def test_tau_one_is_trl_sigmoid_dpo(pair: tuple[str, DPOTrainer, DPOTrainer]) -> None:
    _, rdpo, dpo = pair
    with torch.no_grad():
        ours, theirs = _loss(rdpo, _batch(rdpo, tau=1.0)), _loss(dpo, _batch(dpo))
    assert abs(theirs.item() - 0.6931) > 1e-3  # the margin is not zero
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


@pytest.mark.slow
def test_tau_zero_is_dpo_on_the_swapped_pair(pair: tuple[str, DPOTrainer, DPOTrainer]) -> None:
    _, rdpo, dpo = pair
    with torch.no_grad():
        ours, swapped = _loss(rdpo, _batch(rdpo, tau=0.0)), _loss(dpo, _batch(dpo, swap=True))
    assert ours.item() == pytest.approx(swapped.item(), abs=1e-6)


@pytest.mark.slow
def test_tau_between_is_the_weighted_mix(pair: tuple[str, DPOTrainer, DPOTrainer]) -> None:
    _, rdpo, dpo = pair
    with torch.no_grad():
        ours = _loss(rdpo, _batch(rdpo, tau=0.3)).item()
        mix = 0.3 * _loss(dpo, _batch(dpo)).item() + 0.7 * _loss(dpo, _batch(dpo, swap=True)).item()
    assert ours == pytest.approx(mix, abs=1e-6)


@pytest.mark.slow
def test_per_row_tau_weights_each_pair_separately(pair: tuple[str, DPOTrainer, DPOTrainer]) -> None:
    """The dataset's own tau column reaches the loss row by row (through the collator)."""
    _, rdpo, dpo = pair
    with torch.no_grad():
        ours = _loss(rdpo, _batch(rdpo)).item()  # tau from the dataset: TAUS
        # per-row reference from single-row batches (other padding: float noise only)
        per_row = [
            tau * _loss(dpo, _batch(dpo, rows=[i])).item()
            + (1 - tau) * _loss(dpo, _batch(dpo, rows=[i], swap=True)).item()
            for i, tau in enumerate(TAUS)
        ]
    assert ours == pytest.approx(sum(per_row) / len(per_row), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["lora"], indirect=True)  # one setup is enough for gradients
def test_gradient_is_the_weighted_mix_of_dpo_gradients(
    pair: tuple[str, DPOTrainer, DPOTrainer],
) -> None:
    _, rdpo, dpo = pair

    def grads(trainer: DPOTrainer, batch: dict) -> dict[str, torch.Tensor]:
        trainer.model.zero_grad()
        _loss(trainer, batch).backward()
        return {
            n: p.grad.detach().clone()
            for n, p in trainer.model.named_parameters()
            if p.requires_grad
        }

    ours = grads(rdpo, _batch(rdpo, tau=0.3))
    straight, swapped = grads(dpo, _batch(dpo)), grads(dpo, _batch(dpo, swap=True))
    assert ours.keys() == straight.keys()
    for name, g in ours.items():
        torch.testing.assert_close(
            g, 0.3 * straight[name] + 0.7 * swapped[name], atol=1e-6, rtol=1e-5
        )


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["full"], indirect=True)
def test_tau_zero_matches_dpo_on_pairs_swapped_before_tokenization(
    tmp_path: Path, pair: tuple[str, DPOTrainer, DPOTrainer]
) -> None:
    """Swapping in the dataset changes which half of the batch each text lands in and how
    the batch is padded, so agreement is to float noise (about 1e-4), not 1e-6."""
    _, rdpo, _ = pair
    swapped_trainer = _build("dpo", _swapped(_rows()), "full", tmp_path / "swapped")
    with torch.no_grad():
        ours = _loss(rdpo, _batch(rdpo, tau=0.0)).item()
        theirs = _loss(swapped_trainer, _batch(swapped_trainer)).item()
    assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.slow
def test_sequence_scoring_is_trls_own_ld_dpo_included(tmp_path: Path) -> None:
    """rDPO reads TRL's sequence log-probs rather than re-deriving them: with LD-DPO's
    length weighting (``ld_alpha``) on, tau = 1 / 0 are still TRL's loss on the pair / the
    swapped pair, and the policy forward runs once per loss, as in DPO."""
    rows = _rows()
    rdpo = _build("rdpo", rows, "full", tmp_path / "r", ld_alpha=0.5)
    dpo = _build("dpo", rows, "full", tmp_path / "d", ld_alpha=0.5)
    calls = {"rdpo": 0, "dpo": 0}
    for name, trainer in (("rdpo", rdpo), ("dpo", dpo)):
        trainer.model.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    with torch.no_grad():
        ours, theirs = _loss(rdpo, _batch(rdpo, tau=1.0)), _loss(dpo, _batch(dpo))
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
        ours, swapped = _loss(rdpo, _batch(rdpo, tau=0.0)), _loss(dpo, _batch(dpo, swap=True))
        assert ours.item() == pytest.approx(swapped.item(), abs=1e-6)
    assert calls["rdpo"] == calls["dpo"] > 0  # policy + reference forwards, the same count


def test_config_refuses_losses_rdpo_does_not_generalize(tmp_path: Path) -> None:
    for bad in (
        {"loss_type": "ipo"},
        {"label_smoothing": 0.1},
        {"f_divergence_type": "js_divergence"},
    ):
        with pytest.raises(ValueError):
            RDPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **bad)


def test_trainer_needs_a_tau_column(tmp_path: Path) -> None:
    path = tiny_random_path()
    rows = [{k: v for k, v in r.items() if k != "tau"} for r in _rows()]
    args = RDPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none")
    with pytest.raises(ValueError, match="tau"):
        RDPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(path),
        )
