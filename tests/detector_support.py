"""A tiny untrained detector checkpoint, for tests of the checkpoint format and the CLI."""

from __future__ import annotations

from pathlib import Path

import torch

from assocmem.forensic.checkpoint import build_model, save_detector
from assocmem.forensic.views import view_logits

ARCH_KWARGS = {"widths": [4, 8], "norm": "batch"}


def save_tiny_detector(path: Path, n_val: int = 40, views: str = "one") -> Path:
    """An NPR with 4 and 8 channels (fast), calibrated on its logits under ``views`` of ``n_val``
    noise patches; its "fakes" for the map to ``P(fake)`` are those logits plus 1, and its real
    4-tile images' scores half those logits (its fake ones those plus 0.5)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("npr", ARCH_KWARGS).eval()
    with torch.no_grad():
        val = view_logits(model, torch.rand(n_val, 3, 32, 32, generator=gen), views)
    save_detector(
        path,
        model,
        architecture="npr",
        arch_kwargs=ARCH_KWARGS,
        patch_size=32,
        val_real_logits=val,
        target_fpr=0.05,
        views=views,
        info={"command": "tests/detector_support.py"},
        val_fake_logits=val + 1.0,
        # real images of 4 tiles: less spread than single patches, so a lower threshold
        image_real_scores={4: val * 0.5},
        image_fake_scores={4: val * 0.5 + 0.5},
    )
    return path


def train_tiny_runs(
    tmp_path: Path,
    seeds: tuple[int, ...] = (0,),
    seen: tuple[str, ...] = (),
    patience: int | None = None,
) -> list[dict]:
    """``experiments.detectors`` on the tiny benchmark: ``npr_bn`` with Adam, 4 steps on a weight
    average 0.99, one run per seed, weights saved under ``tmp_path / "w"``; the run records.
    ``seen``: the families trained on (default: the benchmark's seen ones); ``patience``: the
    early-stopping patience (default: the command's)."""
    import json

    from experiments.detectors import main

    runs = tmp_path / f"runs{'-' + '+'.join(seen) if seen else ''}.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn",
          "--seeds", *map(str, seeds), "--max-steps", "4", "--eval-every", "2",
          "--batch-size", "8", "--workers", "0", "--average", "0.99",
          *(["--seen", *seen] if seen else []),
          *(["--patience", str(patience)] if patience is not None else []),
          "--save-weights", str(tmp_path / "w"), "--json", str(runs)])  # fmt: skip
    return json.loads(runs.read_text())
