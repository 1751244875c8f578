import pytest
import torch

from assocmem.forensic.masks import FrequencyMasker, PixelMasker
from assocmem.forensic.models import (
    CNNEncoder,
    EncoderDetector,
    F3Net,
    FADHead,
    LinearHead,
    MaskedPretrainer,
    MesoNet4,
    SmallCNN,
    ViTEncoder,
    dct_matrix,
    fine_tune,
    linear_probe,
    mlp_probe,
)


def n_params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


ENCODERS = {"vit": ViTEncoder, "cnn": CNNEncoder}
BASELINES = {"mesonet4": MesoNet4, "f3net": F3Net, "smallcnn": SmallCNN}


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_shapes_and_size(name):
    enc = ENCODERS[name]()
    x = torch.rand(4, 3, 32, 32)
    z = enc(x)
    assert z.shape == (4, enc.embed_dim)
    fmap = enc.feature_map(x)
    assert fmap.shape == (4, enc.feature_dim, 32 // enc.stride, 32 // enc.stride)
    assert 50_000 <= n_params(enc) <= 500_000


def test_vit_tokens_and_64px():
    enc = ViTEncoder()
    tokens, pooled = enc.forward_features(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 64, 64)
    torch.testing.assert_close(pooled, tokens.mean(1))
    assert ViTEncoder(image_size=64, patch=8)(torch.rand(2, 3, 64, 64)).shape == (2, 64)


@pytest.mark.parametrize(("name", "other"), [("mesonet4", 64), ("mesonet4", 40), ("f3net", 64)])
def test_a_baseline_names_the_size_it_was_built_for(name, other):
    # F3-Net failed in a matrix product with torch's shapes only; MesoNet-4 raised in its
    # classifier at 64 px and read 40 px images pooled to its 2 x 2 grid without a word
    model = BASELINES[name](image_size=32)
    with pytest.raises(ValueError, match=r"built for 32 x 32 images, got shape \(2, 3, "):
        model(torch.rand(2, 3, other, other))


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("size", [32, 64])
def test_baselines_return_logits(name, size):
    kwargs = {} if name == "smallcnn" else {"image_size": size}
    model = BASELINES[name](**kwargs)
    out = model(torch.rand(3, 3, size, size))
    assert out.shape == (3,)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if size == 32:
        assert 45_000 <= n_params(model) <= 500_000


def test_dct_is_orthonormal_and_fad_all_pass_band_reconstructs():
    d = dct_matrix(16)
    torch.testing.assert_close(d @ d.T, torch.eye(16), atol=1e-5, rtol=0)
    fad = FADHead(16)
    with torch.no_grad():
        fad.learnable.fill_(0.0)  # norm_sigma(0) = 0: the base filters alone
    x = torch.rand(2, 3, 16, 16)
    y = fad(x).reshape(2, 4, 3, 16, 16)
    torch.testing.assert_close(y[:, 3], x, atol=1e-5, rtol=0)  # all-pass band
    torch.testing.assert_close(y[:, :3].sum(1), x, atol=1e-5, rtol=0)  # low + mid + high


def test_linear_probe_freezes_the_encoder():
    enc = CNNEncoder()
    det = linear_probe(enc)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    det.train()
    assert not enc.training
    loss = det(torch.rand(4, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert all(p.grad is not None for p in det.head.parameters())
    assert n_params(det) == n_params(det.head)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_fine_tune_after_a_probe_of_the_same_encoder_trains_the_encoder():
    # the probe froze the encoder in place and freeze=False never undid it: the "full
    # fine-tune" then trained the head alone (0 of the encoder's parameters trainable)
    enc = ViTEncoder()
    linear_probe(enc)
    det = fine_tune(enc)
    det(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.requires_grad and p.grad is not None for p in enc.parameters())


def test_fine_tune_and_mlp_head_train_everything():
    det = fine_tune(ViTEncoder())
    det(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in det.parameters())
    probe = mlp_probe(ViTEncoder())
    assert probe(torch.rand(2, 3, 32, 32)).shape == (2,)
    assert isinstance(EncoderDetector(CNNEncoder(), LinearHead(64), freeze=False).head, LinearHead)


@pytest.mark.parametrize("loss", ["pixel", "freq", "both"])
@pytest.mark.parametrize(
    "masker", [FrequencyMasker("spectral", 0.5), FrequencyMasker("band"), PixelMasker(0.75)]
)
@pytest.mark.parametrize("enc", ["vit", "cnn"])
def test_pretrainer_loss_and_grads(loss, masker, enc):
    model = MaskedPretrainer(ENCODERS[enc](), masker, loss=loss)
    value = model.loss(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_pretrainer_perfect_prediction_has_zero_loss():
    model = MaskedPretrainer(CNNEncoder(), FrequencyMasker("band"), loss="both")
    batch = model.masker(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    model.reconstruct = lambda b: model.masker.project(b.removed, b)
    assert float(model.loss_on(batch)) < 1e-5


def test_pretrainer_rejects_unknown_loss():
    with pytest.raises(ValueError, match="loss"):
        MaskedPretrainer(CNNEncoder(), PixelMasker(), loss="l3")
