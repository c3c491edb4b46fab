"""``NeuralODE``: a vector field and its solver settings as one Equinox module."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._adjoint import AbstractAdjoint, BacksolveAdjoint
from .._odeint import odeint
from .._solution import Solution
from .._solvers import AbstractSolver, Tsit5
from ._regularisers import RegularisedField, check_noise, hutchinson_noise

__all__ = ["NeuralODE"]

DEFAULT_SOLVER = Tsit5()
DEFAULT_ADJOINT = BacksolveAdjoint()


# --------------------------------------------------------------------------------------
# Helpers shared by the modules of neuralode.nn


def check_real(owner: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray | jax.Array):
        raise ValueError(f"{owner}: `{name}` must be a real number, got {value!r}.")
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.isfinite(arr):
        raise ValueError(f"{owner}: `{name}` must be a finite real scalar, got {value!r}.")
    return float(arr)


def check_solve_options(owner, *, t0, t1, solver, rtol, atol, adjoint, max_steps, dt0, throw):
    """Validate the solver settings that NeuralODE and CNF share; returns normalised values."""
    t0 = check_real(owner, "t0", t0)
    t1 = check_real(owner, "t1", t1)
    if t0 == t1:
        raise ValueError(f"{owner}: `t1` must differ from `t0` (both are {t0}).")
    if not isinstance(solver, AbstractSolver):
        raise ValueError(
            f"{owner}: `solver` must be a solver instance such as nde.Tsit5() or nde.RK4(), "
            f"got {solver!r}."
        )
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not check_real(owner, name, value) > 0:
            raise ValueError(f"{owner}: `{name}` must be positive, got {value!r}.")
    if not isinstance(adjoint, AbstractAdjoint):
        raise ValueError(
            f"{owner}: `adjoint` must be nde.BacksolveAdjoint(), nde.InterpolatedAdjoint() or "
            f"nde.CheckpointAdjoint(), got {adjoint!r}."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise ValueError(f"{owner}: `max_steps` must be a positive int, got {max_steps!r}.")
    if dt0 is not None:
        dt0 = check_real(owner, "dt0", dt0)
        if dt0 == 0:
            raise ValueError(f"{owner}: `dt0` must be non-zero.")
    if not solver.adaptive and dt0 is None:
        raise ValueError(
            f"{owner}: the fixed-step solver {solver!r} needs `dt0` (its largest step size), "
            "e.g. dt0=0.1."
        )
    if not isinstance(throw, bool):
        raise ValueError(f"{owner}: `throw` must be True or False, got {throw!r}.")
    return t0, t1, float(rtol), float(atol), int(max_steps), dt0


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


def solve_kwargs(model, rtol, atol) -> dict:
    return dict(
        solver=model.solver,
        rtol=model.rtol if rtol is None else rtol,
        atol=model.atol if atol is None else atol,
        dt0=model.dt0,
        max_steps=model.max_steps,
        adjoint=model.adjoint,
        throw=model.throw,
    )


def final(tree):
    return jax.tree.map(lambda x: x[-1], tree)


# --------------------------------------------------------------------------------------


class NeuralODE(eqx.Module):
    """A neural ODE block: ``y0 ↦ y(t1)`` where ``dy/dt = field(t, y, args)``, ``y(t0) = y0``.

    The paper's ODE-Net block (section 3). ``field`` is any vector field ``field(t, y, args)``
    (typically an Equinox module from :mod:`neuralode.nn`, whose arrays are trained);
    ``y`` may be any pytree of arrays, a single example (``jax.vmap`` the model for a batch,
    which gives every sample its own step sizes).

    Args:
        field: The vector field.
        t0, t1: Integration interval (``t1 < t0`` integrates backwards).
        solver: ``nde.Tsit5()`` (default) or any adaptive solver; a fixed-step solver
            (``nde.RK4()``, ``nde.Euler()``, ...) together with ``dt0`` gives the paper's
            RK-Net, differentiated by plain autodiff through the solver steps.
        rtol, atol: Tolerances of adaptive solvers (override per call).
        adjoint: Gradient mode of adaptive solvers (default ``nde.BacksolveAdjoint()``, the
            paper's O(1)-memory adjoint; ``nde.CheckpointAdjoint()`` for exact discrete
            gradients).
        max_steps: Maximum number of solver steps.
        dt0: First step (adaptive) or largest step (fixed-step solvers, required there).
        noise: Hutchinson noise of the Jacobian regulariser, ``"gaussian"`` or
            ``"rademacher"``.
        throw: Raise on a failed solve (default); see :func:`neuralode.odeint`.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import MLPField, NeuralODE

        model = NeuralODE(MLPField(2, width=8, depth=1, key=jax.random.key(0)), t1=1.0)
        y1 = model(jnp.ones(2))
        y1, stats = model(jnp.ones(2), return_stats=True)   # stats["nfe"]: forward NFE
        ys = model.trajectory(jnp.ones(2), jnp.linspace(0.0, 1.0, 5)).ys  # (5, 2)
        batch = jax.vmap(model)(jnp.ones((4, 2)))                          # (4, 2)
        rk_net = NeuralODE(model.field, solver=nde.RK4(), dt0=0.25)       # 4 RK4 steps
        ```
    """

    field: Callable
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    solver: AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    adjoint: AbstractAdjoint = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        field: Callable,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        solver: AbstractSolver = DEFAULT_SOLVER,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        adjoint: AbstractAdjoint = DEFAULT_ADJOINT,
        max_steps: int = 4096,
        dt0: float | None = None,
        noise: str = "gaussian",
        throw: bool = True,
    ):
        if not callable(field):
            raise ValueError(
                f"NeuralODE: `field` must be callable as field(t, y, args), got {field!r}."
            )
        self.field = field
        (self.t0, self.t1, self.rtol, self.atol, self.max_steps, self.dt0) = check_solve_options(
            "NeuralODE",
            t0=t0,
            t1=t1,
            solver=solver,
            rtol=rtol,
            atol=atol,
            adjoint=adjoint,
            max_steps=max_steps,
            dt0=dt0,
            throw=throw,
        )
        self.solver = solver
        self.adjoint = adjoint
        self.noise = check_noise("NeuralODE", noise)
        self.throw = throw

    def __call__(
        self,
        y0: PyTree[Float[ArrayLike, "..."]],
        args: PyTree = None,
        *,
        return_stats: bool = False,
        regularise: bool = False,
        key: PRNGKeyArray | None = None,
        rtol: float | Float[Array, ""] | None = None,
        atol: float | Float[Array, ""] | None = None,
        stats_probe: Float[Array, "4"] | None = None,
    ):
        """Solve from ``y0`` at ``t0`` to ``t1`` and return ``y(t1)``.

        Args:
            y0: Initial state (a single example; any pytree of arrays).
            args: Passed to ``field(t, y, args)``.
            return_stats: Also return the solve's statistics ``{"num_steps",
                "num_accepted", "num_rejected", "nfe"}`` (integer arrays: functional, so
                they work under ``jit``/``vmap``).
            regularise: Also return the RNODE regularisers ``{"kinetic": ∫‖f‖² dt,
                "jacobian": ∫‖εᵀ∂f/∂y‖² dt}`` over ``[t0, t1]``, integrated as extra states of
                the same solve (see :class:`RegularisedField`). Needs ``key``.
            key: PRNG key of the Hutchinson noise ``ε`` (one draw per solve).
            rtol, atol: Override the tolerances for this call (traced: no recompilation).
            stats_probe: See :func:`neuralode.odeint` (backward-solve statistics).

        Returns:
            ``y1``; ``(y1, regs)`` with ``regularise``; ``(y1, stats)`` with
            ``return_stats``; ``(y1, regs, stats)`` with both.
        """
        y0 = jax.tree.map(jnp.asarray, y0)
        dtype = state_dtype(y0)
        ts = concrete_times([self.t0, self.t1], dtype)
        kwargs = solve_kwargs(self, rtol, atol)
        if regularise:
            if key is None:
                raise ValueError(
                    "NeuralODE: `regularise=True` needs `key`, the PRNG key of the Hutchinson "
                    "noise of the Jacobian regulariser."
                )
            eps = hutchinson_noise(key, y0, self.noise)
            dyn = RegularisedField(self.field)
            sol = odeint(
                dyn, dyn.initial_state(y0), ts, (args, eps), stats_probe=stats_probe, **kwargs
            )
            y1, regs = final(sol.ys)
            sign = 1.0 if self.t1 > self.t0 else -1.0
            regs = {k: sign * v for k, v in regs.items()}
            out = (y1, regs)
        else:
            sol = odeint(self.field, y0, ts, args, stats_probe=stats_probe, **kwargs)
            out = (final(sol.ys),)
        if return_stats:
            out = out + (sol.stats,)
        return out[0] if len(out) == 1 else out

    def trajectory(
        self,
        y0: PyTree[Float[ArrayLike, "..."]],
        ts: Float[ArrayLike, " times"],
        args: PyTree = None,
        *,
        rtol: float | Float[Array, ""] | None = None,
        atol: float | Float[Array, ""] | None = None,
        stats_probe: Float[Array, "4"] | None = None,
    ) -> Solution:
        """Solve from ``y0`` at ``ts[0]`` and return the :class:`~neuralode.Solution` at ``ts``.

        ``t0``/``t1`` of the module are not used: ``ts`` sets the interval. With a fixed-step
        solver ``ts`` must be concrete (a NumPy array or an array created outside ``jit``).
        """
        y0 = jax.tree.map(jnp.asarray, y0)
        ts = concrete_times(ts, state_dtype(y0))
        return odeint(
            self.field, y0, ts, args, stats_probe=stats_probe, **solve_kwargs(self, rtol, atol)
        )
