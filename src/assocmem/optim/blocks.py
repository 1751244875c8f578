"""Cache-sized blocks for the elementwise fast paths.

Eager PyTorch on CPU runs every ``torch._foreach_*`` op as one full pass over memory, so a
preset whose update takes ten ops streams every tensor through DRAM ten times; torch's
foreach Adam takes seven. Running the same ops on blocks of about a megabyte per tensor keeps
the block in cache between ops: DRAM then sees each tensor about once per step whatever the
number of ops, and the op count costs only dispatch. That is what lets the multi-pass
memories (cms, landscape) run as fast as Adam without a compiler (docs/results.md, step cost).
Off the CPU nothing is cut: there a block costs a kernel launch per op and saves no traffic.

Blocks cut the flattened tensors into aligned 1-D views, so an elementwise update on the
blocks writes straight into the parameters and their state. A tensor that is not contiguous
in every list (a ``channels_last`` weight, say) cannot be flattened as a view and is passed
whole: still correct, just not blocked.

Fast paths keep their buffers in a NamedTuple of lists (``params``, ``grads``, one field per
kind of state) and cut it with :func:`named_blocks`, so they address buffers by name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from torch import Tensor

from assocmem.optim.indices import grouped

Buffers = TypeVar("Buffers", bound=tuple)

# Elements per block and per list. With the ~6 tensors a step touches this is ~6 MB in fp32:
# inside a shared L3, and measured best of 2^15..2^20 for cms and Adam on this machine.
BLOCK_NUMEL = 1 << 18


def split_by_step(steps: Sequence[float]) -> dict[float, list[int]]:
    """Indices of the tensors grouped by step count, so per-step scalars are plain floats.

    All tensors of a group share one count unless some got their first gradient late.
    """
    return grouped(steps)


def blocks(
    lists: Sequence[Sequence[Tensor]],
    index: Sequence[int] | None = None,
    numel: int = BLOCK_NUMEL,
) -> Iterator[list[list[Tensor]]]:
    """Aligned blocks of the tensors ``lists[k][i]`` for ``i`` in ``index`` (default: all).

    Every list holds tensors of the same shapes in the same order (params, grads, states).
    Each yielded block is one list per input list; together the blocks cover every element
    exactly once. Tensors no larger than ``numel`` are yielded as themselves (no view),
    gathered while they fit in ``numel`` elements; a larger contiguous tensor is yielded as
    consecutive flat slices of at most ``numel`` elements, one slice per block.
    """
    for _, block in indexed_blocks(lists, index, numel):
        yield block


def indexed_blocks(
    lists: Sequence[Sequence[Tensor]],
    index: Sequence[int] | None = None,
    numel: int = BLOCK_NUMEL,
) -> Iterator[tuple[list[int], list[list[Tensor]]]]:
    """:func:`blocks`, each with the index of the tensor every piece comes from, so that a
    per-tensor value (a 0-d constant) can go along with its pieces."""
    if index is None:
        index = range(len(lists[0]))
    if index and lists[0][index[0]].device.type != "cpu":
        # Off the CPU a foreach kernel already streams each tensor once per op at the device's
        # bandwidth, and every block is one more launch per op: on an H200, cms's step at 6M
        # took ~26 launches per op, 3.95 ms against 0.33 ms at 0.1M (docs/results.md).
        numel = sys.maxsize
    whole: list[int] = []  # consecutive tensors passed as themselves
    size = 0
    for i in index:
        n = lists[0][i].numel()
        if n <= numel or not all(tensors[i].is_contiguous() for tensors in lists):
            if whole and size + n > numel:
                yield whole, [[tensors[j] for j in whole] for tensors in lists]
                whole, size = [], 0
            whole.append(i)
            size += n
            continue
        if whole:
            yield whole, [[tensors[j] for j in whole] for tensors in lists]
            whole, size = [], 0
        flat = [tensors[i].view(-1) for tensors in lists]
        for start in range(0, n, numel):
            yield [i], [[f[start : start + numel]] for f in flat]
    if whole:
        yield whole, [[tensors[j] for j in whole] for tensors in lists]


def _is_buffer(tree: Any) -> bool:
    """A list of tensors, or a plain tuple of them: one kind of buffer, one entry per parameter.

    Lists are always buffers (nesting uses tuples); O(1), so cutting blocks costs no pass over
    the lists.
    """
    if isinstance(tree, list):
        return True
    return not hasattr(tree, "_fields") and (not tree or isinstance(tree[0], Tensor))


def _lists(tree: Any) -> list[Sequence[Tensor]]:
    """The buffers of ``tree`` in field order; tuples of buffers are walked, None is empty."""
    if tree is None:
        return []
    if _is_buffer(tree):
        return [tree]
    return [leaf for field in tree for leaf in _lists(field)]


def _rebuild(tree: Any, lists: Iterator[list[Tensor]]) -> Any:
    if tree is None:
        return None
    if _is_buffer(tree):
        return next(lists)
    fields = [_rebuild(field, lists) for field in tree]
    return tree._make(fields) if hasattr(tree, "_fields") else tuple(fields)


def select(buffers: Buffers, index: Sequence[int]) -> Buffers:
    """``buffers`` (a NamedTuple of lists) with every list restricted to ``index``."""
    return _rebuild(buffers, iter([[t[i] for i in index] for t in _lists(buffers)]))


def named_blocks(
    buffers: Buffers, index: Sequence[int] | None = None, numel: int = BLOCK_NUMEL
) -> Iterator[Buffers]:
    """:func:`blocks` of a NamedTuple of buffers, yielded as the same NamedTuple.

    Each field is a list (or tuple) of tensors, one per parameter like ``params``; a tuple of
    such lists (one per memory level, say); or None (a buffer this configuration does not
    keep). Every list in a yielded block is a list.
    """
    if index is not None and not index:
        return  # nothing to cut, and no need to walk the buffers
    for block in blocks(_lists(buffers), index, numel):
        yield _rebuild(buffers, iter(block))


def indexed_named_blocks(
    buffers: Buffers, index: Sequence[int] | None = None, numel: int = BLOCK_NUMEL
) -> Iterator[tuple[list[int], Buffers]]:
    """:func:`named_blocks`, each with the index of the tensor every piece comes from
    (:func:`indexed_blocks`), so that per-tensor 0-d constants can go along with the pieces."""
    if index is not None and not index:
        return
    for pieces_index, block in indexed_blocks(_lists(buffers), index, numel):
        yield pieces_index, _rebuild(buffers, iter(block))
