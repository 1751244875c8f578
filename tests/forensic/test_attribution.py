"""FamilyAttribution: a training-time head naming each image's family beside the logit."""

import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from family_support import CODES, batch

from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.npr import NPRWithDCT
from assocmem.forensic.train import train_detector
from assocmem.optim import param_groups, param_roles


def detector():
    torch.manual_seed(0)
    return NPRWithDCT(widths=(4, 8), hidden=8, embed=4, feature_dropout=0.5)


def test_embed_then_fc_is_the_forward():
    det = detector().eval()
    x, _, _ = batch()
    assert torch.equal(det.fc(det.embed(x)).squeeze(-1), det(x))


def test_forward_is_the_detector_and_building_draws_nothing():
    det = detector().eval()
    x, _, _ = batch()
    state = torch.get_rng_state()
    wrapped = FamilyAttribution(det, CODES)
    assert torch.equal(torch.get_rng_state(), state)  # a seed initialises the detector alike
    assert torch.equal(wrapped(x), det(x))


def test_loss_is_detection_plus_weighted_attribution():
    det = detector().eval()
    wrapped = FamilyAttribution(det, CODES, weight=0.3)
    with torch.no_grad():
        wrapped.attribution_weight.normal_()
        wrapped.attribution_bias.normal_()
    x, y, codes = batch()
    z = det.embed(x)
    expected = F.binary_cross_entropy_with_logits(det.fc(z).squeeze(-1), y) + 0.3 * F.cross_entropy(
        z @ wrapped.attribution_weight.T + wrapped.attribution_bias,
        torch.tensor([0, 0, 0, 0, 1, 2, 1, 2]),
    )
    torch.testing.assert_close(wrapped.loss(x, y, codes), expected)


def test_codes_map_to_classes_and_unknown_codes_are_refused():
    wrapped = FamilyAttribution(detector(), CODES)
    assert wrapped.classes(torch.tensor([0, 2, 5, 0])).tolist() == [0, 1, 2, 0]
    for bad in ([3], [6], [-1]):  # a family the head was not built for, or not a code at all
        with pytest.raises(ValueError):
            wrapped.classes(torch.tensor(bad))


@pytest.mark.parametrize(
    "codes, weight",
    [([], 1.0), ([0, 2], 1.0), ([2, 2], 1.0), ([2], 0.0), ([2], -1.0), ([2], float("nan"))],
)
def test_bad_codes_or_weight_are_refused(codes, weight):
    with pytest.raises(ValueError):
        FamilyAttribution(detector(), codes, weight)


def test_a_detector_without_embed_and_fc_is_refused():
    with pytest.raises(TypeError, match="embed"):
        FamilyAttribution(torch.nn.Linear(3, 1), CODES)


def test_the_split_keeps_the_detectors_head_and_puts_attribution_with_the_rest():
    det = detector()
    wrapped = FamilyAttribution(det, CODES)
    roles = param_roles(wrapped)
    assert roles["detector.fc.weight"] == "head"
    assert roles["attribution_weight"] == "other" and roles["attribution_bias"] == "bias"
    groups = {g["name"]: [id(p) for p in g["params"]] for g in param_groups(wrapped)}
    alone = {g["name"]: [id(p) for p in g["params"]] for g in param_groups(det)}
    assert groups["hidden"] == alone["hidden"]  # the preset steps the same matrices
    extra = [id(wrapped.attribution_weight), id(wrapped.attribution_bias)]
    assert sorted(groups["rest"]) == sorted(alone["rest"] + extra)


def test_training_with_attribution_learns_both_heads_and_keeps_the_detector():
    det = detector()
    wrapped = FamilyAttribution(det, CODES)
    batches = [batch(16, seed=s) for s in range(4)]
    xv, yv, _ = batch(32, seed=99)
    before = {k: v.clone() for k, v in det.state_dict().items()}
    res = train_detector(
        det, itertools.cycle(batches), None, xv, yv, partial(torch.optim.Adam, lr=1e-2),
        steps=30, eval_every=10, attribution=wrapped,
    )  # fmt: skip
    assert res.status == "ok" and res.steps == 30
    assert wrapped.attribution_weight.abs().sum() > 0  # the head trained from zero
    assert any(not torch.equal(before[k], v) for k, v in det.state_dict().items())
    with torch.no_grad():
        wrapped.eval()
        x, y, codes = batch(32, seed=7)
        scores = F.linear(det.embed(x), wrapped.attribution_weight, wrapped.attribution_bias)
    assert (scores.argmax(1) == wrapped.classes(codes)).float().mean() > 0.5  # chance is 1/3


def test_attribution_needs_family_codes_and_its_own_detector():
    det = detector()
    xv, yv, codes = batch(8)
    two = itertools.cycle([(xv, yv)])
    with pytest.raises(ValueError, match="family codes"):
        train_detector(
            det, two, None, xv, yv, partial(torch.optim.SGD, lr=0.1), steps=1,
            attribution=FamilyAttribution(det, CODES),
        )  # fmt: skip
    with pytest.raises(ValueError, match="wrap the detector"):
        train_detector(
            det, itertools.cycle([(xv, yv, codes)]), None, xv, yv,
            partial(torch.optim.SGD, lr=0.1), steps=1,
            attribution=FamilyAttribution(detector(), CODES),
        )  # fmt: skip
