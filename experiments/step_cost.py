"""The cost of one training step per optimizer, measured interleaved, and time-to-target from it.

Time-to-target used to be read off each run's wall clock. Runs made one after another on a
shared machine absorb whatever else it was doing then: one report had Adam's step at 13.2 ms in
one run and 2.4 ms in the previous one, and printed a 0.04x time-to-target. So the comparison
now measures the cost of a step separately, once per task after the runs, with the candidates
interleaved as ``experiments.bench_step`` does (each takes its turn every round, so a burst
of load moves all of them), and derives

    time-to-target = steps-to-target x (seconds per training step)

per evaluation seed. A "training step" is the whole of what the loop repeats: the batch, the
forward and backward pass and ``opt.step()`` (evaluation excluded, as before), on the task built
with the tuning seed and each optimizer at its tuned LR, so every candidate steps the same
model on the same data stream. Process CPU time was the other option; it still depends on what
else shares the caches, memory bandwidth and the core's sibling thread while a run is going,
which interleaving cancels and CPU time does not.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch


class Steppable(Protocol):
    def step(self) -> object: ...


def round_robin_samples(
    candidates: Mapping[str, Steppable],
    samples: int,
    span: int | Mapping[str, int] = 1,
    warmup: int = 1,
    wait: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per ``step()`` of each candidate, ``samples`` samples each, timed in turns.

    Each round gives every candidate one untimed step, then ``span`` consecutive timed steps;
    a sample is their mean. Taking turns puts all candidates under the same machine load (a
    burst of noise on a shared VM moves all of them, not whichever ran then); the untimed
    step first brings the candidate's tensors back into cache and wakes the thread pool after
    the previous candidate. A span of a whole write period counts the work a preset does only
    every few steps (cms's slow level, landscape with ``period``), which a median over single
    steps would leave out. A candidate is anything with ``step()``: an optimizer
    (``experiments.bench_step``) or a whole training step (:class:`TrainingStep`).

    ``wait``: called before the clock starts and before it stops, e.g. to wait for an
    accelerator's queue (its kernels run after ``step()`` returns): without it a sample would
    time how fast the host queues the work, not the work.

    ``span`` may differ per candidate (a mapping by name): a candidate whose step takes a
    second needs no ten-step span to be timed well, and its rounds would otherwise set how
    few samples the fast candidates get in the time a run has.
    """
    spans = span if isinstance(span, Mapping) else dict.fromkeys(candidates, span)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + samples):
        for name, candidate in candidates.items():
            candidate.step()
            if wait is not None:
                wait()
            start = time.perf_counter()
            for _ in range(spans[name]):
                candidate.step()
            if wait is not None:
                wait()
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) / spans[name])
    return times


class TrainingStep:
    """One step of the loop (batch, forward, backward, ``opt.step()``) as a ``step()`` call."""

    def __init__(self, task: Any, optimizer: torch.optim.Optimizer) -> None:
        self.task, self.optimizer, self.count = task, optimizer, 0

    def step(self) -> None:
        self.count += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.task.train_loss(self.count).backward()
        self.optimizer.step()


def measure(
    candidates: Mapping[str, tuple[Any, torch.optim.Optimizer]], samples: int, span: int
) -> dict[str, dict[str, Any]]:
    """Seconds per training step of each ``name: (task, optimizer)``, interleaved.

    Returns per candidate the median and quartiles of ``samples`` samples, each the mean of
    ``span`` consecutive steps, and the samples themselves.
    """
    steppers = {name: TrainingStep(task, opt) for name, (task, opt) in candidates.items()}
    times = round_robin_samples(steppers, samples, span)
    out = {}
    for name, ts in times.items():
        # Inclusive quartiles stay within the samples (the default extrapolates past them).
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else ts * 3
        out[name] = {
            "median_s": statistics.median(ts),
            "q1_s": q1,
            "q3_s": q3,
            "samples_s": ts,
            "span": span,
        }
    return out


def time_to_target(steps_to_target: Sequence[int | None], step_seconds: float) -> list[float]:
    """Seconds to the target for each seed that reached it: its steps x the cost of a step.

    Seeds that never reached the target (``None``) are left out, as they are from the mean
    steps-to-target, so ``mean(time) / mean(base time)`` is
    ``(mean steps / mean base steps) x (step cost / base step cost)`` (up to rounding).

    Raises:
        ValueError: ``step_seconds`` is not a finite number > 0, or a step count is negative.

    Example:
        >>> time_to_target([100, None, 300], 0.25)
        [25.0, 75.0]
    """
    if not (isinstance(step_seconds, (int, float)) and math.isfinite(step_seconds)):
        raise ValueError(f"step_seconds must be a finite number > 0, got {step_seconds!r}")
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be a finite number > 0, got {step_seconds!r}")
    hits = [s for s in steps_to_target if s is not None]
    if any(s < 0 for s in hits):
        raise ValueError(f"steps-to-target must be >= 0, got {list(steps_to_target)}")
    return [s * step_seconds for s in hits]
