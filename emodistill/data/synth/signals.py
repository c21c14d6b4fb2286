"""Smooth random signals shared by the affect, scene and voice simulators.

Ornstein-Uhlenbeck drifts for slowly wandering quantities and raised-cosine ramps for
episode envelopes; all draw from a caller's NumPy generator so a seed fixes everything.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


def ou_process(rng: np.random.Generator, n: int, std: float, tau: float, dims: int = 1) -> np.ndarray:
    """A stationary Ornstein-Uhlenbeck path (n, dims): marginal `std`, time constant `tau` steps."""
    phi = float(np.exp(-1.0 / max(tau, 1e-6)))
    innovations = rng.standard_normal((n, dims))  # (n, dims)
    start = rng.standard_normal(dims) * std  # drawn from the stationary law, so no burn-in
    # x_t = phi x_{t-1} + sqrt(1 - phi^2) std e_t, filtered along time in one call.
    path = lfilter([np.sqrt(1.0 - phi**2) * std], [1.0, -phi], innovations, axis=0, zi=(phi * start)[None])[0]
    return path


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a raised-cosine ramp between: C1-smooth onsets and offsets."""
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def coherent_normals(rng: np.random.Generator, n: int, rho: float, dims: int = 1) -> np.ndarray:
    """Standard normals (n, dims), marginally N(0, 1), correlated rho from one step to the next.

    An AR(1) Gaussian copula: each frame's marginal law is exact while the noise of consecutive
    frames agrees, as a human annotator's labels do.
    """
    return ou_process(rng, n, 1.0, -1.0 / np.log(rho) if rho > 0 else 1e-6, dims)
