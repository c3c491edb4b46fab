"""Bogacki-Shampine 3(2) pair."""

from __future__ import annotations

import numpy as np

from ._base import AbstractAdaptiveSolver, ButcherTableau, hermite_interp

_b = np.array([2 / 9, 1 / 3, 4 / 9, 0.0])
_bhat = np.array([7 / 24, 1 / 4, 1 / 3, 1 / 8])

_bosh3 = ButcherTableau(
    name="Bosh3",
    c=[0.0, 1 / 2, 3 / 4, 1.0],
    a=[
        [0.0, 0.0, 0.0, 0.0],
        [1 / 2, 0.0, 0.0, 0.0],
        [0.0, 3 / 4, 0.0, 0.0],
        [2 / 9, 1 / 3, 4 / 9, 0.0],
    ],
    b=_b,
    b_err=_b - _bhat,
    order=3,
    error_order=2,
    fsal=True,
    interp=hermite_interp(_b, f1_index=3, num_total=4),
    interp_order=3,
)


class Bosh3(AbstractAdaptiveSolver):
    """Bogacki-Shampine 3(2) method with FSAL and cubic Hermite dense output.

    Three new evaluations per step. Good for loose tolerances (e.g. ``rtol=1e-3``).

    Reference: P. Bogacki and L. F. Shampine, "A 3(2) pair of Runge-Kutta formulas",
    Appl. Math. Lett. 2(4), 1989.
    """

    tableau = _bosh3
