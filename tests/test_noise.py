"""calibration.noise: the rule that decides which activations stay float."""

from __future__ import annotations

import math

import numpy as np

from calibration.noise import MAX_NOISE_TO_SIGNAL, ChannelMoments


def _moments(stds: tuple[float, ...], axis: int) -> ChannelMoments:
    rng = np.random.default_rng(0)
    moments = ChannelMoments(channel_axis=axis)
    for _ in range(8):
        values = rng.standard_normal((1, 8, 8, len(stds))) * np.array(stds)
        moments.add(values if axis == -1 else np.moveaxis(values, -1, 1))
    return moments


def test_a_small_channel_beside_a_large_one_is_noisy_in_either_layout() -> None:
    for axis in (1, -1):
        m = _moments((30.0, 0.05), axis)
        # Range ±90 -> step 0.7, noise 0.04: 16x the small channel's variance (capped at 1), 5e-5 of the other.
        ratio = m.noise_to_signal(-90.0, 90.0)
        assert math.isclose(ratio, 0.5, rel_tol=1e-3)
        assert ratio > MAX_NOISE_TO_SIGNAL


def test_equal_channels_are_quiet() -> None:
    ratio = _moments((30.0, 30.0), 1).noise_to_signal(-90.0, 90.0)
    assert ratio < MAX_NOISE_TO_SIGNAL
    # The expected value: (180 / 255)^2 / 12 / 900.
    assert math.isclose(ratio, (180 / 255) ** 2 / 12 / 900, rel_tol=0.1)


def test_non_finite_values_are_never_noisy() -> None:
    m = ChannelMoments(channel_axis=1)
    m.add(np.full((1, 2, 4, 4), -np.inf, np.float32))
    ratio = m.noise_to_signal(-np.inf, 0.0)
    assert math.isnan(ratio) and not ratio > MAX_NOISE_TO_SIGNAL
