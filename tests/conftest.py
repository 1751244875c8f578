import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Bounded, deadline-free profiles: CPU timing jitter on 2 shared cores must not fail a test.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Two 2-thread workers on 2 cores run slower than two 1-thread workers. ASSOCMEM_TEST_THREADS
# lets `make test-portability` run the numerics with intra-op parallel reductions too.
torch.set_num_threads(int(os.environ.get("ASSOCMEM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
