"""Helpers that turn dense-output formulas into the polynomial matrix of ``ButcherTableau``."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial as P


def nested_to_matrix(terms: list[tuple[list[float], np.ndarray]], degree: int) -> np.ndarray:
    """Combine ``Σ_m basis_m(θ) w_m`` into the ``(S, degree)`` matrix of θ^1..θ^degree.

    Args:
        terms: Pairs ``(basis, weights)``: ``basis`` are the coefficients of a polynomial in θ
            (lowest power first, with a zero constant term) and ``weights`` a length-``S``
            vector saying which combination of ``h k_j`` multiplies it.
        degree: Highest power of θ.
    """
    num_stages = len(terms[0][1])
    out = np.zeros((num_stages, degree))
    for basis, weights in terms:
        basis = np.trim_zeros(np.asarray(basis, dtype=np.float64), "b")
        if len(basis) == 0:
            continue
        if basis[0] != 0:
            raise ValueError("dense-output basis functions must vanish at θ = 0")
        if len(basis) - 1 > degree:
            raise ValueError("basis degree exceeds `degree`")
        for p in range(1, len(basis)):
            out[:, p - 1] += basis[p] * np.asarray(weights, dtype=np.float64)
    return out


def theta_power_basis(k: int, m: int) -> np.ndarray:
    """Coefficients of θ^k (1-θ)^m, lowest power first."""
    return P.polymul(P.polypow([0.0, 1.0], k), P.polypow([1.0, -1.0], m))
