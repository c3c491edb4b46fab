"""Solvers: explicit Runge-Kutta tableaus plus thin solver classes, and the stiff solvers
(Rosenbrock ``Rodas5``, ESDIRK ``Kvaerno5``)."""

from __future__ import annotations

from ._base import AbstractAdaptiveSolver, AbstractFixedSolver, AbstractSolver, ButcherTableau
from ._bosh3 import Bosh3
from ._dopri5 import Dopri5
from ._dopri8 import Dopri8
from ._esdirk import Kvaerno5
from ._explicit import RK4, Euler, Heun, Midpoint
from ._rosenbrock import Rodas5, Rodas5P
from ._tsit5 import Tsit5

__all__ = [
    "AbstractAdaptiveSolver",
    "AbstractFixedSolver",
    "AbstractSolver",
    "Bosh3",
    "ButcherTableau",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Heun",
    "Kvaerno5",
    "Midpoint",
    "RK4",
    "Rodas5",
    "Rodas5P",
    "Tsit5",
]
