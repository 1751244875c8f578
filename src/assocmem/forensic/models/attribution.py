"""Family attribution beside detection: a training-time head that names each image's family.

A binary detector only has to tell fakes from reals, so nothing asks its embedding to keep what
tells one family of fakes from another; with several seen families it can settle on whichever
cue is cheapest for each. Training it to also *attribute* each image (real, or which seen
family made it) keeps the families apart in the embedding, the fine-grained supervision that
deepfake detectors such as UCF (Yan et al., ICCV 2023) and LSDA (Yan et al., CVPR 2024) use
for cross-generator generalisation. The head exists only for training: the detector's own logit
is computed and scored exactly as without it, and what is kept and shipped is the detector.

:class:`FamilyAttribution` wraps a detector with an ``embed(x)`` (its features) and an ``fc``
(its logit on them). Its attribution head is a plain weight and bias, zero at the start, not an
``nn.Linear``: so :func:`assocmem.optim.param_groups` still finds the detector's ``fc`` as the
model's head (the last linear layer) and puts the attribution weights in the ``rest`` group,
and building it draws nothing from the global generator (a seed initialises the detector
identically with and without it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assocmem.forensic.models.one_class import margin_bce, margin_of


class FamilyAttribution(nn.Module):
    """``detector`` with a softmax head over ``[real, *families]`` on its embedding.

    Args:
        detector: a module with ``embed(x) -> (N, D)`` and ``fc: nn.Linear(D, 1)``, whose
            ``forward`` is ``fc(embed(x)).squeeze(-1)``.
        codes: the family codes the training batches carry for the fake families (a
            :class:`~assocmem.forensic.data.stream.TrainStream`'s ``family_codes`` values;
            code 0 is a real image). Class 0 is real, class ``k`` the ``k``-th code.
        weight: the attribution loss's weight beside the detector's binary cross-entropy.
    """

    def __init__(self, detector: nn.Module, codes: Sequence[int], weight: float = 1.0) -> None:
        super().__init__()
        codes = [int(c) for c in codes]
        if not codes or min(codes) < 1 or len(set(codes)) != len(codes):
            raise ValueError(f"codes must be distinct fake-family codes >= 1, got {codes}")
        if not (weight > 0 and torch.isfinite(torch.tensor(weight))):
            raise ValueError(f"weight must be a finite number > 0, got {weight}")
        fc = getattr(detector, "fc", None)
        if not callable(getattr(detector, "embed", None)) or not isinstance(fc, nn.Linear):
            raise TypeError(
                f"{type(detector).__name__} needs embed(x) and an nn.Linear fc for attribution"
            )
        self.detector = detector
        self.weight = float(weight)
        dim = fc.in_features
        self.attribution_weight = nn.Parameter(torch.zeros(len(codes) + 1, dim))
        self.attribution_bias = nn.Parameter(torch.zeros(len(codes) + 1))
        # code -> class; -1 marks a code this head was not built for
        lookup = torch.full((max(codes) + 1,), -1, dtype=torch.long)
        lookup[0] = 0
        lookup[torch.tensor(codes)] = torch.arange(1, len(codes) + 1)
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """The detector's logit, (N,), as the detector alone computes it."""
        return self.detector(x)

    def classes(self, codes: Tensor) -> Tensor:
        """Attribution classes of a batch's family codes; raises on a code it does not know."""
        codes = codes.to(self.lookup.device, torch.long)
        if codes.min() < 0 or codes.max() >= len(self.lookup):
            raise ValueError(f"family codes outside 0..{len(self.lookup) - 1}")
        out = self.lookup[codes]
        if (out < 0).any():
            raise ValueError("a batch holds a family this attribution head was not built for")
        return out

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The detector's logit (N,) and the attribution scores (N, classes), from one pass
        through the embedding."""
        z = self.detector.embed(x)
        head = getattr(self.detector, "logit", None)  # a detector's own head, if not linear
        logit = head(z) if head is not None else self.detector.fc(z).squeeze(-1)
        return logit, F.linear(z, self.attribution_weight, self.attribution_bias)

    def loss_of(self, logit: Tensor, scores: Tensor, labels: Tensor, codes: Tensor) -> Tensor:
        """Binary cross-entropy of the detector's ``logit`` (with its ``margin``, if it has
        one: :func:`~assocmem.forensic.models.one_class.margin_bce`) plus ``weight`` times the
        attribution's cross-entropy of ``scores`` (both from :meth:`outputs`)."""
        detection = margin_bce(logit, labels, margin_of(self.detector))
        attribution = F.cross_entropy(scores, self.classes(codes).to(scores.device))
        return detection + self.weight * attribution

    def loss(self, x: Tensor, labels: Tensor, codes: Tensor) -> Tensor:
        """:meth:`loss_of` the :meth:`outputs` of ``x``: detection plus attribution, from one
        pass through the embedding."""
        return self.loss_of(*self.outputs(x), labels, codes)
