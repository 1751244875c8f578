"""Cache-sized blocks: aligned views that cover every element exactly once."""

from typing import NamedTuple

import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.optim.blocks import blocks, named_blocks, select, split_by_step

shapes = st.lists(
    st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6
)


@given(shapes=shapes, numel=st.integers(1, 40), transpose=st.booleans())
def test_blocks_cover_every_element_once_and_stay_aligned(shapes, numel, transpose):
    params = [torch.randn(s) for s in shapes]
    if transpose:  # non-contiguous tensors are passed whole
        params = [p.t() if p.dim() == 2 else p for p in params]
    original = [p.clone() for p in params]
    states = [torch.zeros_like(p) for p in params]
    for block_params, block_states in blocks([params, states], numel=numel):
        sizes = [p.numel() for p in block_params]
        assert sizes == [s.numel() for s in block_states]
        assert sum(sizes) <= numel or len(sizes) == 1  # only an unsplittable tensor exceeds it
        for p, s in zip(block_params, block_states, strict=True):
            s.add_(p)  # aligned views: each state element receives its own parameter's value
            p.add_(1)  # and the writes land in the original tensors, once per element
    for p, s, o in zip(params, states, original, strict=True):
        assert torch.equal(s, o)
        assert torch.equal(p, o + 1)


def test_a_subset_of_indices_touches_only_those_tensors():
    params = [torch.zeros(5) for _ in range(4)]
    for (block,) in blocks([params], index=[1, 3], numel=2):
        for p in block:
            p.add_(1)
    assert [p.sum().item() for p in params] == [0, 5, 0, 5]


def test_split_by_step_groups_equal_counts_in_order():
    assert split_by_step([3.0, 1.0, 3.0, 2.0]) == {3.0: [0, 2], 1.0: [1], 2.0: [3]}


class _Buffers(NamedTuple):
    params: list[torch.Tensor]
    levels: tuple[list[torch.Tensor], ...]
    second: list[torch.Tensor] | None


def test_named_blocks_are_blocks_by_name():
    params = [torch.arange(10.0), torch.arange(3.0), torch.arange(7.0)]
    levels = ([p + 100 for p in params], [p + 200 for p in params])
    buffers = _Buffers(tuple(params), levels, None)  # a tuple of tensors is a buffer too
    flat = [params, *levels]
    named = list(named_blocks(buffers, [0, 2], numel=4))
    plain = list(blocks(flat, [0, 2], numel=4))
    assert len(named) == len(plain) > 1
    for b, lists in zip(named, plain, strict=True):
        assert isinstance(b, _Buffers) and b.second is None
        for got, expected in zip([b.params, *b.levels], lists, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
    chosen = select(buffers, [2, 0])
    assert chosen.params[0] is params[2] and chosen.params[1] is params[0]
    assert chosen.levels[1][0] is levels[1][2] and chosen.second is None


def test_off_the_cpu_the_tensors_go_whole_in_one_block():
    # the meta device stands in for an accelerator: one block, each tensor itself (no views),
    # where on the CPU the same tensors are cut into cache-sized pieces
    shapes = [(3, 1 << 18), (7,), (1 << 19,)]
    on_cpu = [torch.empty(s) for s in shapes]
    assert len(list(blocks([on_cpu], numel=1 << 18))) > 1
    on_meta = [torch.empty(s, device="meta") for s in shapes]
    (block,) = list(blocks([on_meta, on_meta], numel=1 << 18))
    assert all(a is b for a, b in zip(block[0], on_meta, strict=True))
