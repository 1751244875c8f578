"""A deep ensemble of detectors: the mean of its members' logits.

Networks trained alike from different seeds make different mistakes (their initialisations and
stream batches differ), so the mean of their logits ranks images more reliably than any one of
them: the "deep ensemble" of Lakshminarayanan et al. (NeurIPS 2017), here without its variance
head. The mean is taken over logits, not probabilities, because logits are what the protocol
calibrates its threshold on and what ``Detector`` averages over tiles and views; a mean of
logits is the geometric mean of the members' odds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["LogitEnsemble"]


class LogitEnsemble(nn.Module):
    """``forward(x) = mean_k member_k(x)``; each member maps images (N, C, H, W) to logits (N,).

    The members are submodules (``members.0``, ``members.1``, ...), so ``state_dict``,
    ``eval()`` and ``to(device)`` reach all of them.
    """

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if len(self.members) == 0:
            raise ValueError("an ensemble needs at least one member")

    def forward(self, images: Tensor) -> Tensor:
        outputs = [member(images) for member in self.members]
        shapes = {tuple(o.shape) for o in outputs}
        if len(shapes) != 1:
            raise ValueError(f"the members' logits differ in shape: {sorted(shapes)}")
        return torch.stack(outputs).mean(0)
