"""Every card figure renders, and the defects a reader saw are gone: overlapping ticks on
the rDPO scatter, a SynPO gap axis whose label contradicted the gap's sign, the Condor
length-shift title clipped, tau bins that hid the mass, fractional ticks on count axes.

Checked on the drawn figure (Agg), with data shaped like what the methods produce.
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING

import pytest

from synthalign.cards import condor, gra, rdpo, synpo
from synthalign.cards.diversity import _histogram, spread_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PNG = b"\x89PNG\r\n\x1a\n"
RNG = random.Random(0)


def _drawn(fig: Figure) -> Figure:
    fig.canvas.draw()
    return fig


def _whole(values: list[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def _visible_ticks(ax: Axes, axis: str) -> list[float]:
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t for t in ticks if lo <= t <= hi]


def test_every_card_figure_renders_to_png() -> None:
    import numpy as np

    stages = [{"stage": "question", "rows out": 8, "failed": 4}]
    pngs = [
        condor.heatmap_png([[1, 2], [0, 3]], ["Science", "Art"], ["QA", "Creation"], "t"),
        condor.length_shift_png(["a b c", "d e"], ["a b c d", "e"]),
        condor.funnel_png(stages, 12),
        gra.funnel_figure({1: {"kept": 3, "review": 2}}),
        gra.score_histogram([{"review_mean": 7.5, "review_decision": "accept"}], 8.0),
        gra.role_figure({"m1": {"generator": 2, "reviewer": 1}}),
        synpo.funnel_figure({"1": {"prompts": 12, "pairs": 6}}),
        synpo.gap_histogram({"chosen - rejected": [0.1, -0.2, 0.3]}, 0.0, "t"),
        rdpo.tau_histogram([0.4, 0.6, 0.7], [0.45, 0.55, 0.6]),
        rdpo.score_scatter([0.1, 0.2], [0.3, 0.1], [True, False]),
        _histogram({"output": np.asarray([0.2, 0.5, 0.9])}),
        spread_figure(
            {"root_domain": ["Science", "Art", "Science"], "task_type": ["QA", "QA", "Code"]}
        ),
    ]
    assert all(png.startswith(PNG) and len(png) > 2000 for png in pngs)


def test_rdpo_scatter_tick_labels_do_not_overlap() -> None:
    """Reward-model scores have long tick labels; they must stay few and apart."""
    original = [RNG.uniform(-3e5, 4e5) for _ in range(40)]
    revised = [v + RNG.uniform(-1.4e5, 1.4e5) for v in original]
    fig = _drawn(rdpo.score_scatter_figure(original, revised, [True] * 30 + [False] * 10))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert 2 <= len(boxes) <= 7, [t.get_text() for t in labels]
        for a, b in itertools.pairwise(boxes):
            assert not a.overlaps(b), [t.get_text() for t in labels]


def test_rdpo_scatter_of_judge_scores_has_whole_number_ticks() -> None:
    fig = _drawn(rdpo.score_scatter_figure([3, 5, 7, 9], [4, 5, 8, 6], [True] * 4))
    assert _whole(_visible_ticks(fig.axes[0], "x")) and _whole(_visible_ticks(fig.axes[0], "y"))


def test_synpo_gap_axis_says_which_side_is_which() -> None:
    gaps = {"gold - policy": [-0.4, -0.1, 0.2, 0.5]}
    ax = synpo.gap_histogram_figure(gaps, 0.0, "t", difference="gold - policy").axes[0]
    label = ax.get_xlabel()
    assert "gold - policy" in label and "above 0: gold scored higher" in label
    assert "higher-ranked minus lower-ranked" not in label  # negative gaps exist
    assert _whole(_visible_ticks(_drawn(ax.figure).axes[0], "y"))


def test_condor_length_shift_titles_fit_in_the_figure() -> None:
    original = [" ".join(["w"] * RNG.randint(5, 80)) for _ in range(20)]
    refined = [" ".join(["w"] * RNG.randint(5, 120)) for _ in range(20)]
    fig = _drawn(condor.length_shift_figure(original, refined))
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        assert frame.x0 <= title.x0 and title.x1 <= frame.x1, ax.get_title()
        assert title.y1 <= frame.y1, ax.get_title()
    assert _whole(_visible_ticks(fig.axes[0], "y"))


def test_tau_bins_show_a_narrow_band_over_several_bars() -> None:
    """tau near 0.5 (a scorer that is rarely sure): 20 bins over [0, 1] put it in one."""
    taus = [0.5 + RNG.uniform(-0.03, 0.04) for _ in range(60)]
    ax = _drawn(rdpo.tau_histogram_figure(taus)).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 60
    assert max(heights) <= 60 * 0.4, heights  # the mass is spread over the bars it spans
    assert sum(h > 0 for h in heights) >= 5
    lo, hi = ax.get_xlim()
    assert lo <= 0.5 <= hi  # the "no preference" line stays in view
    assert _whole(_visible_ticks(ax, "y"))


@pytest.mark.parametrize(
    ("make", "axis"),
    [
        (lambda: condor.funnel_png, "y"),
        (lambda: gra.funnel_figure, "y"),
        (lambda: gra.role_figure, "x"),
        (lambda: synpo.funnel_figure, "x"),
    ],
)
def test_count_axes_have_whole_number_ticks(make: object, axis: str) -> None:
    """Small counts (1-3 rows) are where Matplotlib picks 0.5 steps; drawn through the
    same code the PNG functions run, captured at render time."""
    from matplotlib.figure import Figure

    seen: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: object, **kwargs: object) -> None:
        seen.append(self)
        original(self, *args, **kwargs)

    data = {
        condor.funnel_png: ([{"stage": "question", "rows out": 2, "failed": 1}], 3),
        gra.funnel_figure: ({1: {"kept": 1, "review": 2}},),
        gra.role_figure: ({"m1": {"generator": 1, "reviewer": 2}},),
        synpo.funnel_figure: ({"1": {"prompts": 3, "pairs": 1}},),
    }
    function = make()  # type: ignore[operator]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        function(*data[function])
    (fig,) = seen
    assert _whole(_visible_ticks(fig.axes[0], axis))
