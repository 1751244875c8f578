"""The Newton-Schulz communication benchmark: its counts follow the collectives' law."""

from __future__ import annotations

import pytest

from experiments.bench_ns_comm import LAYERS, measure, table


@pytest.mark.slow
def test_owner_placement_moves_the_same_at_two_ranks_and_orthogonalises_fewer():
    per_rank = measure(2, steps=1)
    numel = sum(i * o for i, o in LAYERS)
    every = [r["all"] for r in per_rank]
    owner = [r["owner"] for r in per_rank]
    # all-gather: each rank receives the other's rows (padded to ceil(rows / 2) per piece);
    # owner: the gather brings the owner the other's piece, the scatter the other its piece
    padded = sum(-(-o // 2) * i for i, o in LAYERS)
    assert [r["received"] for r in every] == [padded, padded]
    assert sum(r["received"] for r in owner) == 2 * padded
    assert padded >= numel // 2
    assert [r["orthogonalised"] for r in every] == [len(LAYERS)] * 2
    assert sorted(r["orthogonalised"] for r in owner) == [len(LAYERS) // 2, -(-len(LAYERS) // 2)]
    text = table({2: per_rank}, steps=1)
    assert "| 2 | `owner` |" in text and "| 2 | `all` |" in text
