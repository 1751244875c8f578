"""Branch dropout: while training, a patch loses one of its branches' embeddings at random.

A detector of several branches (:class:`~assocmem.forensic.models.npr.NPRWithDCT`: the
``2 x 2`` residual beside the block DCT) reads their embeddings side by side. When one branch
alone separates the training fakes (NPR's up-sampling tie on the auto-encoder families), the
loss is already low on those fakes and the other branch gets little gradient from them: it
never learns what else the same fakes carry (their lost high frequencies, say), evidence a
generator without that one trace would still leave. Modality dropout (ModDrop, Neverova et
al., IEEE TPAMI 2016) zeroes a whole branch's embedding for some training examples, so every
branch must carry the decision alone on those.

:func:`drop_branches` is the pure map: with probability ``p`` an example loses exactly one
branch, chosen uniformly, and keeps the others; never all of them. Kept embeddings are not
rescaled: the detector's one-class head reads the embedding's direction, not its length, and
evaluation (no dropout) sees every branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_branch_dropout", "drop_branches"]


def check_branch_dropout(p: float) -> float:
    """``p`` as a float if ``0 <= p < 1``, else ``ValueError`` (at 1 no example keeps all its
    branches, and evaluation would read a mixture training never saw)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"branch_dropout must be in [0, 1), got {p}")
    return p


def drop_branches(
    embeddings: Sequence[Tensor], p: float, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Each (N, D_b) embedding with the rows of its dropped examples zeroed.

    Per example ``n``: with probability ``p`` one branch ``b`` (uniform over the
    ``len(embeddings)`` branches) has ``embeddings[b][n]`` set to 0; otherwise all are kept.
    With fewer than two branches or ``p == 0`` the embeddings come back unchanged.
    """
    p = check_branch_dropout(p)
    if p == 0.0 or len(embeddings) < 2:
        return list(embeddings)
    first = embeddings[0]
    n = first.shape[0]
    dropped = torch.rand(n, generator=generator, device=first.device) < p
    which = torch.randint(len(embeddings), (n,), generator=generator, device=first.device)
    out = []
    for b, embedding in enumerate(embeddings):
        keep = ~(dropped & (which == b))
        out.append(embedding * keep.to(embedding.dtype).unsqueeze(-1))
    return out
