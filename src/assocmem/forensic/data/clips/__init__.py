"""The built-in offline clip (video) benchmark, made from the image benchmark's photos.

    from assocmem.forensic.data.clips import ClipConfig, build_clip_benchmark
    bench = build_clip_benchmark(ClipConfig())          # cached under $ASSOCMEM_CACHE/clips
    train = bench.split("train", ["ae_transconv"])      # items: (clip (T, 3, P, P), label)

Files: ``config.py`` (what determines the bytes), ``camera.py`` (real clips: a moving window and
a noisy sensor), ``fakes.py`` (frame-wise families, the jittering splice), ``pipeline.py`` (the
build and its cache entry). Split by photo exactly as the image benchmark (its own split is
reused), seeded, cached like it.
"""

from assocmem.forensic.data.clips.config import CLIP_FORMAT_VERSION, ClipConfig
from assocmem.forensic.data.clips.pipeline import build_clip_benchmark

__all__ = ["CLIP_FORMAT_VERSION", "ClipConfig", "build_clip_benchmark"]
