"""One-class softmax: a cosine head with margins that keeps reals compact and lets fakes spread.

A binary head draws one boundary between the reals and the fakes it was trained on; a family it
never saw may land on the reals' side of it as easily as on the fakes'. Zhang, Jiang and Duan's
OC-softmax ("One-class Learning Towards Synthetic Voice Spoofing Detection", IEEE SPL 2021),
made for spoofing attacks unseen in training, asks the two classes for different things: for an
embedding ``e`` and a learned direction ``w``, with ``s = cos(w, e)``, the reals must sit in a
narrow cone, ``s >= m_real``, while a fake only has to stay out of a wide one, ``s <= m_fake``:

    loss = softplus(alpha (m_real - s))    for a real,
           softplus(alpha (s - m_fake))    for a fake,

``alpha = 20``, ``m_real = 0.9``, ``m_fake = 0.2``: the paper's values, not tuned here.

As a fake-ness logit ``z = alpha ((m_real + m_fake) / 2 - s)`` (:func:`cosine_logit`) that loss
is binary cross-entropy on ``z`` moved by the margin ``delta = alpha (m_real - m_fake) / 2``
(:func:`margin`) towards the wrong side of its label, ``BCE(z + delta, real)`` and
``BCE(z - delta, fake)`` (:func:`margin_bce`). So the detector's logit stays an ordinary
logit, scored, calibrated and shipped like any other; only its training adds the margin.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

ALPHA = 20.0
M_REAL = 0.9
M_FAKE = 0.2


def cosine_logit(
    embedding: Tensor,
    weight: Tensor,
    *,
    alpha: float = ALPHA,
    m_real: float = M_REAL,
    m_fake: float = M_FAKE,
) -> Tensor:
    """``alpha ((m_real + m_fake) / 2 - cos(w, e))`` per row of ``embedding`` (N, D), with
    ``weight`` the direction ``w`` as a (1, D) matrix (an ``nn.Linear(D, 1)``'s weight): high
    for fakes, bounded by ``alpha`` around the centre whatever the embedding's scale."""
    s = F.linear(F.normalize(embedding, dim=-1), F.normalize(weight, dim=-1))
    return alpha * ((m_real + m_fake) / 2 - s.squeeze(-1))


def margin(*, alpha: float = ALPHA, m_real: float = M_REAL, m_fake: float = M_FAKE) -> float:
    """The shift ``alpha (m_real - m_fake) / 2`` that turns binary cross-entropy on
    :func:`cosine_logit` into the one-class softmax loss."""
    return alpha * (m_real - m_fake) / 2


def margin_of(detector: object) -> float:
    """The ``margin`` a detector's training adds to its cross-entropy: its own attribute (a
    one-class head's), 0 for a detector without one (a linear head)."""
    return float(getattr(detector, "margin", 0.0))


def margin_bce(logit: Tensor, labels: Tensor, margin: float = 0.0) -> Tensor:
    """Mean binary cross-entropy of ``logit`` (labels 1 = fake), each logit moved by ``margin``
    towards the wrong side of its label first; ``margin = 0`` is plain binary cross-entropy
    (the same computation)."""
    labels = labels.to(logit.device, logit.dtype)
    if margin:
        logit = logit + margin * (1 - 2 * labels)
    return F.binary_cross_entropy_with_logits(logit, labels)
