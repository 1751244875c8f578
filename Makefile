# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv, install the
# pinned CPU torch first (a bare torch requirement would pull a CUDA build), then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.assocmem-installed
PYTEST_WORKERS ?= 2
DEMO_MODEL ?= npr_dct_oc_std
INDUCTOR_CACHE ?= $(or $(TMPDIR),/tmp)/assocmem-inductor
# what test-portability runs torch, MKL and oneDNN on (see there)
PORTABLE_ISA := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
AVX2_ISA := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

.PHONY: setup test test-slow test-portability demo demo-pretrain bench bench-full gpu-check lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/torch-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -c requirements/torch-cpu.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow"

# The numerical tests again on torch's portable (non-SIMD) CPU kernels with 2 threads: sums are
# reordered as on another CPU, so a tolerance tuned to one machine's rounding fails here.
# Then the rest of the suite (forensic, experiments, ...) on the same kernels with one thread
# per worker, as `make test` runs it: a test that compares two computations of one score
# (a report against its own logits) must not depend on how this CPU rounds.
# Last, the compiled optimizer tests (slow) on the AVX2 kernels, eager and inductor's alike, as
# an AVX2-only CPU runs them (this project's machines are AVX2 or AVX-512).
# ATEN_CPU_CAPABILITY reaches torch's own kernels: matrix products go through MKL and
# convolutions through oneDNN, which pick their code path from the CPU on their own. Checked with
# torch 2.13 on an AVX-512 Xeon (a 257 x 513 @ 513 x 129 product and a 3 x 3 convolution):
# under ATEN_CPU_CAPABILITY=avx2 both keep their AVX-512 bits, and MKL_ENABLE_INSTRUCTIONS=AVX2
# and ONEDNN_MAX_CPU_ISA=AVX2 change them, as do the SSE caps beside the portable kernels. So
# each run caps those two libraries as well: at their lowest paths beside the portable kernels,
# at AVX2 beside AVX2 (an AVX2-only CPU emulated whole). torch.compile's
# on-disk kernel cache is not kept apart by ATEN_CPU_CAPABILITY: measured with torch 2.13 on an
# AVX-512 machine, kernels cached under one capability and loaded under another made wrong
# steps (`delta` 0.23 off the reference after one step), so each capability has its own cache.
test-portability: $(STAMP)
	$(PORTABLE_ISA) TORCHINDUCTOR_CACHE_DIR=$(INDUCTOR_CACHE)-default \
		ASSOCMEM_TEST_THREADS=2 $(PY) -m pytest -q -m "not slow" tests/optim tests/memory tests/meta
	$(PORTABLE_ISA) TORCHINDUCTOR_CACHE_DIR=$(INDUCTOR_CACHE)-default \
		OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) \
		-m "not slow" --ignore=tests/optim --ignore=tests/memory --ignore=tests/meta
	$(AVX2_ISA) TORCHINDUCTOR_CACHE_DIR=$(INDUCTOR_CACHE)-avx2 \
		$(PY) -m pytest -q -m slow tests/optim

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The main job: the shipped detector's network (NPR + block DCT, their maps pooled into means and
# spreads, read by a one-class head) trained
# on the built-in benchmark's stream with torch's Adam and with our muon (Muon's recipe: muon on
# the hidden matrices, Adam on head, norms and biases; each at its customary lr, untuned),
# early-stopped, threshold calibrated for 5 % FPR on validation reals, scored zero-shot on
# held-out generator families. Under 10 min on 2 cores.
demo: $(STAMP)
	$(PY) -m experiments.detectors --models $(DEMO_MODEL) --optimizers adam muon/split \
		--lr 1e-3 2e-2 \
		--seeds 0 --max-steps 800 --eval-every 100 --patience 3 --average 0.995 --workers 1 \
		--progress \
		--json outputs/demo/detectors.json

# The previous demo: frequency-masked pretraining, Adam vs muon on a 3-point LR grid.
demo-pretrain: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m experiments.compare +experiment=demo

# The step-cost benchmark (minutes; prints its tables, writes nothing unless --write is given).
bench: $(STAMP)
	$(PY) -m experiments.bench_step

# The full fair comparison for a results refresh (hours on 2 cores; rewrites its sections of
# docs/results.md). It was the second half of `bench`, which the README calls the step-cost
# benchmark.
bench-full: $(STAMP)
	$(PY) -m experiments.compare +experiment=bench

# Issue 15's GPU checks (CUDA tests, then the step benchmark on the device) with a CUDA build of
# torch that is already installed: scripts/gpu_check.sh says what it needs and writes.
gpu-check:
	PYTHON=$(or $(GPU_PYTHON),python3) OUT=outputs/gpu scripts/gpu_check.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .hypothesis
