"""Which activations 8-bit rounding drowns: noise power against each channel's own variance.

A per-tensor 8-bit grid over the range [lo, hi] adds rounding noise of power step^2 / 12 to every
channel, step = (hi - lo) / 255. After batch norm is folded into the convolutions, SiLU outputs hold
channels of standard deviation 0.1 beside channels at 100: against the small ones the noise is the
signal. Both exporters keep such tensors float (``MAX_NOISE_TO_SIGNAL``).
"""

from __future__ import annotations

import numpy as np

#: An activation stays float when its 8-bit rounding noise exceeds this share of its channels' variance
#: (mean over channels): a signal-to-quantization-noise ratio under 30 dB.
MAX_NOISE_TO_SIGNAL = 1e-3


class ChannelMoments:
    """Running per-channel mean and mean square of one activation tensor over calibration images.

    Args:
        channel_axis: 1 for NCHW (ONNX), -1 for NHWC (TFLite).
    """

    def __init__(self, channel_axis: int) -> None:
        self.channel_axis = channel_axis
        self.images = 0
        self.sum: np.ndarray | float = 0.0
        self.sum_squares: np.ndarray | float = 0.0

    def add(self, values: np.ndarray) -> None:
        """Add one image's tensor (batch of one)."""
        axes = tuple(a for a in range(values.ndim) if a != self.channel_axis % values.ndim)
        self.sum = self.sum + values.mean(axis=axes, dtype=np.float64)
        self.sum_squares = self.sum_squares + np.square(values, dtype=np.float64).mean(axis=axes)
        self.images += 1

    def noise_to_signal(self, lo: float, hi: float) -> float:
        """Mean over channels of rounding-noise power / channel variance on an 8-bit grid over [lo, hi].

        Each channel's term is capped at 1: a constant channel is lost, not infinitely lost. NaN for a
        tensor that holds non-finite values (e.g. the -inf padding in front of a max pooling), which no
        8-bit grid represents anyway: such a tensor is never counted as noisy.
        """
        if self.images == 0:
            raise ValueError("no values were added")
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            noise = ((hi - lo) / 255) ** 2 / 12
            mean = np.asarray(self.sum) / self.images
            variance = np.maximum(np.asarray(self.sum_squares) / self.images - mean**2, 1e-12)
            return float(np.mean(np.minimum(noise / variance, 1.0)))
