"""Clip (video) detection: a temporal or frame-only detector on the built-in clip benchmark.

The same data protocol as the image tasks (``tasks/forensic.py``): training and validation see
only ``data.train_families``; ``data.heldout_families`` appear only in ``final_report``, on the
test split, whose photos are also unseen. The clip benchmark is made from the image benchmark of
``data`` (same photos, same split by photo, same fitted generators).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from assocmem.forensic.data import BenchmarkConfig, ForensicBenchmark
from assocmem.forensic.data.clips import ClipConfig, build_clip_benchmark
from assocmem.forensic.models.temporal import FrameCNN, FrameDetector, TemporalDetector
from assocmem.forensic.protocol import balanced, zero_shot_report
from assocmem.forensic.train import logits, score
from experiments.tasks.forensic import _plain, families_of

_BENCHMARKS: dict[str, ForensicBenchmark] = {}


def load_clip_benchmark(data: dict[str, Any], clips: dict[str, Any]) -> ForensicBenchmark:
    """Build or load (cache) the clip benchmark of a data config plus the task's ``clips``
    fields (``ClipConfig``'s; the tiny data config takes ``ClipConfig.tiny()``'s defaults for the
    rest); memoised within the process."""
    overrides = {"patch_size": data["patch_size"], "seed": data["seed"]}
    if data["tiny"]:
        config = ClipConfig.tiny(images=BenchmarkConfig.tiny(**overrides), **clips)
    else:
        config = ClipConfig(images=BenchmarkConfig(**overrides), **clips)
    key = config.key()
    if key not in _BENCHMARKS:
        _BENCHMARKS[key] = build_clip_benchmark(config, data.get("cache_dir"), progress=True)
    return _BENCHMARKS[key]


def build_clip_detector(spec: dict[str, Any]) -> nn.Module:
    """``kind``: ``gru`` / ``lstm`` (:class:`TemporalDetector`, with ``hidden`` and ``layers``)
    or ``frames`` (:class:`FrameDetector`); ``widths`` and ``residual`` shape the per-frame CNN."""
    spec = dict(spec)
    kind = spec.pop("kind")
    cnn = FrameCNN(tuple(spec.pop("widths", (8, 16, 32))), residual=spec.pop("residual", True))
    if kind in ("gru", "lstm"):
        return TemporalDetector(cnn, cell=kind, **spec)
    if kind == "frames":
        if spec:
            raise ValueError(f"the frames model takes no {sorted(spec)}")
        return FrameDetector(cnn)
    raise ValueError(f"unknown clip model kind {kind!r}; expected gru, lstm or frames")


class ClipDetection:
    """Real/fake clip detection on the seen families; ``val_loss`` is BCE on their val split.

    Training batches are drawn (seeded) from the train split's reals and as many seen-family
    fakes (``protocol.balanced``); validation is the balanced val split.
    """

    def __init__(
        self,
        seed: int,
        data: DictConfig,
        clips: DictConfig,
        model: DictConfig,
        batch_size: int,
        name: str = "clip_detection",
    ) -> None:
        self.name, self.data = name, _plain(data)
        self.bench = load_clip_benchmark(self.data, _plain(clips))
        torch.manual_seed(seed)
        self.detector = build_clip_detector(_plain(model))
        families = self.data["train_families"]
        self.x, self.y = balanced(self.bench.split("train", families), seed)
        self.val_x, self.val_y = balanced(self.bench.split("val", families), 1)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def parameters(self) -> Iterable[Tensor]:
        return self.detector.parameters()

    def train_loss(self, step: int) -> Tensor:
        self.detector.train()
        idx = torch.randint(len(self.y), (self.batch_size,), generator=self.generator)
        return F.binary_cross_entropy_with_logits(self.detector(self.x[idx]), self.y[idx])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        z = logits(self.detector, self.val_x)
        return {"val_loss": F.binary_cross_entropy_with_logits(z, self.val_y).item()}

    def final_report(self) -> dict[str, Any]:
        return zero_shot_report(partial(score, self.detector), self.bench, families_of(self.data))
