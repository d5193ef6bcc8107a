"""Calibrating rDPO's soft label over the whole run.

``tau = sigmoid((s_chosen - s_rejected) / T)`` only carries signal when T matches the
scorer's units: ArmoRM-scale gaps of a few hundredths give tau 0.50-0.53 at T = 1 for
every pair, which leaves the rDPO loss almost no gradient. ``tau_temperature: auto``
therefore sets T from the run's own score gaps (their standard deviation over the
kept pairs), which needs every pair at once: :class:`CalibrateTau` is a distilabel
``GlobalStep``, so it sees all rows of the run whatever the batch size, and a rerun of
``pipeline.yaml`` calibrates the same way.

A binary or three-level judge (scale range <= 2) is not calibrated by spread: most
pairs tie there, and ``sigmoid(0) = 0.5`` would make every tie carry no preference.
It gets the documented level map of :func:`~synthalign.steps.scoring.coarse_tau`
instead (tie 0.6, one level up 0.9, one down 0.2).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distilabel.steps import GlobalStep, StepInput
from pydantic import Field

from synthalign.steps.columns import FixedColumns
from synthalign.steps.scoring import calibrated_temperature, coarse_tau, preference_probability

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.typing import StepOutput

__all__ = ["COARSE_SCALE_RANGE", "CalibrateTau", "calibrated_taus", "tau_record"]

COARSE_SCALE_RANGE = 2
"""A judge scale whose max - min is at most this (0/1, or three levels) gets the level
map instead of a spread-calibrated sigmoid."""


def calibrated_taus(
    gaps: Sequence[float | None], clip: tuple[float, float] = (0.0, 1.0)
) -> tuple[list[float | None], float]:
    """tau of every gap at the run's own temperature, and that temperature."""
    temperature = calibrated_temperature(gaps)
    taus = [preference_probability(g, 0.0, temperature, clip) for g in gaps]
    return taus, temperature


class CalibrateTau(FixedColumns, GlobalStep):
    """Sets every kept pair's ``tau`` from all of the run's pairs at once.

    ``tau_temperature``: ``"auto"`` (T = the standard deviation of ``s_revised -
    s_original`` over the kept pairs, :func:`calibrated_temperature`) or a fixed positive T.
    With ``coarse_judge`` (a 0/1 or three-level judge) and ``"auto"``, tau is the
    level map :func:`~synthalign.steps.scoring.coarse_tau` of P(revised preferred),
    turned round when the original is chosen. ``probability`` (a pairwise scorer)
    keeps tau at T = 1: its scores are already log-odds of P(revised preferred).

    Columns: ``tau`` (final), ``tau_t1`` (the same pair at T = 1, the card's "before"
    histogram), ``tau_temperature`` (the T used; None for the level map) and
    ``tau_calibration`` (``auto``, ``fixed``, ``judge levels`` or ``pairwise``).
    """

    input_columns: ClassVar[tuple[str, ...]] = (
        "kept", "chosen_is", "score_chosen", "score_rejected", "score_original", "score_revised",
    )  # fmt: skip
    output_columns: ClassVar[tuple[str, ...]] = (
        "tau", "tau_t1", "tau_temperature", "tau_calibration",
    )  # fmt: skip

    tau_temperature: float | Literal["auto"] = Field(
        default="auto", description="'auto' (from the run's score gaps) or a fixed T > 0"
    )
    clip: list[float] = Field(default_factory=lambda: [0.0, 1.0], min_length=2, max_length=2)
    scorer: Literal["reward_model", "judge", "coarse_judge", "pairwise"] = "reward_model"

    def _mode(self) -> str:
        if self.scorer == "pairwise":
            return "pairwise"
        if self.tau_temperature != "auto":
            return "fixed"
        return "judge levels" if self.scorer == "coarse_judge" else "auto"

    def _temperature(self, rows: list[dict[str, Any]], mode: str) -> float | None:
        if mode == "fixed":
            return float(self.tau_temperature)
        if mode == "auto":
            return calibrated_temperature(
                [float(r["score_revised"]) - float(r["score_original"]) for r in rows]
            )
        return 1.0 if mode == "pairwise" else None

    def _tau(self, row: dict[str, Any], temperature: float | None) -> float | None:
        clip = (self.clip[0], self.clip[1])
        if temperature is not None:
            return preference_probability(
                row["score_chosen"], row["score_rejected"], temperature, clip
            )
        p_revised = coarse_tau(float(row["score_revised"]) - float(row["score_original"]))
        tau = p_revised if row.get("chosen_is") == "revised" else 1.0 - p_revised
        return min(max(tau, clip[0]), clip[1])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        pairs = [row for row in inputs if row.get("kept")]
        mode = self._mode()
        temperature = self._temperature(pairs, mode)
        for row in inputs:
            row.update(dict.fromkeys(self.outputs))
        for row in pairs:
            row.update(
                tau=self._tau(row, temperature),
                tau_t1=preference_probability(
                    row["score_chosen"], row["score_rejected"], 1.0, (self.clip[0], self.clip[1])
                ),
                tau_temperature=temperature,
                tau_calibration=mode,
            )
        self._logger.info(
            "tau calibration: %s, T = %s over %d pairs", mode, temperature, len(pairs)
        )
        yield inputs


def tau_record(datasets: Mapping[str, "Dataset"]) -> dict[str, Any]:
    """``synthalign.json``'s ``tau_calibration``: how T was set, T, and tau's spread.

    Read from the ``all`` config's kept pairs (what :class:`CalibrateTau` wrote), so
    the record says what the published tau is without recomputing it from the rows:
    ``mode`` (``auto``, ``fixed``, ``judge levels``, ``pairwise``), ``temperature``
    (None for the level map), and the population std of tau at T = 1 (``std_before``)
    and as published (``std_after``). Empty when no pair was kept.
    """
    everything = datasets.get("all")
    needed = ["kept", "tau", *CalibrateTau.output_columns]
    if everything is None or not set(needed) <= set(everything.column_names):
        return {}
    kept = [r for r in everything.select_columns(needed) if r["kept"] and r["tau"] is not None]
    if not kept:
        return {}
    after = [float(r["tau"]) for r in kept]
    before = [float(r["tau_t1"]) for r in kept if r["tau_t1"] is not None]
    return {
        "tau_calibration": {
            "mode": kept[0]["tau_calibration"],
            "temperature": kept[0]["tau_temperature"],
            "pairs": len(kept),
            "std_before": round(statistics.pstdev(before), 4) if before else None,
            "std_after": round(statistics.pstdev(after), 4),
            "mean_after": round(statistics.fmean(after), 4),
        }
    }
