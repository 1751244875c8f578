"""Encoders, masked-reconstruction pretraining, detection heads, supervised baselines, and a
blind-spot pixel predictor of real photos (a training-free prior)."""

from assocmem.forensic.models.baselines import F3Net, FADHead, MesoNet4, SmallCNN, dct_matrix
from assocmem.forensic.models.blind_spot import BlindSpotPredictor, coding_surprise, fit_blind_spot
from assocmem.forensic.models.cnn import CNNEncoder
from assocmem.forensic.models.heads import (
    EncoderDetector,
    LinearHead,
    MLPHead,
    fine_tune,
    linear_probe,
    mlp_probe,
)
from assocmem.forensic.models.npr import NPR, neighbouring_pixel_residual
from assocmem.forensic.models.pretrain import MaskedPretrainer, PixelDecoder
from assocmem.forensic.models.vit import ViTEncoder

__all__ = [
    "BlindSpotPredictor",
    "CNNEncoder",
    "EncoderDetector",
    "F3Net",
    "FADHead",
    "LinearHead",
    "MLPHead",
    "MaskedPretrainer",
    "MesoNet4",
    "NPR",
    "PixelDecoder",
    "SmallCNN",
    "ViTEncoder",
    "coding_surprise",
    "dct_matrix",
    "fit_blind_spot",
    "fine_tune",
    "linear_probe",
    "mlp_probe",
    "neighbouring_pixel_residual",
]
