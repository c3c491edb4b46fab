"""neuralode: Neural ordinary differential equations in JAX.

Adaptive Runge-Kutta solvers written as pure functions on ``lax.while_loop``, differentiated
by the adjoint method (Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018)
through ``jax.custom_vjp``.

Example:
    ```python
    import jax.numpy as jnp
    import neuralode as nde

    sol = nde.odeint(lambda t, y, args: -y, jnp.ones(3), jnp.linspace(0.0, 1.0, 11))
    ```
"""

from . import datasets, nn, training
from ._adjoint import (
    AbstractAdjoint,
    BacksolveAdjoint,
    CheckpointAdjoint,
    ForwardMode,
    InterpolatedAdjoint,
)
from ._controller import PIController
from ._event import Event
from ._odeint import odeint
from ._solution import Result, Solution
from ._solvers import (
    RK4,
    AbstractAdaptiveSolver,
    AbstractFixedSolver,
    AbstractSolver,
    Bosh3,
    ButcherTableau,
    Dopri5,
    Dopri8,
    Euler,
    Heun,
    Kvaerno5,
    Midpoint,
    Rodas5,
    Rodas5P,
    Tsit5,
)

__version__ = "0.1.0"

__all__ = [
    "datasets",
    "nn",
    "training",
    "AbstractAdaptiveSolver",
    "AbstractAdjoint",
    "AbstractFixedSolver",
    "AbstractSolver",
    "BacksolveAdjoint",
    "Bosh3",
    "ButcherTableau",
    "CheckpointAdjoint",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Event",
    "ForwardMode",
    "Heun",
    "InterpolatedAdjoint",
    "Kvaerno5",
    "Midpoint",
    "PIController",
    "RK4",
    "Result",
    "Rodas5",
    "Rodas5P",
    "Solution",
    "Tsit5",
    "odeint",
]
