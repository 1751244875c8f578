"""Forensic tasks: masked pretraining of an encoder, and real/fake detection.

Data protocol (``conf/data/*.yaml``): detectors and encoders only ever see the
``train_families`` (and validation uses the val split of those same families); the
``heldout_families`` appear only in ``final_report``, on the test split, whose photos are also
unseen. So model selection (LR tuning on ``val_loss``) never touches what is reported as
zero-shot generalisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from assocmem.forensic.data import (
    BenchmarkConfig,
    ForensicBenchmark,
    build_benchmark,
)
from assocmem.forensic.data.benchmark import default_cache_dir
from assocmem.forensic.data.stream import TrainStream, stream_loader
from assocmem.forensic.masks import FrequencyMasker, PixelMasker
from assocmem.forensic.models import (
    CNNEncoder,
    F3Net,
    MaskedPretrainer,
    MesoNet4,
    SmallCNN,
    ViTEncoder,
    fine_tune,
    linear_probe,
    mlp_probe,
)
from assocmem.forensic.models.npr import NPR
from assocmem.forensic.protocol import (
    FamilySplit,
    balanced,
    linear_probe_scorer,
    zero_shot_report,
)
from assocmem.forensic.train import logits, pretrain, pretrain_val_loss, score
from assocmem.storage import write_atomically

_BENCHMARKS: dict[str, ForensicBenchmark] = {}


def load_benchmark(data: DictConfig | dict[str, Any]) -> ForensicBenchmark:
    """Build or load (cache) the benchmark of a data config; memoised within the process."""
    data = _plain(data)
    overrides = {"patch_size": data["patch_size"], "seed": data["seed"]}
    config = BenchmarkConfig.tiny(**overrides) if data["tiny"] else BenchmarkConfig(**overrides)
    key = config.key()
    if key not in _BENCHMARKS:
        _BENCHMARKS[key] = build_benchmark(config, data.get("cache_dir"), progress=True)
    return _BENCHMARKS[key]


def families_of(data: dict[str, Any]) -> FamilySplit:
    """The data config's seen/held-out families (refused if a family is on both sides)."""
    return FamilySplit(tuple(data["train_families"]), tuple(data["heldout_families"]))


def _plain(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def build_encoder(spec: dict[str, Any], image_size: int) -> nn.Module:
    spec = dict(spec)
    arch = spec.pop("arch")
    if arch == "vit":
        return ViTEncoder(image_size=image_size, **spec)
    if arch == "cnn":
        return CNNEncoder(**spec)
    raise ValueError(f"encoder.arch must be 'vit' or 'cnn', got {arch!r}")


def build_masker(spec: dict[str, Any]) -> FrequencyMasker | PixelMasker:
    spec = dict(spec)
    domain = spec.pop("domain")
    if domain == "frequency":
        return FrequencyMasker(**spec)
    if domain == "pixel":
        return PixelMasker(**spec)
    raise ValueError(f"masker.domain must be 'frequency' or 'pixel', got {domain!r}")


class MaskedPretraining:
    """Masked-reconstruction pretraining (frequency or pixel masks) of a forensic encoder.

    ``val_loss`` is the reconstruction loss on fixed validation masks. ``final_report`` then
    measures what the encoder learned for forensics: a linear probe on its frozen features,
    solved to convergence on the seen families (the same recipe whatever optimizer pretrained
    the encoder), scored zero-shot on the held-out ones.
    """

    def __init__(
        self,
        seed: int,
        data: DictConfig,
        encoder: DictConfig,
        masker: DictConfig,
        loss: str,
        batch_size: int,
        name: str = "masked_pretrain",
    ) -> None:
        self.name, self.data = name, _plain(data)
        self.bench = load_benchmark(self.data)
        train = self.bench.split("train", self.data["train_families"])
        self.train_images = train.images
        self.val_images = self.bench.split("val", self.data["train_families"]).images[:512]
        torch.manual_seed(seed)
        size = self.bench.config.patch_size
        self.pretrainer = MaskedPretrainer(
            build_encoder(_plain(encoder), size), build_masker(_plain(masker)), loss=loss
        )
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def model(self) -> nn.Module:
        return self.pretrainer

    def parameters(self) -> Iterable[Tensor]:
        return self.pretrainer.parameters()

    def train_loss(self, step: int) -> Tensor:
        idx = torch.randint(len(self.train_images), (self.batch_size,), generator=self.generator)
        return self.pretrainer.loss(self.train_images[idx], self.generator)

    def evaluate(self) -> dict[str, float]:
        return {"val_loss": pretrain_val_loss(self.pretrainer, self.val_images)}

    def final_report(self) -> dict[str, Any]:
        x, y = balanced(self.bench.split("train", self.data["train_families"]), 0)
        score_fn = linear_probe_scorer(self.pretrainer.encoder, x, y)
        return zero_shot_report(score_fn, self.bench, families_of(self.data))


def pretrained_encoder(data: dict, spec: dict[str, Any]) -> nn.Module:
    """An encoder pretrained with a fixed Adam recipe, cached on disk by its config.

    Detection tasks start from it so that every optimizer under test trains the same head on
    the same features. It draws from a fork of the global RNG, which it leaves as it was: it
    seeded the global generator with 0, and a cache miss drew the decoder from it where a hit
    did not, so every seed's head started alike after it and a seed's head differed between a
    cold cache and a warm one. A cache file that cannot be read is rebuilt (with a warning that
    names it), and a new one is written atomically (a concurrent reader never sees half).
    """
    bench = load_benchmark(data)
    recipe = {"data": {k: data[k] for k in ("tiny", "patch_size", "seed", "train_families")}}
    recipe.update(spec)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(data.get("cache_dir") or default_cache_dir()) / "encoders" / f"{key}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = build_encoder(spec["encoder"], bench.config.patch_size)
        if path.exists():
            try:
                encoder.load_state_dict(torch.load(path, weights_only=True))
                return encoder
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
                warnings.warn(
                    f"cached encoder {path} cannot be read ({error}); pretraining it again",
                    stacklevel=2,
                )
                torch.manual_seed(0)  # the draw a cold cache makes
                encoder = build_encoder(spec["encoder"], bench.config.patch_size)
        model = MaskedPretrainer(encoder, build_masker(spec["masker"]), loss=spec["loss"])
        train = bench.split("train", data["train_families"]).images
        val = bench.split("val", data["train_families"]).images[:512]
        result = pretrain(
            model, train, val, partial(torch.optim.Adam, lr=spec["lr"]), spec["steps"],
            generator=torch.Generator().manual_seed(0), eval_every=spec["steps"],
        )  # fmt: skip
    if result.diverged:
        raise RuntimeError(f"reference encoder pretraining diverged: {result.message}")
    buffer = io.BytesIO()
    torch.save(encoder.state_dict(), buffer)
    write_atomically([(path, buffer.getvalue())])
    return encoder


class Detection:
    """Real/fake detection on the seen families; ``val_loss`` is BCE on their val split.

    ``model.kind``: ``linear_probe`` / ``mlp_probe`` (frozen pretrained encoder, only the head
    trains), ``finetune`` (encoder + head), or a baseline trained from scratch: ``mesonet4``,
    ``f3net``, ``smallcnn``, ``npr``, ``npr_bn``. Training batches come from the training stream
    (``assocmem.forensic.data.stream``); validation is the fixed, balanced val split.
    """

    def __init__(
        self,
        seed: int,
        data: DictConfig,
        model: DictConfig,
        batch_size: int,
        pretrained: DictConfig | None = None,
        name: str = "detection",
    ) -> None:
        self.name, self.data = name, _plain(data)
        self.bench = load_benchmark(self.data)
        size = self.bench.config.patch_size
        kind = model["kind"]
        torch.manual_seed(seed)
        if kind in ("linear_probe", "mlp_probe", "finetune"):
            encoder = pretrained_encoder(self.data, _plain(pretrained))
            make = {"linear_probe": linear_probe, "mlp_probe": mlp_probe, "finetune": fine_tune}
            self.detector = make[kind](encoder)
        elif kind in ("mesonet4", "f3net", "smallcnn", "npr", "npr_bn"):
            baselines = {
                "mesonet4": partial(MesoNet4, image_size=size),
                "f3net": partial(F3Net, image_size=size),
                "smallcnn": SmallCNN,
                "npr": NPR,
                "npr_bn": partial(NPR, norm="batch"),
            }
            self.detector = baselines[kind]()
        else:
            raise ValueError(f"unknown detection model kind {kind!r}")
        families = self.data["train_families"]
        # Fresh crops and on-the-fly fakes every step: a fixed patch set is memorised within a
        # few hundred steps, after which the comparison would measure overfitting.
        stream = TrainStream(self.bench, families, batch_size=batch_size, seed=seed)
        self.batches = iter(stream_loader(stream))
        self.val_images, self.val_labels = balanced(self.bench.split("val", families), 1)

    @property
    def model(self) -> nn.Module:
        return self.detector

    def parameters(self) -> Iterable[Tensor]:
        return [p for p in self.detector.parameters() if p.requires_grad]

    def train_loss(self, step: int) -> Tensor:
        self.detector.train()
        images, labels, _ = next(self.batches)
        return F.binary_cross_entropy_with_logits(self.detector(images), labels)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        # float32 probabilities, clamped: the validation loss every recorded run was selected on
        probs = torch.sigmoid(logits(self.detector, self.val_images)).clamp(1e-7, 1 - 1e-7)
        return {"val_loss": F.binary_cross_entropy(probs, self.val_labels).item()}

    def final_report(self) -> dict[str, Any]:
        return zero_shot_report(partial(score, self.detector), self.bench, families_of(self.data))
