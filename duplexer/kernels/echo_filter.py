"""The arithmetic of the echo canceller's adaptive filter and suppressor, per frame and per bin.

The canceller (:mod:`duplexer.kernels.echo_cancel`) is a partitioned-block frequency-domain
adaptive filter (PBFDAF, the "multidelay block filter" of Speex's MDF): the reference is cut into
blocks of ``N`` samples, each block's ``2N``-point spectrum (overlap-save) is kept for the last
``M`` blocks, and the echo estimate is the sum over partitions of filter spectrum times reference
spectrum. The FFTs stay in NumPy (numba has none); the per-bin loops are here, twice:

- ``*_reference``: plain NumPy, the specification;
- ``*_numba``: numba kernels with the same signatures and results (within float rounding),
  ``cache=True`` so only the first process on a machine compiles them.

``tests/test_echo_cancel.py`` checks the two agree on random input.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numba import njit

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]
Backend = Literal["numpy", "numba"]

POWER_FLOOR = 1e-10
"""Added to every power before a division: silence (all zeros) never divides by zero."""


# ------------------------------------------------------------------ NumPy reference


def echo_spectrum_reference(weights: ComplexArray, history: ComplexArray) -> ComplexArray:
    """The echo estimate's spectrum: sum over partitions of weights[m] * history[m] (both (M, K))."""
    out: ComplexArray = (weights * history).sum(axis=0)
    return out


def filter_gradient_reference(history: ComplexArray, error: ComplexArray, step: FloatArray) -> ComplexArray:
    """The unconstrained NLMS gradient per partition: conj(history[m]) * error * step, shape (M, K)."""
    out: ComplexArray = np.conj(history) * (error * step)[None, :]
    return out


def step_sizes_reference(
    error_power: FloatArray,
    echo_power: FloatArray,
    ref_power: FloatArray,
    leak: FloatArray,
    residual_ratio: float,
    partitions: int,
    mu_max: float,
) -> FloatArray:
    """Per-bin normalised step: the optimal NLMS rate (residual echo / error power; the residual is
    the per-bin leak, the share of the echo estimate's power still in the error, times the echo
    estimate) capped at ``mu_max``, divided by the reference power of all partitions.

    Near-end speech raises the error power and not the residual echo, so the rate falls during
    double-talk without a hard freeze."""
    residual = 0.7 * leak * echo_power + 0.3 * residual_ratio * error_power
    mu = np.minimum(residual / (error_power + POWER_FLOOR), mu_max)
    out: FloatArray = mu / (partitions * ref_power + POWER_FLOOR)
    return out


def suppression_gain_reference(
    error_power: FloatArray, residual_power: FloatArray, noise_power: FloatArray, over: float, floor: float
) -> FloatArray:
    """Residual echo suppression gain per bin: spectral subtraction of ``over`` times the estimated
    residual echo, never below ``floor`` and never above 1 (it only attenuates). Bins where the
    residual is below the noise floor keep their level."""
    echo = np.maximum(residual_power - noise_power, 0.0)
    gain = 1.0 - over * echo / (error_power + POWER_FLOOR)
    out: FloatArray = np.clip(gain, floor, 1.0)
    return out


# ------------------------------------------------------------------ numba kernels


@njit(cache=True)
def echo_spectrum_numba(weights: ComplexArray, history: ComplexArray) -> ComplexArray:
    partitions, bins = weights.shape
    out = np.zeros(bins, dtype=np.complex128)
    for m in range(partitions):
        for k in range(bins):
            out[k] += weights[m, k] * history[m, k]
    return out


@njit(cache=True)
def filter_gradient_numba(history: ComplexArray, error: ComplexArray, step: FloatArray) -> ComplexArray:
    partitions, bins = history.shape
    out = np.empty((partitions, bins), dtype=np.complex128)
    for k in range(bins):
        scaled = error[k] * step[k]
        for m in range(partitions):
            out[m, k] = np.conj(history[m, k]) * scaled
    return out


@njit(cache=True)
def step_sizes_numba(
    error_power: FloatArray,
    echo_power: FloatArray,
    ref_power: FloatArray,
    leak: FloatArray,
    residual_ratio: float,
    partitions: int,
    mu_max: float,
) -> FloatArray:
    bins = error_power.shape[0]
    out = np.empty(bins)
    for k in range(bins):
        residual = 0.7 * leak[k] * echo_power[k] + 0.3 * residual_ratio * error_power[k]
        mu = min(residual / (error_power[k] + POWER_FLOOR), mu_max)
        out[k] = mu / (partitions * ref_power[k] + POWER_FLOOR)
    return out


@njit(cache=True)
def suppression_gain_numba(
    error_power: FloatArray, residual_power: FloatArray, noise_power: FloatArray, over: float, floor: float
) -> FloatArray:
    bins = error_power.shape[0]
    out = np.empty(bins)
    for k in range(bins):
        echo = max(residual_power[k] - noise_power[k], 0.0)
        gain = 1.0 - over * echo / (error_power[k] + POWER_FLOOR)
        out[k] = min(max(gain, floor), 1.0)
    return out


KERNELS: dict[str, tuple[Any, Any, Any, Any]] = {
    "numpy": (echo_spectrum_reference, filter_gradient_reference, step_sizes_reference, suppression_gain_reference),
    "numba": (echo_spectrum_numba, filter_gradient_numba, step_sizes_numba, suppression_gain_numba),
}
"""Per backend: (echo_spectrum, filter_gradient, step_sizes, suppression_gain)."""
