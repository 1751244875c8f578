"""Rows sharded over two mesh dimensions (``[Shard(0), Shard(0)]``, FSDP over tensor parallel's
row sharding): a preset whose local step gathers rows (muon's Newton-Schulz) raised
``NotImplementedError: rows sharded over 2 mesh dimensions`` halfway through the step, after
its Adam fallback had stepped the bias; it now steps such tensors gathered. Elementwise presets
keep their local step there. 2 gloo ranks on 127.0.0.1, with timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gloo_support import free_port, run_worker

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("mesh_worker.py")
CASES = ["muon", "muon:ns_placement=owner", "adam", "delta:erase=row"]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("mesh") / "results.pt"
    status, err = run_worker(WORKER, [str(out), str(free_port()), *CASES], TIMEOUT_S)
    if not out.exists():  # a gloo abort after rank 0 wrote its results is not a failure
        pytest.fail(f"the mesh worker failed ({status}):\n{err}")
    return torch.load(out)


@pytest.mark.parametrize("case", CASES)
def test_rows_sharded_over_two_mesh_dimensions_step_as_one_process(results, case):
    # float64; a gathered tensor is stepped whole, as in one process, and elementwise maths
    # on row slices is the same arithmetic: equal to the last bits but for delta's per-row
    # overlaps, whose sums are completed across ranks in another order (~1e-16 relative)
    for sharded, alone in zip(results[case]["sharded"], results[case]["alone"], strict=True):
        torch.testing.assert_close(sharded, alone, rtol=1e-12, atol=1e-12)
