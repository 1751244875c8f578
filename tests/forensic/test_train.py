"""End-to-end smoke on a synthetic trace: fakes = smooth images + a faint high-frequency pattern."""

import math
import warnings
from functools import partial

import pytest
import torch

from assocmem import MemoryOptimizer
from assocmem.forensic.masks import FrequencyMasker
from assocmem.forensic.metrics import detection_metrics, per_family_metrics
from assocmem.forensic.models import (
    CNNEncoder,
    MaskedPretrainer,
    MesoNet4,
    SmallCNN,
    ViTEncoder,
    linear_probe,
)
from assocmem.forensic.train import fake_probability, pretrain, score, train_detector

SIZE = 32


def synthetic(n, seed):
    """Half reals (blurred noise), half fakes: the reals of a matching set + a Nyquist-rate trace,
    a checkerboard ``(-1)^(i+j)`` or vertical stripes ``(-1)^j``, so only the trace differs."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=g)
    images = torch.nn.functional.interpolate(low, size=SIZE, mode="bilinear").clamp(0.1, 0.9)
    i = torch.arange(SIZE)
    checker = ((-1.0) ** (i[:, None] + i[None, :])).expand(3, SIZE, SIZE)
    stripes = ((-1.0) ** i[None, :]).expand(3, SIZE, SIZE)
    labels = torch.zeros(n, dtype=torch.long)
    families = ["real"] * n
    for k in range(n // 2, n):
        trace = checker if k % 2 == 0 else stripes
        images[k] = images[k] + 0.08 * trace
        labels[k] = 1
        families[k] = "checker" if k % 2 == 0 else "stripes"
    return images.clamp(0, 1), labels, families


def adam(lr):
    return partial(torch.optim.Adam, lr=lr)


def test_pretrain_then_linear_probe_beats_chance():
    x, y, _ = synthetic(192, seed=0)
    xv, yv, fam_v = synthetic(128, seed=1)
    torch.manual_seed(0)
    encoder = ViTEncoder()
    pre = MaskedPretrainer(encoder, FrequencyMasker("spectral", 0.5), loss="both")
    records = []
    res = pretrain(
        pre, x, xv, adam(3e-3), steps=15, batch_size=32,
        generator=torch.Generator().manual_seed(0), eval_every=5, log=records.append,
    )  # fmt: skip
    assert res.status == "ok" and res.steps == 15 and records == res.history
    vals = [r["val_loss"] for r in res.history if "val_loss" in r]
    assert res.history[0]["step"] == 0 and len(vals) == 4
    assert vals[-1] < vals[0]
    assert {"step", "time", "train_loss"} <= set(res.history[-1])

    det = linear_probe(encoder)
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    res = train_detector(
        det, x, y, xv, yv, adam(1e-2), steps=40, batch_size=32,
        generator=torch.Generator().manual_seed(1), eval_every=20,
    )  # fmt: skip
    assert res.status == "ok"
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.state_dict().items())
    p = score(det, xv)
    assert p.shape == (128,) and ((p >= 0) & (p <= 1)).all()
    fam = per_family_metrics(yv, p, fam_v)
    assert set(fam) == {"checker", "stripes", "mean"}
    assert fam["mean"]["auc"] > 0.75, fam


def test_training_is_deterministic_and_works_with_memory_optimizer():
    x, y, _ = synthetic(64, seed=2)

    def run():
        torch.manual_seed(3)
        model = SmallCNN()
        return train_detector(
            model, x, y, x, y, partial(MemoryOptimizer, memory="adam", lr=3e-3), steps=6,
            batch_size=16, generator=torch.Generator().manual_seed(4), eval_every=3,
        )  # fmt: skip

    a, b = run(), run()
    assert a.status == "ok"
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b.history]
    assert math.isfinite(a.history[-1]["val_auc"])


class _Exploding(torch.optim.SGD):
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.fill_(math.nan)


def test_divergence_stops_cleanly():
    x, y, _ = synthetic(32, seed=3)
    res = train_detector(
        SmallCNN(), x, y, x, y, partial(_Exploding, lr=0.1), steps=20, batch_size=8,
        eval_every=100,
    )  # fmt: skip
    assert res.status == "diverged" and res.diverged
    assert res.steps == 1 and "step 2" in res.message
    assert not math.isfinite(res.history[-1]["train_loss"])


def test_a_one_image_tail_joins_the_batch_before_it():
    """65 images in batches of 64 left a batch of one at each epoch's end: a BatchNorm1d
    model raised mid-run (the result and history lost), other norms trained on one image's
    batch statistics."""
    from assocmem.forensic.models.npr import NPRWithSpectrum
    from assocmem.forensic.train import batch_indices

    sizes = [len(b) for _, b in zip(range(4), batch_indices(65, 64, None), strict=False)]
    assert sizes == [65, 65, 65, 65]
    assert [len(b) for _, b in zip(range(3), batch_indices(9, 4, None), strict=False)] == [4, 5, 4]
    assert [len(b) for _, b in zip(range(2), batch_indices(3, 1, None), strict=False)] == [1, 1]
    assert [len(b) for _, b in zip(range(2), batch_indices(1, 4, None), strict=False)] == [1, 1]
    x, y, _ = synthetic(66, seed=5)
    torch.manual_seed(0)
    res = train_detector(NPRWithSpectrum(), x[:65], y[:65], x, y, adam(1e-3), steps=3,
                         batch_size=32, eval_every=3)  # fmt: skip
    assert res.status == "ok" and res.steps == 3


def test_baseline_trained_from_scratch_learns_the_trace():
    x, y, _ = synthetic(128, seed=4)
    xv, yv, _ = synthetic(64, seed=5)
    torch.manual_seed(0)
    model = MesoNet4()
    res = train_detector(model, x, y, xv, yv, adam(3e-3), steps=25, batch_size=32, eval_every=25)
    assert res.status == "ok"
    assert detection_metrics(yv, score(model, xv))["auc"] > 0.8


def test_loaders_are_accepted_and_match_tensor_batches():
    from torch.utils.data import DataLoader, TensorDataset

    x, y, _ = synthetic(32, seed=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    torch.manual_seed(0)
    res = train_detector(SmallCNN(), loader, None, x, y, adam(1e-3), steps=5, eval_every=5)
    assert res.status == "ok" and res.steps == 5
    torch.manual_seed(0)
    pre = MaskedPretrainer(ViTEncoder(), FrequencyMasker("band"), loss="pixel")
    res = pretrain(pre, loader, x[:8], adam(1e-3), steps=5, eval_every=5)
    assert res.status == "ok" and math.isfinite(res.final_val_loss)


def test_lbfgs_goes_through_a_closure():
    x, y, _ = synthetic(32, seed=7)
    torch.manual_seed(0)
    res = train_detector(
        SmallCNN(), x, y, x, y, partial(torch.optim.LBFGS, lr=0.1, max_iter=3), steps=2,
        batch_size=16, eval_every=2,
    )  # fmt: skip
    assert res.status == "ok" and res.steps == 2


def test_pretraining_and_detector_training_hand_their_weight_average_to_the_loop():
    # The same runs with and without average: the loop's average is what is evaluated and
    # kept, so the evaluations and the final weights differ, and the frozen encoder of a probe
    # stays frozen (only trainable parameters are averaged into it, buffers copied back).
    x, y, _ = synthetic(64, seed=5)

    def pretrained(average):
        torch.manual_seed(0)
        pre = MaskedPretrainer(ViTEncoder(), FrequencyMasker("spectral", 0.5), loss="both")
        res = pretrain(
            pre, x, x, adam(3e-3), steps=6, batch_size=16,
            generator=torch.Generator().manual_seed(0), eval_every=3, average=average,
        )  # fmt: skip
        return res, pre

    (plain, raw), (averaged, avg) = pretrained(None), pretrained(0.9)
    assert plain.history[0]["val_loss"] == averaged.history[0]["val_loss"]  # step 0: same model
    assert plain.history[-1]["val_loss"] != averaged.history[-1]["val_loss"]
    assert any(
        not torch.equal(a, b) for a, b in zip(raw.parameters(), avg.parameters(), strict=True)
    )

    encoder = ViTEncoder()
    det = linear_probe(encoder)
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    res = train_detector(
        det, x, y, x, y, adam(1e-2), steps=6, batch_size=16,
        generator=torch.Generator().manual_seed(1), eval_every=3, average=0.9,
    )  # fmt: skip
    assert res.status == "ok"
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.state_dict().items())


def test_fake_probability_keeps_the_logits_ranking():
    # logits 1e-7 apart near 0 (a quarter of the slope times half an ulp of 0.5 rounds them
    # together in float32) and confident ones above 16.6 (float32 sigmoid gives exactly 1)
    z = torch.tensor([0.0, 1e-7, 2e-7, 3e-7, 17.0, 18.0, 19.0, 20.0])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert torch.sigmoid(z).unique().numel() < z.numel()  # what float32 would do
    p = fake_probability(z)
    assert p.dtype == torch.float64 and p.unique().numel() == z.numel()
    assert torch.equal(p.argsort(), z.argsort())
    from_logits = detection_metrics(labels, z, from_logits=True)["auc"]
    assert detection_metrics(labels, p)["auc"] == from_logits


def test_training_inputs_a_detector_cannot_read_are_refused():
    import pytest

    x, y, _ = synthetic(16, seed=0)
    xv, yv, _ = synthetic(8, seed=1)

    def train(**changes):
        kw = dict(train_images=x, train_labels=y, val_images=xv, val_labels=yv, batch_size=8)
        kw.update(changes)
        train_detector(SmallCNN(), optimizer_factory=adam(1e-3), steps=1, **kw)

    # uint8 pixels: NPR's residual wraps around (0 - 5 = 251) and training ran on that
    with pytest.raises(ValueError, match="train_images must be floating point"):
        train(train_images=(x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="val_images must be floating point"):
        train(val_images=(xv * 255).to(torch.uint8))
    # family codes as labels: a cross-entropy against 2, 5, 7 ran
    with pytest.raises(ValueError, match=r"train_labels must be 0 \(real\) or 1"):
        train(train_labels=y * 3)
    with pytest.raises(ValueError, match="validation set is empty"):
        train(val_images=xv[:0], val_labels=yv[:0])
    with pytest.raises(ValueError, match="batch_size"):
        train(batch_size=8.0)
    with pytest.raises(ValueError, match="one class only"):
        train(train_images=x[:8], train_labels=y[:8])  # the reals of synthetic() alone
    # NaN/inf pixels ended the run as "diverged" with the untrained weights, blaming the loss;
    # 0-255 floats trained without a word (scoring refuses and warns of the same tensors)
    spoiled = x.clone()
    spoiled[3, 0, 5, 5] = math.inf
    with pytest.raises(ValueError, match="train_images hold NaN or inf pixels"):
        train(train_images=spoiled)
    with pytest.raises(ValueError, match="val_images hold NaN or inf pixels"):
        train(val_images=torch.where(xv > 0.5, math.nan, xv))
    with pytest.warns(UserWarning, match=r"train_images should be in \[0, 1\]"):
        train(train_images=x * 255)


def test_a_loaders_batches_are_checked_as_a_tensor_set_is():
    """A DataLoader's batches went to the loss unchecked: uint8 pixels trained at 255 times
    the scale, labels 0/2 trained a cross-entropy against 2, reals alone trained to "ok"."""
    import pytest
    from torch.utils.data import DataLoader, TensorDataset

    x, y, _ = synthetic(16, seed=0)
    xv, yv, _ = synthetic(8, seed=1)

    def train(images, labels, steps=1):
        loader = DataLoader(TensorDataset(images, labels), batch_size=8)
        return train_detector(SmallCNN(), loader, None, xv, yv, adam(1e-3), steps=steps,
                              eval_every=2)  # fmt: skip

    with pytest.raises(ValueError, match="train_images must be floating point"):
        train((x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match=r"train_labels must be 0 \(real\) or 1"):
        train(x, torch.where(torch.arange(len(y)) == 0, 2, y))  # a family code among them
    with pytest.warns(UserWarning, match="holds real images only"):
        train(x[:8], y[:8], steps=2)
    spoiled = x.clone()
    spoiled[0, 1, 2, 2] = math.nan
    with pytest.raises(ValueError, match="train batch images hold NaN or inf pixels"):
        train(spoiled, y)


def test_a_float64_detector_trains_and_scores_on_float32_images():
    # the inputs follow the model's dtype ("Input type (float) and bias type (double)")
    x, y, _ = synthetic(16, seed=0)
    xv, yv, _ = synthetic(8, seed=1)
    torch.manual_seed(0)
    model = SmallCNN().double()
    result = train_detector(model, x, y, xv, yv, adam(1e-3), steps=2, batch_size=8)
    assert result.status == "ok"
    assert score(model, xv).dtype == torch.float64 and len(score(model, xv)) == 8


def test_pretraining_refuses_images_it_would_read_wrongly():
    import pytest

    torch.manual_seed(0)
    pre = MaskedPretrainer(ViTEncoder(), FrequencyMasker("spectral", 0.5), loss="both")
    x = torch.rand(8, 3, SIZE, SIZE)

    def run(train, val):
        return pretrain(pre, train, val, adam(1e-3), steps=1, batch_size=4)

    with pytest.raises(ValueError, match="floating point"):
        run((x * 255).to(torch.uint8), x)  # trained at 255x the scale, status "ok"
    with pytest.raises(ValueError, match=r"non-empty batch \(b, 3, H, W\)"):
        run(x, x[:0])  # a division by zero after the first evaluation
    with pytest.raises(ValueError, match=r"\(b, 3, H, W\)"):
        run(x[:, :1], x[:, :1])  # one channel broadcast against a 3-channel prediction
    # an image of another size with as many tokens: read on another grid's positions
    with pytest.raises(ValueError, match="built for"):
        ViTEncoder()(torch.rand(2, 3, SIZE * 2, SIZE // 2))
    # as train_detector: a NaN pixel ended the run as "diverged" blaming the optimizer, 0-255
    # floats pretrained without a word
    spoiled = x.clone()
    spoiled[1, 2, 3, 4] = math.nan
    with pytest.raises(ValueError, match="train_images hold NaN or inf pixels"):
        run(spoiled, x)
    with pytest.raises(ValueError, match="val_images hold NaN or inf pixels"):
        run(x, spoiled)
    with pytest.warns(UserWarning, match=r"train_images should be in \[0, 1\]"):
        run(x * 255, x)
    with pytest.raises(ValueError, match="train batch images hold NaN or inf pixels"):
        run([spoiled[:4], spoiled[4:]], x)  # a loader's batches
    cnn = MaskedPretrainer(CNNEncoder(), FrequencyMasker("spectral", 0.5), loss="both")
    odd = torch.rand(4, 3, 30, 30)  # stride 8: a broadcast error ("size 32 vs 30") before
    with pytest.raises(ValueError, match="multiples of 8"):
        pretrain(cnn, odd, odd, adam(1e-3), steps=1, batch_size=4)


def test_a_float64_pretrainer_takes_float32_images():
    # "mat1 and mat2 must have the same dtype": the images follow the model's dtype, as in
    # train_detector
    torch.manual_seed(0)
    pre = MaskedPretrainer(ViTEncoder(), FrequencyMasker("spectral", 0.5), loss="both").double()
    x = torch.rand(8, 3, SIZE, SIZE)
    result = pretrain(pre, x, x, adam(1e-3), steps=2, batch_size=4, eval_every=1)
    assert result.status == "ok" and math.isfinite(result.best_val_loss)


def test_pretraining_val_loss_is_the_same_whatever_the_batch_size():
    # a band mask's loss is normalised per chunk: evaluation chunked by the batch size (above
    # 256) gave another val_loss for the same weights
    torch.manual_seed(0)
    pre = MaskedPretrainer(ViTEncoder(), FrequencyMasker("band"), loss="both")
    x = torch.rand(300, 3, SIZE, SIZE)
    losses = [
        pretrain(pre, x, x, adam(0.0), steps=1, batch_size=b, eval_every=1).best_val_loss
        for b in (8, 300)
    ]
    assert losses[0] == losses[1]


def test_scoring_refuses_non_finite_pixels_warns_of_0_255_and_takes_no_images():
    # a NaN pixel gave a NaN score (never flagged, skewing every rate); floats on 0-255, the
    # common slip, were scored at 255 times the scale without a word; an empty set failed in
    # torch.cat
    from assocmem.forensic.models.temporal import TemporalDetector
    from assocmem.forensic.train import logits, score

    torch.manual_seed(0)
    image_model, clip_model = SmallCNN(), TemporalDetector()
    images, clips = torch.rand(4, 3, 32, 32), torch.rand(2, 3, 3, 16, 16)
    for model, x in ((image_model, images), (clip_model, clips)):
        assert score(model, x).shape == (len(x),)
        bad = x.clone()
        bad.view(-1)[5] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            score(model, bad)
        with pytest.warns(UserWarning, match=r"should be in \[0, 1\], got values in \[.*, 25"):
            score(model, x * 255)
        assert logits(model, x[:0]).shape == (0,)
    with warnings.catch_warnings():  # resampling's rounding overshoot is said nothing of
        warnings.simplefilter("error")
        assert torch.isfinite(score(image_model, images.clamp(0, 1) * (1 + 1e-5))).all()
    with pytest.raises(ValueError, match="frames of at least 1 x 1"):
        clip_model(torch.rand(1, 2, 3, 0, 0))
