"""Clip detectors: a per-frame CNN, then either a stacked RNN over frames or a mean over frames.

:class:`TemporalDetector` follows Güera & Delp, "Deepfake Video Detection Using Recurrent Neural
Networks" (AVSS 2018): a CNN encodes every frame on its own (InceptionV3 in the paper, a small
NPR-style CNN here, :class:`FrameCNN`), a stacked LSTM/GRU reads the sequence of frame features,
and a linear layer on its last output gives the clip's logit. The recurrence can see how a
frame's trace changes from frame to frame (a generator's per-frame flicker, a pasted region that
jitters), which no single frame shows.

:class:`FrameDetector` is the baseline that shows what time adds: the same per-frame CNN with a
linear logit per frame, and the clip's logit the *mean* of its frames' logits (order-blind).

Shapes: clips ``(B, T, C, H, W)`` -> logits ``(B,)``. The time axis comes second, as in the
benchmark's arrays; the ``(B, C, T, H, W)`` layout of 3-D convolutions is refused with a hint.
"""

from __future__ import annotations

from torch import Tensor, nn

from assocmem.forensic.models.cnn import CNNEncoder
from assocmem.forensic.models.npr import neighbouring_pixel_residual

__all__ = ["FrameCNN", "FrameDetector", "TemporalDetector", "check_clips"]


def check_clips(x: Tensor, channels: int) -> None:
    """Raise ``ValueError`` naming the expected layout unless ``x`` is ``(B, T, C, H, W)``
    floating clips (pixels in [0, 1], as the image benchmark's), ``B, T >= 1``."""
    shape = tuple(x.shape)
    if x.ndim != 5:
        hint = (
            " (one clip (T, C, H, W)? x.unsqueeze(0) makes a batch of one; a batch of images "
            "(B, C, H, W)? x.unsqueeze(1) makes one-frame clips)"
            if x.ndim == 4
            else ""
        )
        raise ValueError(f"expected clips (B, T, C, H, W), got shape {shape}{hint}")
    if not x.is_floating_point():
        # uint8 pixels would wrap around in the residual's subtraction
        raise ValueError(
            f"clips must be floating, pixels in [0, 1] (x.float() / 255), got {x.dtype}"
        )
    if shape[0] < 1:
        raise ValueError(f"expected at least one clip, got shape {shape}")
    # (B, C, T, H, W) is caught by its channel axis in third place, except at T == C (3
    # frames), where the two layouts share a shape: such clips are read as (B, T, C, H, W)
    if shape[2] != channels:
        hint = (
            " (this looks like (B, C, T, H, W), the Conv3d layout: pass x.transpose(1, 2))"
            if shape[1] == channels
            else ""
        )
        raise ValueError(f"expected clips (B, T, C={channels}, H, W), got shape {shape}{hint}")
    if shape[1] < 1:
        raise ValueError(f"expected at least one frame per clip, got shape {shape}")
    if shape[3] < 1 or shape[4] < 1:
        raise ValueError(f"expected frames of at least 1 x 1 pixels, got shape {shape}")


class FrameCNN(nn.Module):
    """One frame -> an embedding: ``(N, C, H, W) -> (N, embed_dim)``.

    ``residual=True`` feeds the CNN the neighbouring-pixel residual (NPR, ``models/npr.py``)
    scaled by ``gain``, as the image detector ``npr_bn`` does; ``False`` feeds it the pixels.
    ``norm="batch"`` (default) lets the residual's amplitude reach the features (see ``NPR``).
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (8, 16, 32),
        channels: int = 3,
        *,
        residual: bool = True,
        gain: float = 10.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.encoder = CNNEncoder(tuple(widths), channels=channels, groups=4, norm=norm)
        self.residual, self.gain, self.channels = residual, gain, channels
        self.embed_dim = self.encoder.embed_dim

    def forward(self, frames: Tensor) -> Tensor:
        if self.residual:
            frames = self.gain * neighbouring_pixel_residual(frames)
        return self.encoder(frames)


def _per_frame(cnn: FrameCNN, clips: Tensor) -> Tensor:
    """``(B, T, C, H, W) -> (B, T, embed_dim)``: the CNN on all B * T frames at once."""
    check_clips(clips, cnn.channels)
    b, t = clips.shape[:2]
    return cnn(clips.flatten(0, 1)).view(b, t, -1)


class TemporalDetector(nn.Module):
    """Per-frame CNN -> stacked GRU/LSTM over frames -> linear logit on the last output.

    Args:
        frame_cnn: the per-frame encoder (default: :class:`FrameCNN`).
        hidden: the recurrent state size; layers: how many recurrent layers are stacked.
        cell: ``"gru"`` or ``"lstm"``.
    """

    def __init__(
        self,
        frame_cnn: FrameCNN | None = None,
        *,
        hidden: int = 32,
        layers: int = 2,
        cell: str = "gru",
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden and layers must be >= 1, got {hidden}, {layers}")
        self.frame_cnn = frame_cnn if frame_cnn is not None else FrameCNN()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(self.frame_cnn.embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, clips: Tensor) -> Tensor:
        out, _ = self.rnn(_per_frame(self.frame_cnn, clips))  # (B, T, hidden)
        return self.fc(out[:, -1]).squeeze(-1)


class FrameDetector(nn.Module):
    """The frame-only baseline: per-frame CNN -> a logit per frame -> their mean over time."""

    def __init__(self, frame_cnn: FrameCNN | None = None) -> None:
        super().__init__()
        self.frame_cnn = frame_cnn if frame_cnn is not None else FrameCNN()
        self.fc = nn.Linear(self.frame_cnn.embed_dim, 1)

    def frame_logits(self, clips: Tensor) -> Tensor:
        """``(B, T)``: each frame's logit, computed from that frame alone."""
        return self.fc(_per_frame(self.frame_cnn, clips)).squeeze(-1)

    def forward(self, clips: Tensor) -> Tensor:
        return self.frame_logits(clips).mean(dim=1)
