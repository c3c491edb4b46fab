"""Tsitouras' 5(4) pair with its own fourth-order dense output."""

from __future__ import annotations

import numpy as np

from ._base import AbstractAdaptiveSolver, ButcherTableau

# Coefficients of Tsitouras (2011), Table 1, rounded from their high-precision decimal
# expansions. Only the first-column simplifying assumption holds: a[i, 0] = c[i] - Σ_{j>0} a[i, j].
_c = np.array([0.0, 0.161, 0.327, 0.9, 0.98002554090450968573, 1.0, 1.0])

_b = np.array(
    [
        0.096460766818065229518,
        0.01,
        0.47988965041449957478,
        1.3790085741037418932,
        -3.2900695154360806799,
        2.3247105240997739824,
        0.0,
    ]
)

_a = np.zeros((7, 7))
_a[1, 0] = 0.161
_a[2, :2] = [-0.0084806554923569885444, 0.33548065549235698854]
_a[3, :3] = [2.8971530571054934321, -6.3594484899750748431, 4.3622954328695814110]
_a[4, :4] = [
    5.3258648284392566044,
    -11.748883564062827878,
    7.4955393428898362083,
    -0.092495066361755249257,
]
_a[5, :5] = [
    5.8614554429464200287,
    -12.920969317847109292,
    8.1593678985761586432,
    -0.071584973281400997225,
    -0.028269050394068382909,
]
_a[6] = _b

# b - b_hat, where b_hat is the embedded fourth-order solution (its last weight is 1/66).
_b_err = np.array(
    [
        0.0017800110522257714434,
        0.00081643445965674690322,
        -0.0078808780102619960103,
        0.14471100717326290754,
        -0.58235716545255522502,
        0.45808210592918694666,
        -1 / 66,
    ]
)

# Tsitouras' continuous extension: y(θ) = y0 + h Σ_i b_i(θ) k_i with quartic b_i(θ) (no constant
# term); row i holds the coefficients of θ, θ², θ³, θ⁴ of b_i(θ), so each row sums to b_i.
_interp = np.array(
    [
        [1.0, -2.7637061972748259113, 2.9132554618219127438, -1.0530884977290216],
        [0.0, 0.13169999999999999727, -0.22339999999999999818, 0.1017],
        [0.0, 3.9302962368947515285, -5.9410338721315047347, 2.490627285651252793],
        [0.0, -12.411077166933676984, 30.338188630282321598, -16.54810288924490272],
        [0.0, 37.509313416511039195, -88.178904894766401101, 47.37952196281928122],
        [0.0, -27.896526289197287806, 65.091894674793671526, -34.87065786149660974],
        [0.0, 1.5, -4.0, 2.5],
    ]
)

_tsit5 = ButcherTableau(
    name="Tsit5",
    c=_c,
    a=_a,
    b=_b,
    b_err=_b_err,
    order=5,
    error_order=4,
    fsal=True,
    interp=_interp,
    interp_order=4,
)


class Tsit5(AbstractAdaptiveSolver):
    """Tsitouras' 5(4) Runge-Kutta pair with FSAL and fourth-order dense output.

    Seven stages, of which six are new evaluations per step (the last stage is ``f(t1, y1)``
    and is reused as the first stage of the next step). The coefficients were optimised for
    small error constants under only the first-column simplifying assumption, which usually
    makes it a little more efficient than :class:`Dopri5` at the same cost per step. Dense
    output uses Tsitouras' quartic interpolant, accurate to order 4.

    References:
        Ch. Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column
        simplifying assumption", Computers & Mathematics with Applications 62(2), 770-775,
        2011.
    """

    tableau = _tsit5
