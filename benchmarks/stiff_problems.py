"""The four Hairer-Wanner stiff test problems, shared by ``benchmarks/stiff.py`` and
``tests/test_stiff.py``: Robertson, VDPOL, HIRES and the Oregonator, each with its tolerances
of issue #15 and a reference solution at the final time.

Each field is written once for both array libraries (``xp``, JAX by default); scipy gets the
NumPy one (:attr:`StiffProblem.np_field`) and the analytic Jacobian. References: E. Hairer,
G. Wanner, *Solving Ordinary Differential Equations II*, 2nd ed., Springer 1996, section IV.10.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np


class StiffProblem(NamedTuple):
    """``field(t, y, args, xp=jnp)``, its NumPy version and NumPy Jacobian ``jac(t, y, args)``,
    the initial state, ``args``, the interval ``[0, t_end]``, the tolerances and the solution at
    ``t_end`` (scipy's Radau at rtol 1e-12 with the analytic Jacobian)."""

    field: Callable
    np_field: Callable
    jac: Callable
    y0: list[float]
    args: Any
    t_end: float
    rtol: float
    atol: float
    ref: list[float]


def _problem(field, jac, y0, args, t_end, rtol, atol, ref) -> StiffProblem:
    return StiffProblem(field, functools.partial(field, xp=np), jac, y0, args, t_end, rtol,
                        atol, ref)


def robertson(t, y, k, xp=jnp):
    return xp.stack([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])


def robertson_jac(t, y, k):
    return np.array([
        [-k[0], k[2] * y[2], k[2] * y[1]],
        [k[0], -2 * k[1] * y[1] - k[2] * y[2], -k[2] * y[1]],
        [0.0, 2 * k[1] * y[1], 0.0],
    ])


def vdpol(t, y, eps, xp=jnp):
    return xp.stack([y[1], ((1 - y[0] ** 2) * y[1] - y[0]) / eps])


def vdpol_jac(t, y, eps):
    return np.array([[0.0, 1.0], [(-2 * y[0] * y[1] - 1) / eps, (1 - y[0] ** 2) / eps]])


def hires(t, y, args, xp=jnp):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[i] for i in range(8))
    return xp.stack([
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7,
    ])


def oregonator(t, y, args, xp=jnp):
    return xp.stack([
        77.27 * (y[1] + y[0] * (1 - 8.375e-6 * y[0] - y[1])),
        (y[2] - (1 + y[0]) * y[1]) / 77.27,
        0.161 * (y[0] - y[2]),
    ])


def oregonator_jac(t, y, args):
    return np.array([
        [77.27 * (1 - 2 * 8.375e-6 * y[0] - y[1]), 77.27 * (1 - y[0]), 0.0],
        [-y[1] / 77.27, -(1 + y[0]) / 77.27, 1 / 77.27],
        [0.161, 0.0, -0.161],
    ])


def hires_jac(t, y, args):
    j = np.zeros((8, 8))
    j[0, :3] = [-1.71, 0.43, 8.32]
    j[1, :2] = [1.71, -8.75]
    j[2, 2:5] = [-10.03, 0.43, 0.035]
    j[3, 1:4] = [8.32, 1.71, -1.12]
    j[4, 4:7] = [-1.745, 0.43, 0.43]
    j[5, 3:8] = [0.69, 1.71, -0.43 - 280.0 * y[7], 0.69, -280.0 * y[5]]
    j[6, 5:8] = [280.0 * y[7], -1.81, 280.0 * y[5]]
    j[7, 5:8] = [-280.0 * y[7], 1.81, -280.0 * y[5]]
    return j


ROBER_K = np.array([0.04, 3e7, 1e4])  # Robertson's rate constants

PROBLEMS = {
    "Robertson": _problem(robertson, robertson_jac, [1.0, 0.0, 0.0], ROBER_K, 1e5, 1e-6, 1e-10,
                          [1.7865921142347120e-02, 7.2747514685389555e-08,
                           9.8213400611014057e-01]),
    "VDPOL": _problem(vdpol, vdpol_jac, [2.0, -0.66], np.asarray(1e-6), 2.0, 1e-6, 1e-6,
                      [1.706167437543158, -0.8928100165511409]),
    "HIRES": _problem(hires, hires_jac, [1.0, 0, 0, 0, 0, 0, 0, 0.0057], None, 321.8122, 1e-6,
                      1e-8,
                      [7.3713125733255471e-04, 1.4424857263161607e-04, 5.8887297409673529e-05,
                       1.1756513432831257e-03, 2.3863561988309882e-03, 6.2389682527417573e-03,
                       2.8499983951855183e-03, 2.8500016048145066e-03]),
    "Oregonator": _problem(oregonator, oregonator_jac, [1.0, 2.0, 3.0], None, 360.0, 1e-6, 1e-8,
                           [1.0008148703185229e+00, 1.2281785215498953e+03,
                            1.3205549428465335e+02]),
}
