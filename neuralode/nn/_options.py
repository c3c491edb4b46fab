"""``SolveOptions``: the solver settings every model of :mod:`neuralode.nn` holds.

One frozen, validated object instead of six or seven fields re-declared by every model. Its
defaults are those of :func:`neuralode.odeint`, so a model and a plain ``odeint`` call solve
alike unless told otherwise. Models keep it as ``model.solve`` and copy themselves with other
settings through ``model.with_solve(**changes)``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._adjoint import AbstractAdjoint, CheckpointAdjoint
from .._checks import check_bool, check_instance, check_int, check_real
from .._controller import PIController
from .._odeint import odeint
from .._solution import Solution
from .._solvers import AbstractSolver, Tsit5

_OWNER = "SolveOptions"

Tolerance = float | Float[Array, ""] | None
"""A per-call tolerance override: a number, a traced scalar, or ``None`` (the model's own)."""


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """How a model solves its ODE: solver, step-size control, tolerances, gradient mode.

    Immutable, hashable and validated when built, so a model holding one can be jitted and
    compared, and a mistake surfaces where it is made. The defaults are those of
    :func:`neuralode.odeint`.

    Args:
        solver: A solver instance: adaptive ``nde.Tsit5()`` (default), ``nde.Dopri5()``,
            ``nde.Dopri8()``, ``nde.Bosh3()``; or fixed-step ``nde.Euler()``,
            ``nde.Midpoint()``, ``nde.Heun()``, ``nde.RK4()`` together with ``dt0`` (the
            paper's RK-Net, differentiated by plain autodiff through the steps).
        controller: Step-size controller of adaptive solvers (default ``nde.PIController()``).
        rtol, atol: Tolerances of adaptive solvers (default ``1e-6`` each). Models also take
            per-call ``rtol=``/``atol=`` overrides, which are traced (no recompilation).
        adjoint: Gradient mode of adaptive solvers: ``nde.CheckpointAdjoint()`` (default: the
            exact gradient of the discrete solve), ``nde.BacksolveAdjoint()`` (the paper's
            adjoint, memory independent of the number of steps), ``nde.InterpolatedAdjoint()``
            or ``nde.ForwardMode()``.
        max_steps: Most steps of an adaptive solve (default 4096).
        dt0: First step of an adaptive solver (default: chosen automatically), or the largest
            step of a fixed-step solver (required there).
        throw: Raise on a failed solve (default); with ``False`` failed outputs are NaN and
            ``Solution.result`` says why (see :func:`neuralode.odeint`).

    Raises:
        TypeError: an option of the wrong type (e.g. ``solver=nde.Tsit5``, the class).
        ValueError: a value out of range, or a fixed-step solver without ``dt0``.

    Example:
        ```python
        import neuralode as nde
        from neuralode import nn

        fast = nn.SolveOptions(rtol=1e-3, atol=1e-3, adjoint=nde.BacksolveAdjoint())
        rk_net = nn.SolveOptions(solver=nde.RK4(), dt0=0.25)      # 4 RK4 steps on [0, 1]
        tight = fast.replace(rtol=1e-8, atol=1e-8)                # a validated copy
        ```
    """

    solver: AbstractSolver = Tsit5()
    controller: PIController = PIController()
    rtol: float = 1e-6
    atol: float = 1e-6
    adjoint: AbstractAdjoint = CheckpointAdjoint()
    max_steps: int = 4096
    dt0: float | None = None
    throw: bool = True

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        check_instance(_OWNER, "solver", self.solver, AbstractSolver,
                       "a solver instance such as nde.Tsit5() or nde.RK4()")
        check_instance(_OWNER, "controller", self.controller, PIController,
                       "a nde.PIController instance")
        check_instance(_OWNER, "adjoint", self.adjoint, AbstractAdjoint,
                       "a gradient mode such as nde.CheckpointAdjoint() or "
                       "nde.BacksolveAdjoint()")
        set_("rtol", check_real(_OWNER, "rtol", self.rtol, positive=True))
        set_("atol", check_real(_OWNER, "atol", self.atol, positive=True))
        set_("max_steps", check_int(_OWNER, "max_steps", self.max_steps))
        if self.dt0 is not None:
            set_("dt0", check_real(_OWNER, "dt0", self.dt0, nonzero=True))
        set_("throw", check_bool(_OWNER, "throw", self.throw))
        if not self.solver.adaptive and self.dt0 is None:
            raise ValueError(
                f"{_OWNER}: the fixed-step solver {self.solver!r} needs `dt0` (its largest "
                "step size), e.g. SolveOptions(solver=nde.RK4(), dt0=0.1)."
            )

    def replace(self, **changes: Any) -> SolveOptions:
        """A validated copy with some options changed, e.g. ``opts.replace(rtol=1e-3)``.

        Raises:
            TypeError: an unknown option name (the message lists the valid ones).
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"{_OWNER}: unknown option(s) {', '.join(map(repr, unknown))}; the options are "
                f"{', '.join(names)}."
            )
        return dataclasses.replace(self, **changes)

    def odeint(self, f, y0, ts, args=None, *, rtol: Tolerance = None, atol: Tolerance = None,
               stats_probe: Array | None = None) -> Solution:
        """:func:`neuralode.odeint` with these options; ``rtol``/``atol`` override per call.

        ``ts`` is cast to the floating dtype of ``y0``; a concrete ``ts`` stays concrete even
        under ``jit`` (fixed-step solvers need the number of steps at trace time).
        """
        return odeint(
            f,
            y0,
            concrete_times(ts, state_dtype(y0)),
            args,
            solver=self.solver,
            controller=self.controller,
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            dt0=self.dt0,
            throw=self.throw,
            stats_probe=stats_probe,
        )


def check_solve(owner: str, solve: Any, *, adaptive: bool = False) -> SolveOptions:
    """``solve`` if it is a :class:`SolveOptions` (with an adaptive solver if ``adaptive``)."""
    check_instance(owner, "solve", solve, SolveOptions,
                   "a neuralode.nn.SolveOptions, e.g. nn.SolveOptions(rtol=1e-3)")
    if adaptive and not solve.solver.adaptive:
        raise ValueError(
            f"{owner}: needs an adaptive solver such as nde.Tsit5() (its solve times are "
            f"traced), got {solve.solver!r}."
        )
    return solve


def check_interval(owner: str, t0: Any, t1: Any) -> tuple[float, float]:
    """A model's integration interval ``(t0, t1)`` as floats: finite and distinct."""
    t0, t1 = check_real(owner, "t0", t0), check_real(owner, "t1", t1)
    if t0 == t1:
        raise ValueError(f"{owner}: `t1` must differ from `t0` (both are {t0}).")
    return t0, t1


class SolvingModule(eqx.Module):
    """Base of the models that solve an ODE: they hold a :class:`SolveOptions` as ``solve``
    (a static field) and copy themselves with other settings through :meth:`with_solve`."""

    solve: eqx.AbstractVar[SolveOptions]

    def with_solve(self, **changes: Any):
        """A copy with other solve settings (validated), e.g. ``model.with_solve(rtol=1e-3)``.

        The copy shares every parameter with this model; only ``solve`` differs.

        Raises:
            TypeError: an unknown option name or a value of the wrong type.
            ValueError: a value out of range.
        """
        new = copy.copy(self)
        object.__setattr__(new, "solve", self.solve.replace(**changes))
        return new


def state_dtype(y0) -> Any:
    """The floating dtype the solve of ``y0`` runs in (odeint promotes integer leaves)."""
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(y0)]
    floats = [x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.result_type(*floats) if floats else jnp.result_type(float)


def concrete_times(ts, dtype) -> Array:
    """``ts`` as an array of ``dtype``; concrete (not a tracer) whenever ``ts`` is.

    Under ``jit`` in current JAX ``jnp.asarray`` of a NumPy/Python constant is a tracer, which
    the fixed-step solvers of ``odeint`` reject (they need the number of steps at trace time).
    Creating the array under ``jax.ensure_compile_time_eval`` keeps it concrete.
    """
    if isinstance(ts, jax.core.Tracer):
        return ts
    with jax.ensure_compile_time_eval():
        return jnp.asarray(ts, dtype)


