import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.metrics import (
    detection_metrics,
    equal_error_rate,
    false_positive_rate,
    per_family_metrics,
)


def test_perfect_scores():
    m = detection_metrics([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9])
    assert m["auc"] == 1.0 and m["ap"] == 1.0 and m["eer"] == 0.0
    assert m["acc_0.5"] == 1.0 and m["acc_best"] == 1.0
    assert (m["n_real"], m["n_fake"]) == (2, 2)


def test_reversed_scores():
    m = detection_metrics([0, 0, 1, 1], [0.9, 0.6, 0.4, 0.1])
    assert m["auc"] == 0.0 and m["eer"] == 1.0 and m["acc_0.5"] == 0.0
    # the best threshold calls everything one class: 2 of 4 right
    assert m["acc_best"] == 0.5


def test_hand_computed_case():
    # reals 0.1, 0.6; fakes 0.4, 0.8: pairs (fake > real) = (0.4>0.1)+(0.8>0.1)+(0.8>0.6) = 3/4
    m = detection_metrics(np.array([0, 0, 1, 1]), torch.tensor([0.1, 0.6, 0.4, 0.8]))
    assert m["auc"] == pytest.approx(0.75)
    # acc@0.5: 0.1 real ok, 0.6 real wrong, 0.4 fake wrong, 0.8 fake ok
    assert m["acc_0.5"] == 0.5
    # threshold 0.8 -> 3/4 right; threshold 0.4 -> 3/4 right
    assert m["acc_best"] == 0.75
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1): fpr = fnr = 0.5 on the segment (0,.5)-(.5,.5)
    assert m["eer"] == pytest.approx(0.5)
    # AP = mean precision at each fake's rank: 0.8 -> 1/1, 0.4 -> 2/3
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)


def test_acc_best_weighs_each_class_by_its_own_count():
    # unbalanced: 3 reals, 1 fake. Calling everything real gets 3 of 4; threshold 0.3 flags
    # 0.9 (real, wrong) and 0.3 (fake, right), also 3 of 4. Swapping the class counts in
    # (TP + TN) / N would score threshold 0.3 as (1 * 3 + 2/3 * 1) / 4 = 0.917
    m = detection_metrics([0, 0, 0, 1], [0.9, 0.1, 0.2, 0.3])
    assert m["acc_best"] == pytest.approx(0.75, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 8)), min_size=2, max_size=12).filter(
        lambda pairs: len({y for y, _ in pairs}) == 2
    )
)
def test_acc_best_is_the_best_accuracy_over_all_thresholds(pairs):
    # unbalanced random labels, scores on a coarse grid so ties are common; the brute force
    # tries every score as the threshold of ``s >= t`` and +inf (nothing flagged)
    y = np.array([p[0] for p in pairs], dtype=float)
    s = np.array([p[1] for p in pairs], dtype=float) / 8.0
    best = max(float(np.mean((s >= t) == (y == 1.0))) for t in [*np.unique(s), math.inf])
    # both sides are an integer count of right answers over N; acc_best builds it from the
    # float rates tpr * P + (1 - fpr) * R, so it may be off by rounding (~1e-16), far below
    # the 1/N that separates two different counts
    assert detection_metrics(y, s)["acc_best"] == pytest.approx(best, abs=1e-12)


def test_acc_at_half_flags_a_score_of_exactly_half():
    # the decision is p >= 0.5 (logit >= 0): a fake scored exactly 0.5 is called fake
    assert detection_metrics([1, 1, 0], [0.5, 0.5, 0.1])["acc_0.5"] == 1.0
    assert detection_metrics([1, 1, 0], [0.0, 0.0, -1.0], from_logits=True)["acc_0.5"] == 1.0


def test_ties_give_half_auc():
    m = detection_metrics([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    assert m["auc"] == 0.5 and m["eer"] == pytest.approx(0.5)


def test_random_scores_near_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    m = detection_metrics(y, rng.random(4000))
    assert abs(m["auc"] - 0.5) < 0.03 and abs(m["eer"] - 0.5) < 0.03
    assert m["acc_best"] >= m["acc_0.5"]


def test_eer_interpolates():
    # segment (0, 0) -> (0.2, 0.9): fpr = 0.2 t, fnr = 1 - 0.9 t, equal at t = 1 / 1.1
    eer = equal_error_rate(np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.9, 1.0]))
    assert eer == pytest.approx(0.2 / 1.1)


def test_logits_and_invalid_input():
    m = detection_metrics([0, 1], [-3.0, 2.0], from_logits=True)
    assert m["auc"] == 1.0 and m["acc_0.5"] == 1.0
    with pytest.raises(ValueError, match="probabilities"):
        detection_metrics([0, 1], [-3.0, 2.0])
    with pytest.raises(ValueError, match="both classes"):
        detection_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="length"):
        detection_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([0, 1], [0.5, math.nan])


@given(
    st.lists(st.integers(-120, 120), min_size=2, max_size=20),
    st.floats(0.01, 500),
    st.floats(-100, 100),
)
def test_logit_metrics_are_invariant_to_an_increasing_affine_map(raw, a, b):
    # the rank metrics read the logits' order only: a float64 sigmoid tied every logit above
    # ~36.7 (logits 40, 41 vs 45, 46 scored AUC 0.5); acc@0.5 is the sign, so b stays 0 there
    labels = [i % 2 for i in range(len(raw))]
    z = np.array(raw) / 2.0  # logits in [-60, 60], 0.5 apart: a * z + b keeps their order
    m = detection_metrics(labels, z, from_logits=True)
    shifted = detection_metrics(labels, a * z + b, from_logits=True)
    for key in ("auc", "ap", "eer", "acc_best"):
        assert shifted[key] == pytest.approx(m[key], abs=1e-12)
    assert detection_metrics(labels, a * z, from_logits=True)["acc_0.5"] == m["acc_0.5"]


def test_large_separated_logits_score_perfectly():
    m = detection_metrics([0, 0, 1, 1], [40.0, 41.0, 45.0, 46.0], from_logits=True)
    assert (m["auc"], m["ap"], m["eer"], m["acc_best"]) == (1.0, 1.0, 0.0, 1.0)
    assert m["acc_0.5"] == 0.5  # every logit >= 0: all called fake


def test_per_family_metrics():
    fam = ["real"] * 4 + ["easy"] * 2 + ["hard"] * 2
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.05, 0.25]
    out = per_family_metrics(y, s, fam)
    assert set(out) == {"easy", "hard", "mean"}
    assert out["easy"]["auc"] == 1.0
    # hard fakes 0.05 (beats no real) and 0.25 (beats 0.1, 0.2): 2 / 8
    assert out["hard"]["auc"] == pytest.approx(0.25)
    assert out["mean"]["auc"] == pytest.approx(0.625)
    assert out["easy"]["n_real"] == 4 and out["easy"]["n_fake"] == 2
    with pytest.raises(ValueError, match="family"):
        per_family_metrics(y, s, ["nature"] * 4 + fam[4:])
    with pytest.raises(ValueError, match="labels"):
        per_family_metrics([1] + y[1:], s, fam)


def test_false_positive_rate():
    assert false_positive_rate([0.1, 0.5, 0.7, 0.9], 0.5) == 0.75
    assert false_positive_rate(torch.tensor([0.1, 0.2]), 0.5) == 0.0


def test_false_positive_rate_refuses_non_finite_scores():
    # a NaN is never >= a threshold: it counted as a real kept (1/3 here, not undefined)
    with pytest.raises(ValueError, match="NaN or inf"):
        false_positive_rate([math.nan, math.nan, 0.9], 0.5)
    # nothing is >= NaN: the rate read 0.0
    with pytest.raises(ValueError, match="not NaN"):
        false_positive_rate([1.0, 2.0, 3.0], math.nan)
    assert false_positive_rate([1.0, 2.0], math.inf) == 0.0  # a decision: flag nothing
    assert false_positive_rate([1.0, 2.0], -math.inf) == 1.0


def test_threshold_allowing_refuses_counts_outside_the_scores_and_non_finite_scores():
    from assocmem.forensic.calibration import threshold_allowing

    s = [0.1, 0.2, 0.3, 0.4]
    assert threshold_allowing(s, 1) == math.nextafter(0.3, math.inf)
    for k in (-1, 4, 2.0, True):  # -1 wrapped to the lowest score; 4 and 2.0 an IndexError
        with pytest.raises(ValueError, match="false_positives"):
            threshold_allowing(s, k)
    with pytest.raises(ValueError, match="NaN or inf"):
        threshold_allowing([0.1, math.nan], 0)
