"""The forward solve on flat arrays, and its forward sensitivity.

:class:`Problem` holds what a solve needs besides the differentiable inputs: the flat vector
field, the static settings and the non-differentiable arrays. :class:`Primal` holds the
differentiable inputs (initial state, output times, parameters, the statistics probe). Every
gradient mode shares :func:`forward`; what differs is the record of steps it keeps (none, or a
bounded number of checkpoints) and the backward rule in ``neuralode._adjoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PyTree

from ._controller import PIController
from ._integrate import (
    NEXT,
    STAT_SLOTS,
    LoopConfig,
    LoopState,
    Outputs,
    Recorder,
    direction_of,
    run,
    start,
)
from ._primitive import fill_zeros
from ._solvers import AbstractAdaptiveSolver

NUM_STATS = 4  # the statistics probe: [num_steps, num_accepted, num_rejected, nfe]


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """Static settings of one adaptive solve."""

    solver: AbstractAdaptiveSolver
    controller: PIController
    max_steps: int
    throw: bool
    has_dt0: bool
    adjoint: Any  # an AbstractAdjoint (typed loosely: _adjoint imports this module)

    @property
    def loop(self) -> LoopConfig:
        return LoopConfig(self.solver, self.controller, self.max_steps)


class Problem(eqx.Module):
    """A solve without its differentiable inputs.

    Attributes:
        fn: ``fn(t, y, params, nondiff) -> dy/dt`` on flat arrays, in real time.
        cfg: Static settings.
        nondiff: Arrays the field takes that are not differentiated (integers, masks).
        rtol, atol, dt0: Tolerances and first step (``dt0`` unused unless ``cfg.has_dt0``).
    """

    fn: Callable = eqx.field(static=True)
    cfg: SolveConfig = eqx.field(static=True)
    nondiff: PyTree
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    dt0: Float[Array, ""]


class Primal(eqx.Module):
    """The differentiable inputs of a solve (and the shape of their tangents/cotangents)."""

    y0: Float[Array, " n"]
    ts: Float[Array, " times"]
    params: PyTree
    probe: Float[Array, " 4"]


def field(problem: Problem, x: Primal, t, y) -> Array:
    """The vector field in real time."""
    return problem.fn(t, y, x.params, problem.nondiff)


def internal(problem: Problem, x: Primal):
    """``(sign, taus, g)``: integration runs in ``τ = sign·t``, increasing, solving
    ``dy/dτ = sign·g(τ, y)`` with ``g(τ, y) = f(sign·τ, y)`` (the loop's ``direction``)."""
    sign = direction_of(x.ts)
    taus = sign * x.ts

    def g(tau, y):
        return field(problem, x, sign * tau, y).astype(y.dtype)

    return sign, taus, g


def forward(
    problem: Problem, x: Primal, recorder: Recorder | None = None
) -> tuple[Array, LoopState, Any]:
    """Solve from ``ts[0]`` to ``ts[-1]``: returns ``(ys, final loop state, record carry)``.

    Outputs not reached (a failed solve) are NaN. No error is raised here.
    """
    cfg = problem.cfg
    sign, taus, g = internal(problem, x)
    lcfg = cfg.loop
    h0 = problem.dt0 if cfg.has_dt0 else None
    st = start(g, lcfg, taus[0], taus[-1], x.y0, None, problem.rtol, problem.atol, h0, sign)
    st = st._replace(ints=st.ints.at[NEXT].set(1))
    outputs = Outputs(taus)
    ys = outputs.init(x.y0)
    rec = None if recorder is None else recorder.init(st, cfg.solver.dense_degree)
    if taus.shape[0] > 1:
        st, ys, rec, _ = run(g, lcfg, st, taus[-1], problem.rtol, problem.atol,
                             outputs=outputs, ys=ys, recorder=recorder, rec=rec,
                             direction=sign)
    return ys, st, rec


def sensitivity(problem: Problem, x: Primal, xdot: Primal, with_stats: bool = False):
    """The forward sensitivity ``d ys`` for the tangent ``xdot`` (``None`` leaves are zero).

    The solve is differentiated in forward mode with its steps held fixed; the output times
    enter through the exact identities ``d ys_i/d t_i = f(t_i, ys_i)`` (``i >= 1``) and
    ``d ys_i/d t_0 = -Φ_i f(t_0, y_0)`` (the flow's derivative applied to the start), so
    neither depends on how the solver placed its steps.
    """
    xdot = fill_zeros(xdot, x)
    ts = lax.stop_gradient(x.ts)
    dt0 = xdot.ts[0]
    start_dot = (xdot.y0 - field(problem, x, ts[0], x.y0) * dt0).astype(x.y0.dtype)

    def solve(y0, params):
        _, st_out, _ = out = forward(problem, Primal(y0, ts, params, x.probe))
        return out[0], st_out.ints[jnp.array(STAT_SLOTS[:NUM_STATS])]

    # The outputs for the time terms come from this same solve, not from the residual `ys`:
    # then a caller that only wants tangents (jax.jacfwd) leaves the primal solve unused and
    # XLA drops it, so a Jacobian costs one solve plus the tangents.
    ys_own, ys_dot, stats = jax.jvp(solve, (x.y0, x.params), (start_dot, xdot.params),
                                    has_aux=True)
    ys = lax.stop_gradient(ys_own)
    fs = jax.vmap(lambda t, y: field(problem, x, t, y))(ts, ys)
    ys_dot = (ys_dot + fs * xdot.ts[:, None]).astype(ys.dtype).at[0].set(xdot.y0)
    return (ys_dot, stats) if with_stats else ys_dot
