"""Detector checkpoints: safetensors weights + a JSON header (and sidecar), never pickle.

Layout of a ``<name>.safetensors`` file:

- tensors ``model.<key>``: the detector's ``state_dict`` (BatchNorm running statistics included);
- metadata ``{"assocmem": json}``, the header:

  - ``format``, ``version``: :data:`FORMAT`, :data:`FORMAT_VERSION`;
  - ``architecture`` (a name in :data:`ARCHITECTURES`) and ``arch_kwargs`` (its constructor's
    keyword arguments): what network the tensors fill. ``ensemble`` is a deep ensemble
    (``models.ensemble.LogitEnsemble``, the mean of its members' logits) with ``arch_kwargs``
    ``{"members": [{"architecture": ..., "arch_kwargs": ...}, ...]}`` and tensors
    ``model.members.K.<key>``;
  - ``patch_size``: the side of the square RGB tiles in [0, 1] the detector was trained on;
  - ``views`` (version 2): the test-time views a tile's logit is averaged over, a name in
    ``views.VIEWS``: ``"one"`` (the tile as it is) or ``"d4"`` (the mean logit over its eight
    dihedral views, ``assocmem.forensic.views``). Absent means ``"one"``; version 1 files predate
    the key and are read as ``"one"`` (one that names views is refused: no version-1 writer made
    it, and an older reader would ignore the key and decide at a threshold set on other logits);
  - ``calibration``: ``target_fpr``, ``val_real_logits`` (every validation-real patch's logit
    under ``views``, sorted ascending: the threshold only holds for logits computed the same
    way), ``threshold`` (on the logit scale, ``threshold_at_fpr`` of those logits at
    ``target_fpr``) and ``val_real_fpr`` (the FPR it gives on them). The logits are kept so a
    threshold for another false-positive rate can be recomputed (``assocmem-detect --fpr``).
    Optionally (both or neither) ``val_fake_logits`` (the seen families' validation fakes' logits
    under ``views``, sorted ascending) and ``probability`` (``{"slope", "intercept"}``: Platt's
    map of a score to ``P(fake)``, ``calibration.platt_scaling`` of the two sets of logits; a
    file without them reads ``P(fake)`` as the logit's sigmoid). Optionally
    ``image_real_scores`` (``{"k": [...]}``: the scores, mean tile logits under ``views``, of
    real images of ``k > 1`` non-overlapping tiles, sorted ascending), from which ``Detector``
    calibrates the thresholds of larger images at ``target_fpr`` (``detector.py``), and
    optionally with it ``image_fake_scores`` (the same keys: fake images' scores, the seen
    families), from which it fits each size's map to ``P(fake)``;
  - ``info``: free-form provenance (the training command, the data config, the test table);
  - ``weights_sha256`` (written since 2026-12-06, read where present): the SHA-256 of the
    ``model.*`` tensors (:func:`weights_digest`), binding the weights to the header that holds
    their calibration. Without it, weights changed after calibration (scaled, fine-tuned,
    another run's file renamed) loaded without a word and were decided at a threshold set for
    other logits. It guards against such accidents, not against someone who edits both. The
    calibration itself is in no digest: it is checked for consistency (below), so a
    calibration block copied whole from another run, into header and sidecar alike, loads;
  - ``network_sha256`` (written since late 2026-12-06, read where present): the SHA-256 of the
    weights' digest with the header's ``architecture``, ``arch_kwargs``, ``patch_size`` and
    ``views`` (:func:`network_digest`): everything the calibration's logits were computed
    with. Without it, a header edited to ``"views": "one"`` (eight times faster) or another
    ``patch_size`` loaded and was decided at a threshold calibrated on other logits.

:func:`save_detector` also writes the sidecar (``assocmem.storage.sidecar_path``:
``<name>.json``), the same header indented for people.

:func:`load_detector` refuses with a ``ValueError`` naming the problem: a path that is no regular
file (never opened), a file that is not safetensors, a missing or non-JSON header (a ``NaN`` or
``Infinity`` token is not JSON: :func:`save_detector` never writes one), another format
or a version outside :data:`READABLE_VERSIONS`, missing keys, ``views`` that are not in
``views.VIEWS`` (or named by a version-1 header), an unknown architecture or constructor
arguments it rejects, a bad patch size, a non-finite or inconsistent calibration (the threshold
and its FPR, and the probability map where there is one, are recomputed from the stored logits
and must agree: an edited threshold or map is caught), tensors whose names, shapes or dtypes
differ from the network's or that hold non-finite values, and a ``.json`` sidecar that is not
JSON or differs from the header, and tensors whose digest differs from ``weights_sha256``
(or, with the header's network fields, from ``network_sha256``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from assocmem.forensic.calibration import (
    ProbabilityScaling,
    allowed_false_positives,
    platt_scaling,
    threshold_allowing,
    threshold_at_fpr,
)
from assocmem.forensic.checks import whole_number
from assocmem.forensic.metrics import false_positive_rate
from assocmem.forensic.models.baselines import SmallCNN
from assocmem.forensic.models.ensemble import LogitEnsemble
from assocmem.forensic.models.npr import NPR, NPRWithDCT, NPRWithPixels
from assocmem.forensic.views import VIEWS
from assocmem.storage import (
    read_regular_bytes,
    read_safetensors,
    refuse_shared_sidecar,
    sharing_sidecar,
    sidecar_path,
    strict_json,
    write_safetensors,
)
from assocmem.storage.digest import bound_digest, weights_digest

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_CHECKPOINT",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_PATCH_SIZE",
    "NETWORK_FIELDS",
    "READABLE_VERSIONS",
    "DetectorCheckpoint",
    "build_model",
    "load_detector",
    "network_digest",
    "save_detector",
    "weights_digest",
]

FORMAT = "assocmem.detector"
# 2 added ``views``; a version-1 reader must refuse such a file rather than ignore the key
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_CHECKPOINT = Path(__file__).with_name("checkpoints") / "detector.safetensors"


def _ensemble(members: Sequence[Any]) -> LogitEnsemble:
    """``ensemble``'s constructor: ``members`` is a list of ``{"architecture", "arch_kwargs"}``
    (any architecture but another ensemble); the network is their :class:`LogitEnsemble`."""
    if not isinstance(members, Sequence) or isinstance(members, str) or not members:
        raise ValueError("members must be a non-empty list of {architecture, arch_kwargs}")
    networks = []
    for i, member in enumerate(members):
        if not isinstance(member, dict) or set(member) != {"architecture", "arch_kwargs"}:
            raise ValueError(f"member {i} must be {{architecture, arch_kwargs}}, got {member!r}")
        if member["architecture"] == "ensemble":
            raise ValueError(f"member {i} is itself an ensemble; list its members instead")
        networks.append(build_model(member["architecture"], member["arch_kwargs"]))
    return LogitEnsemble(networks)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "npr": NPR,
    "npr_dct": NPRWithDCT,
    "npr_pixels": NPRWithPixels,
    "smallcnn": SmallCNN,
    # the mean logit of several networks (a deep ensemble of seeds); tensors members.K.*
    "ensemble": _ensemble,
}
_REQUIRED = ("format", "version", "architecture", "arch_kwargs", "patch_size", "calibration")
_CALIBRATION = ("target_fpr", "threshold", "val_real_fpr", "val_real_logits")


@dataclass
class DetectorCheckpoint:
    """What a detector checkpoint holds, in memory; ``model`` is in eval mode."""

    model: nn.Module
    architecture: str
    arch_kwargs: dict[str, Any]
    patch_size: int
    target_fpr: float
    threshold: float
    val_real_fpr: float
    val_real_logits: tuple[float, ...]
    views: str = "one"  # the views the logits (and so the threshold) are averaged over
    probability: ProbabilityScaling | None = None  # score -> P(fake); None: the logit's sigmoid
    # real images' scores by tile count, ascending counts: ((k, sorted scores), ...)
    image_real_scores: tuple[tuple[int, tuple[float, ...]], ...] = ()
    image_fake_scores: tuple[tuple[int, tuple[float, ...]], ...] = ()
    # each stored count's Platt map, fit on its real and fake images' scores: ((k, map), ...)
    image_probability: tuple[tuple[int, ProbabilityScaling], ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


def build_model(architecture: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """The network ``ARCHITECTURES[architecture](**arch_kwargs)``; a ``ValueError`` otherwise."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    if not isinstance(arch_kwargs, dict):
        raise ValueError(f"arch_kwargs must be a dict, got {type(arch_kwargs).__name__}")
    # JSON has no tuples; the constructors take tuples of widths
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in arch_kwargs.items()}
    try:
        return ARCHITECTURES[architecture](**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{architecture}({arch_kwargs}) cannot be built: {e}") from None


def _shapes(architecture: str, arch_kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict ``build_model`` would make, as meta tensors (shapes and dtypes only)."""
    try:
        with torch.device("meta"):
            return build_model(architecture, arch_kwargs).state_dict()
    except RuntimeError as e:  # e.g. a size whose byte count overflows
        raise ValueError(f"{architecture}({arch_kwargs}) cannot be built: {e}") from None


def _json_value(x: Any) -> Any:
    """What the header stores for a value JSON has no type for: a numpy scalar's number, a
    path's text; anything else is refused (``str()`` of it would not build the model back)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"a {type(x).__name__} ({x!r}) cannot be stored in a checkpoint header")


def _info_value(x: Any) -> Any:
    """``info`` is a record for people (a run's options): what JSON cannot hold is its text."""
    try:
        return _json_value(x)
    except TypeError:
        return str(x)


def _probe_outputs(model: nn.Module, patch_size: int) -> Tensor:
    """``model``'s eval-mode output on a fixed noise batch of two patches, on the CPU."""
    device = next(model.parameters()).device
    probe = torch.rand(2, 3, patch_size, patch_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(probe.to(device)).float().cpu()
    finally:
        model.train(was_training)


# What a checkpoint's logits depend on beside its weights (``views`` absent means "one").
MAX_PATCH_SIZE = 8192  # a tile side no CPU or GPU detector here comes near (32 and 64 px)
NETWORK_FIELDS = ("architecture", "arch_kwargs", "patch_size", "views")


def network_digest(weights_sha256: str, header: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the weights' digest and the header's :data:`NETWORK_FIELDS` as compact
    sorted JSON: binds the calibration to every input of the logits it was measured on."""
    fields = {k: header.get(k, "one" if k == "views" else None) for k in NETWORK_FIELDS}
    return bound_digest(weights_sha256, fields)


def save_detector(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    architecture: str,
    arch_kwargs: dict[str, Any],
    patch_size: int,
    val_real_logits: Sequence[float] | Tensor,
    target_fpr: float = 0.05,
    views: str = "one",
    info: dict[str, Any] | None = None,
    val_fake_logits: Sequence[float] | Tensor | None = None,
    image_real_scores: Mapping[int, Sequence[float]] | None = None,
    image_fake_scores: Mapping[int, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Write ``model``'s weights with its calibrated header (and the ``.json`` sidecar) atomically.

    The threshold is calibrated here, on ``val_real_logits`` (the detector's logits on validation
    reals, which took no part in training) at ``target_fpr``. Those logits must be computed under
    ``views`` (``views.view_logits(model, val_reals, views)``): the checkpoint's users score
    with them, and the threshold means nothing on another scale. With ``val_fake_logits`` (the
    validation fakes of the families it was trained on, same views) the header also holds Platt's
    map from a score to ``P(fake)``, fit here on the two sets. ``image_real_scores`` (tile
    count ``k > 1`` -> the scores of real images of ``k`` tiles, same views) lets ``Detector``
    calibrate larger images' thresholds; ``image_fake_scores`` (the same counts, fake images
    of the seen families) their maps to ``P(fake)``. Returns the header written.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    if Path(path).suffix.lower() == ".json":
        raise ValueError(f"{path}: a checkpoint ending in .json would be its own sidecar")
    if not isinstance(patch_size, numbers.Integral) or isinstance(patch_size, bool):
        raise ValueError(f"patch_size must be an integer, got {patch_size!r}")
    try:  # as the header will hold them: numpy scalars become numbers, other types are refused
        arch_kwargs = json.loads(json.dumps(arch_kwargs, default=_json_value))
    except TypeError as e:
        raise ValueError(f"arch_kwargs: {e}") from None
    reference = build_model(architecture, arch_kwargs)
    _check_tensors(model.state_dict(), reference.state_dict(), "model")
    # A constructor argument that no tensor shows (a residual's gain, say) must be in
    # arch_kwargs too, or the loaded network computes something else: the rebuilt network on
    # the same weights must give the model's outputs. Same code and weights: only the kernels'
    # rounding can differ (another device), far below the 1e-4 allowed.
    reference.load_state_dict(model.state_dict())
    ours, rebuilt = (
        _probe_outputs(model, int(patch_size)),
        _probe_outputs(reference, int(patch_size)),
    )
    if not torch.allclose(ours, rebuilt, rtol=1e-4, atol=1e-4):
        gap = float((ours - rebuilt).abs().max())
        raise ValueError(
            f"{architecture}(**arch_kwargs) rebuilt with the model's weights computes other "
            f"outputs (up to {gap:.3g} apart): arch_kwargs lacks or differs in a constructor "
            "argument of the model"
        )
    logits = _sorted_floats(val_real_logits)
    n = len(logits)
    if n and 0.0 < target_fpr < 1.0 and allowed_false_positives(target_fpr, n) < 1:
        # The threshold then sits above every real: "at most target_fpr of them" holds (none
        # is flagged), but nothing calibrates the rate itself; Detector.with_fpr and
        # assocmem-detect --fpr refuse such a rate outright. Saved (the tiny smoke benchmark has
        # 12 reals), said.
        warnings.warn(
            f"target_fpr {target_fpr} allows no false positive among {n} validation reals: the "
            f"threshold sits above all of them and is not calibrated for {target_fpr} (rates "
            f"from 1/{n} = {1.0 / n:.2g} are)",
            stacklevel=2,
        )
    threshold = threshold_at_fpr(logits, target_fpr)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": architecture,
        "arch_kwargs": arch_kwargs,
        "patch_size": int(patch_size),
        "views": views,
        "calibration": {
            "target_fpr": float(target_fpr),
            "threshold": threshold,
            "val_real_fpr": false_positive_rate(logits, threshold),
            "val_real_logits": logits,
        },
        "info": info or {},
    }
    if val_fake_logits is not None:
        fakes = _sorted_floats(val_fake_logits)
        scaling = platt_scaling(logits, fakes)
        header["calibration"]["val_fake_logits"] = fakes
        header["calibration"]["probability"] = scaling._asdict()
    for key, by_count in (
        ("image_real_scores", image_real_scores),
        ("image_fake_scores", image_fake_scores),
    ):
        if by_count:
            for k in by_count:  # 4.7 was stored as 4; a str beside an int failed to sort
                if not whole_number(k, 2):
                    raise ValueError(f"{key}: a tile count must be an integer > 1, got {k!r}")
            header["calibration"][key] = {
                str(int(k)): _sorted_floats(scores) for k, scores in sorted(by_count.items())
            }
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header["weights_sha256"] = weights_digest(tensors)
    # one JSON round trip, so the sidecar and the embedded header are the same text's values;
    # strict JSON: a NaN or inf in ``info`` (an undefined AUC, a diverged loss) becomes null,
    # which every JSON reader of the sidecar takes (the calibration must be finite anyway)
    header = json.loads(strict_json.dumps(header, default=_info_value))
    header["network_sha256"] = network_digest(header["weights_sha256"], header)  # as read back
    _check_header(header, Path(path))
    path = Path(path)
    refuse_shared_sidecar(path)
    # the sidecar is written with the checkpoint (both files first, then both moved into
    # place): a full disk or a crash while writing leaves the previous pair, which loads
    sidecar = strict_json.dumps(header, indent=1, sort_keys=True) + "\n"
    write_safetensors(path, tensors, header, beside=[(sidecar_path(path), sidecar.encode())])
    return header


def _sorted_floats(values: Sequence[float] | Tensor) -> list[float]:
    """Scores as the header stores them: Python floats, ascending."""
    return sorted(float(v) for v in torch.as_tensor(values).flatten().tolist())


def load_detector(path: str | os.PathLike[str] | None = None) -> DetectorCheckpoint:
    """Read and validate a detector checkpoint; ``path=None`` is the shipped one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: anything else wrong with it (see the module docstring).
    """
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    metadata, tensors = read_safetensors(path, "detector checkpoint")
    if "assocmem" not in metadata:
        raise ValueError(f"{path} is not an assocmem detector checkpoint (no header)")
    try:
        # strict: save_detector writes no NaN/Infinity token, and one in arch_kwargs failed
        # later in the network digest with json's own message, naming neither file nor field
        header = strict_json.loads(metadata["assocmem"], object_pairs_hook=strict_json.unique_keys)
    except (ValueError, RecursionError) as e:  # malformed, too deep, a 5000-digit number
        raise ValueError(f"{path}: the checkpoint's header is not JSON ({e})") from None
    image_probability = _check_header(header, path)
    _check_sidecar(path, header)
    saved = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    stray = sorted(k for k in tensors if not k.startswith("model."))
    if stray:
        raise ValueError(f"{path}: unexpected tensors {stray} (expected model.*)")
    # The header's shapes are checked on the meta device first (no memory), so an edited
    # header asking for huge widths is refused before anything that size is allocated.
    try:
        shapes = _shapes(header["architecture"], header["arch_kwargs"])
    except ValueError as e:  # an architecture or arguments that build nothing: name the file
        raise ValueError(f"{path}: {e}") from None
    _check_tensors(saved, shapes, str(path))
    if "weights_sha256" in header and weights_digest(tensors) != header["weights_sha256"]:
        raise ValueError(
            f"{path}: the weights are not the ones the header was calibrated on (their SHA-256 "
            "differs from weights_sha256): they were changed after calibration. Re-save the "
            "network with save_detector, which calibrates it anew"
        )
    if (
        "network_sha256" in header
        and network_digest(weights_digest(tensors), header) != header["network_sha256"]
    ):
        raise ValueError(
            f"{path}: the header's architecture, arch_kwargs, patch_size or views are not the "
            "ones the calibration was measured with (network_sha256 differs): the file was "
            "edited. Its threshold holds only for logits computed as they were; re-save the "
            "network with save_detector to calibrate it for other settings"
        )
    model = build_model(header["architecture"], header["arch_kwargs"])
    model.load_state_dict(saved, strict=True)
    model.eval()
    cal = header["calibration"]
    return DetectorCheckpoint(
        model=model,
        architecture=header["architecture"],
        arch_kwargs=dict(header["arch_kwargs"]),
        patch_size=header["patch_size"],
        target_fpr=cal["target_fpr"],
        threshold=cal["threshold"],
        val_real_fpr=cal["val_real_fpr"],
        val_real_logits=tuple(cal["val_real_logits"]),
        views=header.get("views", "one"),
        probability=(ProbabilityScaling(**cal["probability"]) if "probability" in cal else None),
        image_real_scores=_by_count(cal.get("image_real_scores", {})),
        image_fake_scores=_by_count(cal.get("image_fake_scores", {})),
        image_probability=image_probability,
        info=header.get("info", {}),
        header=header,
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_header(header: Any, path: Path) -> tuple[tuple[int, ProbabilityScaling], ...]:
    """Refuse a malformed or edited header (module docstring); return the images' Platt maps
    fit while checking them, so a load fits each once."""
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the checkpoint's header is {type(header).__name__}, not a dict")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # True == 1: no bools
        raise ValueError(
            f"{path}: detector checkpoint format version {version!r}, this assocmem reads "
            f"versions {list(READABLE_VERSIONS)}"
        )
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise ValueError(f"{path}: the checkpoint's header lacks {missing}")
    if "views" in header:
        if version < 2:
            raise ValueError(
                f"{path}: a version-{version} header names views {header['views']!r}, which "
                "that version does not have (views came with version 2); the file was edited"
            )
        if not isinstance(header["views"], str) or header["views"] not in VIEWS:
            raise ValueError(
                f"{path}: views {header['views']!r} is not one this assocmem scores with "
                f"({list(VIEWS)}); its threshold was calibrated on logits it cannot reproduce"
            )
    p = header["patch_size"]
    # NPR's residual pairs pixels in 2 x 2 blocks, so tiles must have even sides
    # ... and at most MAX_PATCH_SIZE: a Detector tiles a blank image of the patch size when
    # built, and an edited 200000 asked the allocator for 160 GB
    if not isinstance(p, int) or isinstance(p, bool) or p < 8 or p % 2 or p > MAX_PATCH_SIZE:
        raise ValueError(
            f"{path}: patch_size must be an even integer in [8, {MAX_PATCH_SIZE}], got {p!r}"
        )
    if not isinstance(header.get("info", {}), dict):
        raise ValueError(f"{path}: the checkpoint's 'info' is not a dict")
    cal = header["calibration"]
    if not isinstance(cal, dict):
        raise ValueError(f"{path}: 'calibration' is {type(cal).__name__}, not a dict")
    missing = [k for k in _CALIBRATION if k not in cal]
    if missing:
        raise ValueError(f"{path}: the checkpoint's calibration lacks {missing}")
    for k in ("target_fpr", "threshold", "val_real_fpr"):
        if not _is_number(cal[k]) or not math.isfinite(cal[k]):
            raise ValueError(f"{path}: calibration {k} must be a finite number, got {cal[k]!r}")
    if not 0.0 <= cal["target_fpr"] < 1.0:
        raise ValueError(
            f"{path}: calibration target_fpr must be in [0, 1), got {cal['target_fpr']}"
        )
    logits = _sorted_logits(cal["val_real_logits"], "val_real_logits", path)
    # The threshold and its FPR follow from the stored logits: recomputing them catches an
    # edited threshold (or table) instead of silently deciding at a number nobody calibrated.
    expected = threshold_at_fpr(logits, cal["target_fpr"])
    if cal["threshold"] != expected and cal["threshold"] == _threshold_before_rounding_fix(
        logits, cal["target_fpr"]
    ):
        expected = cal["threshold"]  # saved before calibration.allowed_false_positives
    if cal["threshold"] != expected:
        raise ValueError(
            f"{path}: calibration threshold {cal['threshold']!r} is not the one its validation "
            f"logits give at target_fpr {cal['target_fpr']} ({expected!r}); the file was edited"
        )
    if cal["val_real_fpr"] != false_positive_rate(logits, expected):
        raise ValueError(f"{path}: calibration val_real_fpr does not match its validation logits")
    _check_probability(cal, logits, path)
    return _check_image_scores(cal, path)


def _threshold_before_rounding_fix(logits: Sequence[float], target_fpr: float) -> float:
    """The threshold a checkpoint saved before the rounding fix (2026-12-06) holds: ``k`` the
    floor of the binary product ``target_fpr * n``, which a rate such as 0.29 of 100 rounds one
    below (:func:`~assocmem.forensic.calibration.allowed_false_positives`)."""
    return threshold_allowing(logits, math.floor(target_fpr * len(logits)))


def _by_count(scores: dict[str, list[float]]) -> tuple[tuple[int, tuple[float, ...]], ...]:
    return tuple(sorted((int(k), tuple(v)) for k, v in scores.items()))


def _check_image_scores(
    cal: dict[str, Any], path: Path
) -> tuple[tuple[int, ProbabilityScaling], ...]:
    """The optional images' scores: ``{"k": sorted finite scores}`` with ``k > 1``; fakes only
    beside reals of the same counts, and each count's pair fits a map to ``P(fake)``: the maps,
    by ascending count (none without fakes)."""
    for key in ("image_real_scores", "image_fake_scores"):
        if key not in cal:
            continue
        scores = cal[key]
        if not isinstance(scores, dict) or not scores:
            raise ValueError(f"{path}: calibration {key} must be a non-empty dict")
        for k in scores:
            if not (isinstance(k, str) and k.isdigit() and int(k) > 1):
                raise ValueError(f"{path}: calibration {key} key {k!r} is not a tile count above 1")
            _sorted_logits(scores[k], f"{key}[{k!r}]", path)
    if "image_fake_scores" not in cal:
        return ()
    reals = cal.get("image_real_scores", {})
    if sorted(cal["image_fake_scores"]) != sorted(reals):
        raise ValueError(
            f"{path}: calibration image_fake_scores' tile counts "
            f"{sorted(cal['image_fake_scores'])} are not image_real_scores' {sorted(reals)}"
        )
    maps = []
    for k, fakes in _by_count(cal["image_fake_scores"]):
        try:
            maps.append((k, platt_scaling(reals[str(k)], fakes)))
        except ValueError as e:
            raise ValueError(f"{path}: no map to P(fake) for {k} tiles: {e}") from None
    return tuple(maps)


def _sorted_logits(logits: Any, key: str, path: Path) -> list[float]:
    """``logits`` (calibration ``key``): a non-empty list of finite numbers in ascending order,
    or a ValueError."""
    if (
        not isinstance(logits, list)
        or not logits
        or not all(_is_number(v) and math.isfinite(v) for v in logits)
    ):
        raise ValueError(f"{path}: calibration {key} must be finite numbers, at least one")
    if any(a > b for a, b in zip(logits[:-1], logits[1:], strict=True)):
        raise ValueError(f"{path}: calibration {key} must be sorted ascending")
    return logits


def _check_probability(cal: dict[str, Any], real_logits: list[float], path: Path) -> None:
    """The optional Platt map: present with its fakes' logits, and the fit of the stored logits."""
    has = [k for k in ("val_fake_logits", "probability") if k in cal]
    if not has:
        return
    if len(has) == 1:
        raise ValueError(
            f"{path}: calibration has {has[0]!r} without "
            f"{'probability' if has[0] == 'val_fake_logits' else 'val_fake_logits'!r}: the map "
            "to P(fake) and the validation fakes' logits it was fit on come together"
        )
    fakes, prob = (
        _sorted_logits(cal["val_fake_logits"], "val_fake_logits", path),
        cal["probability"],
    )
    if (
        not isinstance(prob, dict)
        or sorted(prob) != ["intercept", "slope"]
        or not all(_is_number(v) and math.isfinite(v) for v in prob.values())
    ):
        raise ValueError(
            f"{path}: calibration probability must be {{'slope', 'intercept'}}, finite numbers; "
            f"got {prob!r}"
        )
    try:
        expected = platt_scaling(real_logits, fakes)
    except ValueError as e:
        raise ValueError(f"{path}: calibration probability cannot be refit: {e}") from None
    # Newton's method to a gradient of 1e-12 on a strictly convex two-parameter loss: refits
    # on other machines (other BLAS summation orders) agree to ~1e-10; 1e-6 only catches edits
    for k in ("slope", "intercept"):
        if not math.isclose(prob[k], getattr(expected, k), rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(
                f"{path}: calibration probability {k} {prob[k]!r} is not the Platt fit of its "
                f"validation logits ({getattr(expected, k)!r}); the file was edited"
            )


def _check_sidecar(path: Path, header: dict[str, Any]) -> None:
    sidecar = sidecar_path(path)
    try:
        # read as the checkpoint is (one open file; a FIFO refused, not waited on)
        raw = read_regular_bytes(sidecar, "the checkpoint's sidecar")
    except FileNotFoundError:
        return  # the header inside the .safetensors file is the checkpoint; the sidecar is a copy
    try:
        text = strict_json.loads(raw.decode("utf-8"), object_pairs_hook=strict_json.unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError among them
        raise ValueError(
            f"{sidecar}: the checkpoint's sidecar is not readable JSON ({e})"
        ) from None
    if text != header:
        keys = sorted(
            k
            for k in set(text) | set(header)
            if not isinstance(text, dict) or text.get(k) != header.get(k)
        )
        shared = [p.name for p in sharing_sidecar(path)]
        also = f" (it is also the sidecar of {', '.join(shared)}: saved last?)" if shared else ""
        raise ValueError(
            f"{sidecar} differs from the header inside {path.name} (keys {keys}); one of them was "
            f"edited{also}: restore it or delete the sidecar"
        )


def _few(names: Sequence[str], shown: int = 5) -> str:
    """At most ``shown`` names and how many more: a whole state dict's names are no message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{list(names[:shown])}{more}" if names else "none"


def _check_tensors(saved: dict[str, Tensor], expected: dict[str, Tensor], where: str) -> None:
    if set(saved) != set(expected):
        extra, lacking = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
        raise ValueError(
            f"{where}: tensors do not fit the architecture (unexpected {_few(extra)}, missing "
            f"{_few(lacking)}): another architecture or arch_kwargs than the model's?"
        )
    for k, v in expected.items():
        s = saved[k]
        if tuple(s.shape) != tuple(v.shape) or s.dtype != v.dtype:
            raise ValueError(
                f"{where}: tensor {k!r} is {s.dtype} {tuple(s.shape)}, the architecture expects "
                f"{v.dtype} {tuple(v.shape)}"
            )
        if s.is_floating_point() and not bool(s.isfinite().all()):
            raise ValueError(f"{where}: tensor {k!r} holds non-finite values")
