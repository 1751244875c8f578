"""The detector's training loss on one batch: the cross-entropy (with a one-class margin), the
family attribution, and the reals' logit pairing with their twin views."""

import pytest
import torch
from family_support import CODES, batch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.detector_loss import detector_loss, logit_pairing
from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.npr import NPRWithDCT
from assocmem.forensic.models.one_class import margin_bce, margin_of


def detector():
    # eval(): no dropout and BatchNorm on its running statistics, so a forward of the batch
    # and its twins together equals forwards of each part (what the expectations compute)
    torch.manual_seed(0)
    return NPRWithDCT(widths=(4, 8), hidden=8, embed=4).eval()


def twinned(seed=0):
    x, y, codes = batch(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    twins = (x[y == 0] + 0.05 * torch.randn(x[y == 0].shape, generator=g)).clamp(0, 1)
    return x, y, codes, twins


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=0, max_size=12), st.floats(-5, 5))
def test_logit_pairing_is_the_mean_squared_difference(values, shift):
    a = torch.tensor(values, dtype=torch.float64)
    b = a + shift
    got = logit_pairing(a, b)
    assert got.ndim == 0
    # every row differs by the same shift: the mean of its square, to the rounding of a + shift
    expected = 0.0 if not values else float(((b - a) ** 2).mean())
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert float(logit_pairing(a, a)) == 0.0


def test_without_consistency_the_loss_is_the_margin_cross_entropy_and_twins_are_ignored():
    det = detector()
    x, y, codes, twins = twinned()
    plain = margin_bce(det(x), y, margin_of(det))
    assert torch.equal(detector_loss(det, (x, y, codes)), plain)
    assert torch.equal(detector_loss(det, (x, y, codes, twins), real_consistency=0.0), plain)


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_consistency_adds_the_weighted_pairing_of_each_real_with_its_twin(weight):
    det = detector()
    x, y, codes, twins = twinned()
    expected = (
        margin_bce(det(x), y, margin_of(det)) + weight * ((det(x[y == 0]) - det(twins)) ** 2).mean()
    )
    got = detector_loss(det, (x, y, codes, twins), real_consistency=weight)
    torch.testing.assert_close(got, expected)
    # twins equal to their reals add nothing
    same = detector_loss(det, (x, y, codes, x[y == 0]), real_consistency=weight)
    torch.testing.assert_close(same, margin_bce(det(x), y, margin_of(det)))


def test_consistency_with_attribution_pairs_the_detectors_logits_and_attributes_the_batch_only():
    det = detector()
    wrapped = FamilyAttribution(det, CODES, weight=3.0)
    with torch.no_grad():
        wrapped.attribution_weight.normal_()
    x, y, codes, twins = twinned(seed=2)
    expected = wrapped.loss(x, y, codes) + 1.5 * ((det(x[y == 0]) - det(twins)) ** 2).mean()
    got = detector_loss(det, (x, y, codes, twins), attribution=wrapped, real_consistency=1.5)
    torch.testing.assert_close(got, expected)
    assert torch.equal(
        detector_loss(det, (x, y, codes), attribution=wrapped), wrapped.loss(x, y, codes)
    )


def test_the_pairing_trains_a_real_and_its_twin_towards_each_other():
    """One gradient step on the pairing alone (the cross-entropy's weight cannot be zero, so
    compare with and without it) brings the twins' logits nearer their reals'."""
    det = detector()
    x, y, codes, twins = twinned(seed=3)
    with torch.no_grad():
        before = float(logit_pairing(det(x[y == 0]), det(twins)))
    grads = {}
    for weight in (0.0, 10.0):
        det.zero_grad()
        detector_loss(det, (x, y, codes, twins), real_consistency=weight).backward()
        grads[weight] = {n: p.grad.clone() for n, p in det.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for n, p in det.named_parameters():
            if n in grads[10.0]:
                p -= 1e-3 * (grads[10.0][n] - grads[0.0][n])  # the pairing's own gradient
        after = float(logit_pairing(det(x[y == 0]), det(twins)))
    assert after < before


def test_bad_batches_and_weights_are_refused():
    det = detector()
    x, y, codes, twins = twinned()
    with pytest.raises(ValueError, match="twin views"):
        detector_loss(det, (x, y, codes), real_consistency=1.0)
    with pytest.raises(ValueError, match="one image per real"):
        detector_loss(det, (x, y, codes, twins[:-1]), real_consistency=1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="real_consistency"):
            detector_loss(det, (x, y, codes, twins), real_consistency=bad)
    with pytest.raises(ValueError, match="family codes"):
        detector_loss(det, (x, y), attribution=FamilyAttribution(det, CODES))
    with pytest.raises(ValueError, match="wrap"):
        detector_loss(det, (x, y, codes), attribution=FamilyAttribution(detector(), CODES))
    with pytest.raises(ValueError, match="logits"):
        logit_pairing(torch.zeros(3), torch.zeros(2))
