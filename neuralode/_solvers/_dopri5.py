"""Dormand-Prince 5(4) pair with Shampine's dense output."""

from __future__ import annotations

import numpy as np

from ._base import AbstractAdaptiveSolver, ButcherTableau
from ._interp import nested_to_matrix, theta_power_basis

_a = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0],
        [1 / 5, 0, 0, 0, 0, 0, 0],
        [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
        [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    ]
)
_b = _a[-1].copy()
_bhat = np.array(
    [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
)

# Shampine's (1986) continuous extension as used in Hairer's DOPRI5 (order 4):
# y(θ) = y0 + θ r2 + θ(1-θ) r3 + θ²(1-θ) r4 + θ²(1-θ)² r5, with r2 = Δ = h Σ b k,
# r3 = h k1 - Δ, r4 = Δ - h k7 - r3, r5 = h Σ d k.
_d = np.array(
    [
        -12715105075 / 11282082432,
        0,
        87487479700 / 32700410799,
        -10690763975 / 1880347072,
        701980252875 / 199316789632,
        -1453857185 / 822651844,
        69997945 / 29380423,
    ]
)
_e1 = np.eye(7)[0]
_e7 = np.eye(7)[6]
_r3 = _e1 - _b
_r4 = _b - _e7 - _r3
_interp = nested_to_matrix(
    [
        (theta_power_basis(1, 0), _b),
        (theta_power_basis(1, 1), _r3),
        (theta_power_basis(2, 1), _r4),
        (theta_power_basis(2, 2), _d),
    ],
    degree=4,
)

_dopri5 = ButcherTableau(
    name="Dopri5",
    c=[0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    a=_a,
    b=_b,
    b_err=_b - _bhat,
    order=5,
    error_order=4,
    fsal=True,
    interp=_interp,
    interp_order=4,
)


class Dopri5(AbstractAdaptiveSolver):
    """Dormand-Prince 5(4) method ("RK45", MATLAB's ``ode45``) with FSAL.

    Six new evaluations per step; dense output of order 4 (Shampine's continuous extension,
    as in Hairer's DOPRI5).

    References: J. R. Dormand and P. J. Prince, "A family of embedded Runge-Kutta formulae",
    J. Comp. Appl. Math. 6(1), 1980. L. F. Shampine, "Some practical Runge-Kutta formulas",
    Math. Comp. 46(173), 1986. Hairer, Nørsett, Wanner, *Solving ODEs I*, section II.6.
    """

    tableau = _dopri5
