"""APGR / CPT / AIQ definitions on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from router import metrics as M


def test_oracle_and_reverse_bracket_random() -> None:
    rng = np.random.default_rng(0)
    st = (rng.random(2000) < 0.8).astype(float)
    wk = (rng.random(2000) < 0.65).astype(float)
    oracle = M.apgr(M.routing_curve(M.oracle_scores(st, wk), st, wk))
    worst = M.apgr(M.routing_curve(-M.oracle_scores(st, wk), st, wk))
    rand = np.mean([M.apgr(M.routing_curve(M.random_scores(2000, rng), st, wk)) for _ in range(20)])
    assert oracle > 1.0 > rand > worst
    assert abs(rand - 0.5) < 0.05


def test_curve_endpoints_and_ties() -> None:
    st = np.array([1, 1, 0, 1.0])
    wk = np.array([0, 1, 0, 0.0])
    c = M.routing_curve(np.array([0.5, 0.5, 0.1, 0.9]), st, wk)
    assert c.share[0] == 0 and c.share[-1] == 1
    assert c.quality[0] == pytest.approx(wk.mean()) and c.quality[-1] == pytest.approx(st.mean())
    # the two tied scores are routed together: shares 0, .25, .75, 1
    assert np.allclose(c.share, [0, 0.25, 0.75, 1.0])


def test_apgr_cpt_hand_computed() -> None:
    # weak 0/4, strong 2/4 correct; perfect ranking puts both gains first
    st = np.array([1, 1, 0, 0.0])
    wk = np.zeros(4)
    c = M.routing_curve(np.array([4, 3, 2, 1.0]), st, wk)
    # curve: (0,0) (.25,.25) (.5,.5) (.75,.5) (1,.5); area = .03125+.09375+.125+.125 = .375; strong area .5
    assert M.apgr(c) == pytest.approx(0.375 / 0.5)
    assert M.cpt(c, 0.5) == pytest.approx(0.25)
    assert M.cpt(c, 0.8) == pytest.approx(0.4)


def test_routellm_quantile_variant_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    s = rng.random(5000)
    st = (rng.random(5000) < 0.5 + 0.3 * s).astype(float)
    wk = (rng.random(5000) < 0.6).astype(float)
    exact = M.apgr(M.routing_curve(s, st, wk))
    q10 = M.apgr(M.routing_curve(s, st, wk, num_thresholds=10))
    assert abs(exact - q10) < 0.03


def test_hull_and_aiq() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    qual = np.array([0.5, 0.6, 0.9, 0.8])
    hx, hy = M.nondecreasing_convex_hull(cost, qual)
    # (2, .6) lies under the segment (1,.5)-(3,.9); (4,.8) is dominated
    assert hx.tolist() == [1.0, 3.0] and hy.tolist() == [0.5, 0.9]
    # area: trapezoid 1..3 = 1.4, flat .9 on 3..4 → 2.3 over a range of 3
    assert M.aiq(cost, qual, (1.0, 4.0)) == pytest.approx(2.3 / 3)


def test_oracle_choice_prefers_cheapest_correct_and_skips_unknown() -> None:
    labels = np.array([[1, 1, 0], [0, np.nan, 1], [0, 0, 0.0]])
    costs = np.array([[3, 1, 2], [1, 2, 3], [5, 4, 6.0]])
    assert M.oracle_choice(labels, costs).tolist() == [1, 2, 1]
    c, q = M.cost_quality_points(labels, costs, np.array([0, 1, 2]))
    assert q == pytest.approx(0.5)  # the NaN label is skipped, not counted as wrong
