"""The step-cost benchmark runs and reports every preset against torch's Adam."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from assocmem import available_memories
from experiments import bench_step, step_cost

REPO = Path(__file__).resolve().parents[2]


def test_table_has_every_preset_and_ratios_to_torch_adam(monkeypatch):
    monkeypatch.setitem(bench_step.SIZES, "small", [6, 8, 3])  # a 0.0001M-parameter model
    table = bench_step.run(["small"], samples=2, compile=False)  # compiling: tests/optim
    rows = {
        line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")
    }
    for name in [*available_memories(), "torch Adam (foreach)", "torch Adam (fused)"]:
        assert name in rows
    foreach_ratio = rows["torch Adam (foreach)"].split("|")[3].strip()
    assert foreach_ratio == "1.00"  # the baseline against itself


class Counting:
    """A candidate that records its name in ``calls`` at every step."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def step(self):
        self.calls.append(self.name)


def test_round_robin_times_every_candidate(monkeypatch):
    calls = []
    seconds = bench_step.time_round_robin(
        {"a": Counting("a", calls), "b": Counting("b", calls)}, 3, span=2, warmup=1
    )
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    # in turns: an untimed step, then a timed span of two, each
    assert calls == ["a", "a", "a", "b", "b", "b"] * 4


@pytest.mark.parametrize("size", list(bench_step.SIZES))
def test_sizes_match_the_issue(size):
    widths = bench_step.SIZES[size]
    n = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    tensors = 2 * (len(widths) - 1)
    if size == "many":  # the host's cost per tensor: many tensors, few parameters
        assert tensors == 300 and n < 0.02e6
    else:
        assert (0.05e6 < n < 0.2e6) if size == "small" else (4e6 < n < 8e6)


def test_verdict_names_who_meets_the_target():
    ratios = {"momentum": 0.5, "adam": 1.0004, "delta": 0.9, "cms": 1.006, "landscape": 1.6}
    line = bench_step.target_verdict(ratios)
    # 1.0004 prints as 1.00 in the table, so it meets the target; 1.006 prints as 1.01
    assert "momentum 0.50×, adam 1.00×, delta 0.90×; over it: cms 1.01×, landscape 1.60×." in line
    assert "compile" not in line
    ratios["landscape (compile=True)"] = 0.7
    ratios["landscape (diagonal, compile=True)"] = 0.456
    ratios["delta (compile=True)"] = 0.8
    assert bench_step.target_verdict(ratios).endswith(
        " With compile=True: delta 0.80×, landscape 0.70×, landscape (diagonal) 0.46×."
    )


def test_verdict_at_6m_is_against_fused_adam_times_1_2():
    ratios = {"momentum": 1.1, "adam": 1.2, "delta": 1.204, "cms": 1.3, "landscape": 4.0}
    line = bench_step.target_verdict(ratios, 1.2, "fused")
    assert line.startswith("Linear presets at or under torch's fused Adam × 1.2 by default: ")
    assert "momentum 1.10×, adam 1.20×, delta 1.20×; over it: cms 1.30×, landscape 4.00×." in line


def test_a_sample_waits_for_the_device_before_and_after_its_steps():
    # On an accelerator step() returns before its kernels ran: the clock must start and stop
    # on an empty queue, or a sample times how fast the host queues work.
    events = []

    class Queued:
        def step(self):
            events.append("step")

    step_cost.round_robin_samples(
        {"a": Queued()}, 1, span=2, warmup=0, wait=lambda: events.append("wait")
    )
    assert events == ["step", "wait", "step", "step", "wait"]


def test_each_device_refreshes_its_own_section_and_params_match_across_devices():
    assert bench_step.section_name("cpu") == "step-cost"
    assert bench_step.section_name("cuda:0") == "step-cost-cuda"
    assert bench_step.where("cpu").endswith("threads")
    a = bench_step.make_params([6, 8, 3], device="cpu")
    b = bench_step.make_params([6, 8, 3], device="meta")  # shapes only: no data to compare
    assert [p.shape for p in a] == [p.shape for p in b] and all(p.is_meta for p in b)
    again = bench_step.make_params([6, 8, 3])
    assert all(
        torch.equal(p, q) and torch.equal(p.grad, q.grad) for p, q in zip(a, again, strict=True)
    )


def test_off_the_cpu_every_preset_is_also_timed_deciding_on_the_device():
    # and muon with bf16 Newton-Schulz, which only an accelerator runs fast
    on_cpu, on_gpu = bench_step.candidates(False), bench_step.candidates(False, "cuda")
    assert not any("sync_free" in name or "ns_dtype" in name for name in on_cpu)
    extra = set(on_gpu) - set(on_cpu)
    assert extra == {
        *(f"{name} (sync_free=True)" for name in available_memories()),
        "muon (ns_dtype=bfloat16)",
    }


def test_a_span_may_differ_per_candidate():
    calls = []
    step_cost.round_robin_samples(
        {"fast": Counting("fast", calls), "slow": Counting("slow", calls)},
        2,
        span={"fast": 3, "slow": 1},
    )
    # per round: an untimed step, then the candidate's own span
    assert (
        calls
        == ["fast"] * 4 + ["slow"] * 2 + ["fast"] * 4 + ["slow"] * 2 + ["fast"] * 4 + ["slow"] * 2
    )


def test_the_second_long_presets_take_one_step_per_sample_and_the_rest_a_write_period():
    names = [*bench_step.candidates(False, "cuda")]
    got = bench_step.spans(names)
    assert got["muon"] == got["deep"] == got["learned"] == got["muon (sync_free=True)"] == 1
    assert got["cms"] == got["torch Adam (fused)"] == got["landscape (diagonal, period=10)"] == 10
    assert set(got.values()) == {1, bench_step.SPAN}


def _measured(size, fused_ms, momentum_ms):
    rows = {
        "torch Adam (foreach)": (4e-3, 8.0),
        "torch Adam (fused)": (fused_ms * 1e-3, 8.0),
        **{name: (momentum_ms * 1e-3, 4.0) for name in bench_step.LINEAR},
    }
    return bench_step.Measured(size, 6_000_000, 6, 20, rows)


def test_several_processes_give_the_median_and_range_of_their_own_ratios():
    # each process's ratio is taken inside it; a lucky baseline in one process (fused Adam at
    # 1 ms there) moves its ratio, not the median
    runs = [
        _measured("large", 2.0, 2.2),
        _measured("large", 1.0, 2.0),
        _measured("large", 2.5, 2.5),
    ]
    lines = bench_step.render(runs)
    assert "in each of 3 processes" in lines[0] and "median (range)" in lines[0]
    rows = {line.split("|")[1].strip(): line.split("|") for line in lines if line.startswith("| ")}
    # fused ratios 1.1, 2.0, 1.0: median 1.1; step ms is the median of the processes' medians
    assert rows["momentum"][2].strip() == "2.20"
    assert rows["momentum"][4].strip() == "1.10 (1.00–2.00)"
    assert rows["torch Adam (fused)"][4].strip() == "1.00 (1.00–1.00)"
    assert "momentum 1.10×" in lines[-1] and "at or under torch's fused Adam × 1.2" in lines[-1]
    one = bench_step.render(runs[:1])
    assert "processes" not in one[0] and one[5].split("|")[4].strip() == "1.10"


def test_each_process_measures_in_a_child_and_hands_back_its_record(monkeypatch):
    # the child (--record) runs in this process here: what it writes is what the parent reads
    monkeypatch.setitem(bench_step.SIZES, "small", [6, 8, 3])
    children = []

    def child(argv, check, cwd):
        assert argv[1:3] == ["-m", "experiments.bench_step"] and check
        children.append(argv)
        monkeypatch.setattr("sys.argv", argv[2:])
        bench_step.main()

    monkeypatch.setattr(bench_step.subprocess, "run", child)
    table = bench_step.run(["small"], samples=2, compile=False, processes=2)
    assert len(children) == 2 and all("--no-compile" in argv for argv in children)
    assert "in each of 2 processes" in table
    row = next(line for line in table.splitlines() if line.startswith("| torch Adam (foreach)"))
    assert row.split("|")[3].strip() == "1.00 (1.00–1.00)"


@pytest.mark.parametrize("module", ["experiments.bench_step", "experiments.meta_evaluate"])
def test_a_write_path_that_is_a_folder_is_a_usage_error_before_any_work(tmp_path, module):
    # checked after the benchmark (30 s and more) before: an IsADirectoryError traceback
    run = subprocess.run(
        [sys.executable, "-m", module, "--write", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "is a directory" in run.stderr


def test_an_accelerator_sample_waits_for_the_device_measured(monkeypatch):
    # synchronize() without a device waits for the current one (cuda:0): --device cuda:1 timed
    # how fast the host queued its work
    waited = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda *a: waited.append(a))

    class Queued:
        def step(self):
            pass

    bench_step.time_round_robin({"a": Queued()}, 2, span=1, warmup=0, device="cuda:1")
    assert waited and all(a == (torch.device("cuda:1"),) for a in waited)


@pytest.mark.parametrize(
    ("module", "args", "match"),
    [
        ("experiments.bench_step", ["--device", "foo"], "--device foo: "),
        ("experiments.bench_stream", ["--samples", "0"], "--samples must be at least 1"),
        ("experiments.bench_stream", ["--loop-steps", "0"], "--loop-steps must be at least 1"),
        ("experiments.bench_stream", ["--batch-size", "1"], "--batch-size must be at least 2"),
        ("experiments.bench_stream", ["--workers", "-1"], "--workers must be counts >= 0"),
        ("experiments.bench_ns_comm", ["--steps", "0"], "--steps must be at least 2"),
        ("experiments.bench_ns_comm", ["--worlds", "0"], "--worlds must be at least 2"),
    ],
)
def test_bad_benchmark_options_are_usage_errors_before_any_work(module, args, match):
    # each failed after the benchmark was built, the ranks spawned or the samples taken: a
    # ZeroDivisionError, a StatisticsError, a missing file naming no option
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and match in run.stderr, run.stderr[-500:]
    assert "Traceback" not in run.stderr


def test_the_stream_section_names_the_command_that_made_it(tmp_path):
    # a fixed line named the defaults (workers 0 1 2) over a table of other arguments
    from experiments import bench_stream

    args = ["--tiny", "--samples", "1", "--loop-steps", "1", "--workers", "0", "--batch-size", "4"]
    bench_stream.main([*args, "--write", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert f"`python -m experiments.bench_stream {' '.join(args)} --write {tmp_path}/r.md`" in text
    assert "one worker count after another, not in turns" in text
