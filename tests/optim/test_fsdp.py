"""Every preset under FSDP2 (``fully_shard``) with 2 gloo ranks, and its DCP resume.

One spawn (fsdp_worker.py) runs every case; each test reads its case's result. Both ranks see
the same batches, so FSDP's averaged gradients equal one process's bit for bit, and the only
difference left to a sharded step is the order of the sums a memory completes across ranks
(delta's overlaps, deep's inner gradient, learned's RMS features): the fast-path-vs-reference
situation of ``LOCKSTEP_TOL`` (float64, reordered sums; see tests/optim_support.py). Elementwise
presets and gathered ones (the whole tensor stepped as in one process) come out bit-exact. A
rank that saw no NaN must skip the step another rank's shard made non-finite, else the sharded
run leaves the single one by a whole step (far beyond the tolerance).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from gloo_support import free_port, run_worker
from optim_support import LOCKSTEP_TOL, option_value

from assocmem import MemoryOptimizer, get_preset

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("fsdp_worker.py")
# Every preset with its defaults, plus the options that change what a sharded step
# communicates: delta's per-row erase (1-D tensors are one row split across ranks), cms's
# Newton-Schulz read, landscape's weak (default) and scalar forms and deep's reference path
# (all gathered; landscape's diagonal form is local),
# muon's Polar Express schedule (local), its delta erase with row normalisation (gathered) and
# its Newton-Schulz on one rank per matrix (ns_placement=owner: gather and scatter).
CASES = [
    "momentum",
    "adam",
    "delta",
    "delta:erase=row",
    "muon",
    "muon:ns_coefficients=polar_express",
    "muon:gamma=0.5:row_norm=1",
    "muon:ns_placement=owner",
    "cms",
    "cms:orthogonalize=1",
    "deep",
    "deep:foreach=0",
    "learned",
    "landscape",
    "landscape:form=diagonal",
    "landscape:form=scalar",
]
TIMEOUT_S = 600  # the whole spawn; ~45 s on 2 shared cores. Collectives time out after 60 s.


def _run_worker(out: Path) -> tuple[int, str]:
    """One run of the worker on a fresh port: its exit status and the tail of its stderr."""
    return run_worker(WORKER, [str(out), str(free_port()), *CASES], TIMEOUT_S)


# A rank killed by a signal (torch.multiprocessing reports "terminated with signal SIGSEGV")
# is a crash of the native runtime, not a Python error of the code under test: seen once in a
# fresh-clone CI run (2026-12-05, rank 0, before any result was written) and not in 3 reruns of
# this module nor in the slow suite's runs before it. Such a run is retried once; an error
# raised in Python, or a second crash, fails the test.
NATIVE_CRASH = "terminated with signal"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fsdp") / "results.pt"
    status, err = _run_worker(out)
    if status != 0 and not out.exists() and NATIVE_CRASH in err:
        warnings.warn(f"the FSDP worker crashed, run again:\n{err}", stacklevel=2)
        status, err = _run_worker(out)
    if status != 0:
        # gloo can abort a rank with "terminate called without an active exception" and no
        # Python error of its own; once rank 0 has written every case's result (atomically)
        # the run is complete and the abort came after it.
        if not out.exists():
            pytest.fail(f"the FSDP worker failed:\n{err}")
        warnings.warn(f"the FSDP worker exited {status} after writing its results", stacklevel=2)
    return torch.load(out)


@pytest.mark.parametrize("case", CASES)
def test_sharded_training_equals_one_process_and_resumes_bit_exactly(results, case):
    result = results[case]
    assert "error" not in result, result.get("error")
    for name, single in result["single"].items():
        # every parameter, uneven shards (3 = 2 + 1, 5 = 3 + 2) and an empty one (1 = 1 + 0)
        torch.testing.assert_close(result["sharded"][name], single, **LOCKSTEP_TOL, msg=name)
        assert torch.equal(result["resumed"][name], result["sharded"][name]), name
    # one NaN step skipped by both ranks, and the count survives the DCP round trip
    assert result["skipped"] == (1, 1)


def test_learned_counts_non_finite_updates_over_the_whole_tensor_on_every_rank(results):
    # each rank counted its own rows: rank 0 read 0 for a tensor whose update was zeroed,
    # and a DCP resume (a plain 0-d tensor is saved as replicated) kept another rank's count
    result = results["learned"]
    assert "error" not in result, result.get("error")
    single = result["nonfinite_single"]
    assert single >= 1 and result["nonfinite_per_rank"] == (single, single)


@pytest.mark.parametrize("case", CASES)
def test_a_one_process_state_dict_loads_into_the_sharded_optimizer(results, case):
    # each rank keeps its slice of the whole state (loaded whole, the fused kernels read rows
    # of the other rank's shard: adam 0.25 off after two steps; others failed mid-step)
    result = results[case]
    assert "error" not in result, result.get("error")
    assert result["from_one_process_differs"] == [] and result["stepped"]


@pytest.mark.parametrize("case", CASES)
def test_every_rank_refuses_a_state_dict_one_rank_finds_bad(results, case):
    # the NaN is in rank 1's shard only: rank 0 loaded it while rank 1 refused, and a caller
    # that caught the refusal went on with ranks holding different states
    result = results[case]
    assert "error" not in result, result.get("error")
    if result["refused_on"] is not None:
        assert result["refused_on"] == (2, 0)  # both raised, neither changed


@pytest.mark.parametrize("case", CASES)
def test_sharded_tensors_are_gathered_only_when_the_memory_needs_them_whole(results, case):
    memory, *options = case.split(":")
    group = MemoryOptimizer.hyperparameters(memory)
    for key, value in (o.split("=") for o in options):
        group[key] = option_value(key, value)
    local = "foreach=0" not in options and get_preset(memory).shards_locally(group)
    assert (results[case]["gathered"] == 0) == local


def test_newton_schulz_on_one_rank_per_matrix_is_the_all_gathers_step(results):
    # ns_placement="owner": each matrix orthogonalised on its owner and scattered back gives
    # the numbers of every rank orthogonalising it (each shape holds one matrix here, so the
    # batched Newton-Schulz sees the same stack), and at W = 2 the same traffic: per matrix
    # the all-gather brings each of the 2 ranks the other's padded rows (2 pieces in all),
    # the gather brings the owner 1 piece and the scatter the other rank 1.
    owner, every = results["muon:ns_placement=owner"], results["muon"]
    for name, value in every["sharded"].items():
        assert torch.equal(owner["sharded"][name], value), name
        assert torch.equal(owner["resumed"][name], every["resumed"][name]), name
    assert every["received"]["gather"] == every["received"]["scatter"] == 0
    assert owner["received"]["all_gather"] == 0
    assert owner["received"]["gather"] == owner["received"]["scatter"] > 0
    assert sum(owner["received"].values()) == every["received"]["all_gather"]
