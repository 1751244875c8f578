"""Batches of two seen fake families with their family codes, for the tests of the heads
trained on them (family attribution, the one-class head)."""

import torch
import torch.nn.functional as F

SIZE = 32
CODES = [2, 5]  # the codes a stream would give two seen families (0 is real)


def batch(n=8, seed=0):
    """Half reals (smooth noise), half fakes with one of two traces; their family codes."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=g)
    x = F.interpolate(low, size=SIZE, mode="bilinear").clamp(0.1, 0.9)
    codes = torch.tensor([0] * (n // 2) + [CODES[k % 2] for k in range(n - n // 2)])
    i = torch.arange(SIZE)
    checker = (-1.0) ** (i[:, None] + i[None, :])
    stripes = ((-1.0) ** i[None, :]).expand(SIZE, SIZE)
    x[codes == CODES[0]] += 0.08 * checker
    x[codes == CODES[1]] += 0.08 * stripes
    return x.clamp(0, 1), (codes > 0).float(), codes
