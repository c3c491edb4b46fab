"""Fixed-step explicit Runge-Kutta methods: Euler, Midpoint, Heun, RK4."""

from __future__ import annotations

import numpy as np

from ._base import AbstractFixedSolver, ButcherTableau

_euler = ButcherTableau(name="Euler", c=[0.0], a=[[0.0]], b=[1.0], order=1)

_midpoint = ButcherTableau(
    name="Midpoint", c=[0.0, 0.5], a=[[0.0, 0.0], [0.5, 0.0]], b=[0.0, 1.0], order=2
)

_heun = ButcherTableau(
    name="Heun", c=[0.0, 1.0], a=[[0.0, 0.0], [1.0, 0.0]], b=[0.5, 0.5], order=2
)

_rk4 = ButcherTableau(
    name="RK4",
    c=[0.0, 0.5, 0.5, 1.0],
    a=np.array(
        [[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    ),
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    order=4,
)


class Euler(AbstractFixedSolver):
    """Explicit Euler method, order 1: one evaluation per step (a ResNet block)."""

    tableau = _euler


class Midpoint(AbstractFixedSolver):
    """Explicit midpoint method, order 2, two evaluations per step."""

    tableau = _midpoint


class Heun(AbstractFixedSolver):
    """Heun's method (explicit trapezoidal rule), order 2, two evaluations per step."""

    tableau = _heun


class RK4(AbstractFixedSolver):
    """The classical fourth-order Runge-Kutta method, four evaluations per step.

    Differentiating through it with plain autodiff is the paper's RK-Net baseline.
    """

    tableau = _rk4
