"""Data for the forensic workload: the built-in offline benchmark and loaders for user data.

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
bench = build_benchmark(BenchmarkConfig())          # cached under $ASSOCMEM_CACHE
train = bench.split("train", ["ae_transconv", "double_jpeg"])
test = bench.split("test", ["splice"])              # a held-out family
"""

from assocmem.forensic.data.baseline import hf_energy_baseline, hf_energy_feature
from assocmem.forensic.data.benchmark import (
    SPLITS,
    BenchmarkConfig,
    ForensicBenchmark,
    ForensicSubset,
    SplitArrays,
    build_benchmark,
    default_cache_dir,
)
from assocmem.forensic.data.families import FAMILY_NAMES, GeneratorSettings
from assocmem.forensic.data.loaders import (
    ImageFileDataset,
    Sample,
    cnndetection_samples,
    genimage_samples,
    manifest_samples,
)
from assocmem.forensic.data.photos import PHOTO_NAMES, load_photos
from assocmem.forensic.data.postprocess import PostProcessConfig

__all__ = [
    "FAMILY_NAMES",
    "PHOTO_NAMES",
    "SPLITS",
    "BenchmarkConfig",
    "ForensicBenchmark",
    "ForensicSubset",
    "GeneratorSettings",
    "ImageFileDataset",
    "PostProcessConfig",
    "Sample",
    "SplitArrays",
    "build_benchmark",
    "cnndetection_samples",
    "default_cache_dir",
    "genimage_samples",
    "hf_energy_baseline",
    "hf_energy_feature",
    "load_photos",
    "manifest_samples",
]
