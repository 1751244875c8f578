"""One-class softmax head: its logit, its margin loss, and the detector and training using it."""

import itertools
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from family_support import CODES, batch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.models import one_class
from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.npr import NPRWithDCT
from assocmem.forensic.models.one_class import cosine_logit, margin, margin_bce
from assocmem.forensic.train import logits, train_detector


def one_class_detector():
    torch.manual_seed(0)
    return NPRWithDCT(widths=(4, 8), hidden=8, embed=4, feature_dropout=0.5, head="one_class")


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_margin_bce_on_the_cosine_logit_is_the_one_class_softmax_loss(seed, dim):
    """The paper's loss, softplus(alpha (m_real - s)) for a real and softplus(alpha (s - m_fake))
    for a fake with s = cos(w, e), computed directly in float64: the reformulation as a margin on
    binary cross-entropy only reorders a few float64 operations (a few ulp of losses < 30)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(16, dim, generator=g, dtype=torch.float64)
    w = torch.randn(1, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (16,), generator=g).double()
    s = F.cosine_similarity(e, w, dim=-1)
    a, m0, m1 = one_class.ALPHA, one_class.M_REAL, one_class.M_FAKE

    def softplus(x):  # exact: F.softplus returns x itself from x > 20 on, 2e-9 off there
        return torch.logaddexp(torch.zeros_like(x), x)

    paper = torch.where(labels == 0, softplus(a * (m0 - s)), softplus(a * (s - m1))).mean()
    ours = margin_bce(cosine_logit(e, w), labels, margin())
    torch.testing.assert_close(ours, paper, rtol=1e-12, atol=1e-12)


def test_margin_zero_is_plain_binary_cross_entropy_to_the_bit():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(33, generator=g), torch.randint(0, 2, (33,), generator=g).float()
    assert torch.equal(margin_bce(z, y), F.binary_cross_entropy_with_logits(z, y))
    assert torch.equal(margin_bce(z, y, 0.0), F.binary_cross_entropy_with_logits(z, y))


def test_the_margin_moves_each_logit_against_its_label():
    """A real is charged as if its logit were higher, a fake as if lower: the loss of a logit
    exactly at the centre is softplus(margin) for both classes."""
    z = torch.zeros(2)
    y = torch.tensor([0.0, 1.0])
    expected = F.softplus(torch.tensor(7.0))
    assert margin() == pytest.approx(7.0)  # 20 (0.9 - 0.2) / 2
    torch.testing.assert_close(margin_bce(z, y, 7.0), expected)


def test_the_cosine_logit_ignores_scale_and_is_bounded():
    g = torch.Generator().manual_seed(1)
    e, w = torch.randn(64, 5, generator=g), torch.randn(1, 5, generator=g)
    z = cosine_logit(e, w)
    torch.testing.assert_close(cosine_logit(1e3 * e, 1e-3 * w), z, rtol=1e-5, atol=1e-5)
    centre = one_class.ALPHA * (one_class.M_REAL + one_class.M_FAKE) / 2
    assert ((z - centre).abs() <= one_class.ALPHA * (1 + 1e-6)).all()
    # along w the logit is lowest (a real), against it highest
    torch.testing.assert_close(cosine_logit(w, w), torch.tensor([centre - one_class.ALPHA]))
    torch.testing.assert_close(cosine_logit(-w, w), torch.tensor([centre + one_class.ALPHA]))


def test_the_detector_with_a_one_class_head():
    det = one_class_detector().eval()
    x, _, _ = batch()
    assert det.fc.bias is None and det.margin == pytest.approx(margin())
    z = det.embed(x)
    assert torch.equal(det(x), cosine_logit(z, det.fc.weight))
    linear = NPRWithDCT(widths=(4, 8), hidden=8, embed=4)
    assert linear.margin == 0.0 and linear.fc.bias is not None
    with pytest.raises(ValueError, match="head must be one of"):
        NPRWithDCT(head="cosine")


def test_attribution_trains_the_one_class_head_with_its_margin():
    """With the attribution head at zero its cross-entropy is log(classes) exactly, so the loss
    is the detector's margin loss plus that."""
    det = one_class_detector().eval()
    wrapped = FamilyAttribution(det, CODES, weight=0.3)
    x, y, codes = batch()
    expected = margin_bce(det(x), y, det.margin) + 0.3 * math.log(len(CODES) + 1)
    torch.testing.assert_close(wrapped.loss(x, y, codes), expected)


def test_training_a_one_class_detector_learns_and_validates_on_its_own_loss():
    det = one_class_detector()
    batches = [batch(16, seed=s)[:2] for s in range(4)]
    xv, yv, _ = batch(64, seed=99)
    records = []
    res = train_detector(
        det, itertools.cycle(batches), None, xv, yv, partial(torch.optim.Adam, lr=1e-2),
        steps=60, eval_every=20, log=records.append,
    )  # fmt: skip
    assert res.status == "ok"
    evals = [r for r in records if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # it learns
    assert evals[-1]["val_auc"] > 0.8  # two easy traces
    # the validation loss is the margin loss of the kept weights, not plain cross-entropy
    z = logits(det, xv)
    torch.testing.assert_close(
        torch.tensor(evals[-1]["val_loss"]), margin_bce(z, yv.float(), det.margin)
    )
