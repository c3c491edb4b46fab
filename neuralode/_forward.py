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
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._controller import PIController
from ._event import ift_tangent
from ._integrate import (
    NEXT,
    STAT_SLOTS,
    LoopConfig,
    LoopState,
    Outputs,
    direction_of,
    run,
    start,
)
from ._plugins import Events, Recorder
from ._primitive import fill_zeros, tangent_leaves, tangent_of
from ._solution import Result
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
    event_directions: tuple = ()  # per event: +1, -1 or 0 (both); () without events
    event_terminal: tuple = ()

    @property
    def loop(self) -> LoopConfig:
        return LoopConfig(self.solver, self.controller, self.max_steps)


class Problem(eqx.Module):
    """A solve without its differentiable inputs.

    Attributes:
        fn: ``fn(t, y, params, nondiff) -> dy/dt`` on flat arrays, in real time.
        cond: ``cond(t, y, params, nondiff) -> (k,)``: the event functions, or ``None``.
        cfg: Static settings.
        nondiff: Arrays the field takes that are not differentiated (integers, masks).
        rtol, atol, dt0: Tolerances and first step (``dt0`` unused unless ``cfg.has_dt0``).
    """

    fn: Callable = eqx.field(static=True)
    cond: Callable | None = eqx.field(static=True)
    cfg: SolveConfig = eqx.field(static=True)
    nondiff: PyTree
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    dt0: Float[Array, ""]

    @property
    def has_events(self) -> bool:
        return self.cond is not None


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


class EventOut(NamedTuple):
    """The event outputs of a solve: real time (NaN if none), state, index (-1 if none)."""

    time: Any
    y: Any
    index: Any


def event_function(problem: Problem, x: Primal, params=None):
    """``g(t, y, params) -> (k,)``: the event functions in real time."""

    def g(t, y, p):
        return problem.cond(t, y, p, problem.nondiff)

    return g


def forward(
    problem: Problem, x: Primal, recorder: Recorder | None = None
) -> tuple[Array, LoopState, Any, EventOut | None]:
    """Solve from ``ts[0]`` to ``ts[-1]`` (or a terminal event).

    Returns ``(ys, final loop state, record carry, events)``. Outputs not reached (a failed
    solve, or after a terminal event) are NaN. No error is raised here.
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
    events = ev = None
    if problem.has_events:
        cond = event_function(problem, x)
        events = Events(
            lambda tau, y: cond(sign * tau, y, x.params).astype(jnp.result_type(tau, y)),
            cfg.event_directions,
            cfg.event_terminal,
        )
        ev = events.init(st)
    if taus.shape[0] > 1:
        out = run(g, lcfg, st, taus[-1], problem.rtol, problem.atol, outputs=outputs, ys=ys,
                  recorder=recorder, rec=rec, direction=sign, events=events, ev=ev)
        st, ys, rec = out[:3]
        if events is not None:
            ev = out[4]
    event_out = None
    if ev is not None:
        found = ev["found"]
        event_out = EventOut(
            time=jnp.where(found, sign * ev["tau"], jnp.nan).astype(x.ts.dtype),
            y=ev["y"],
            index=ev["index"],
        )
    return ys, st, rec, event_out


def sensitivity(problem: Problem, x: Primal, xdot: Primal, with_stats: bool = False):
    """The forward sensitivity ``d ys`` for the tangent ``xdot`` (see :func:`propagate`), with
    the statistics probe's values ``[num_steps, num_accepted, num_rejected, nfe]`` if
    ``with_stats``."""
    _, st, _, out = propagate(problem, x, xdot)
    if with_stats:
        return out, st.ints[jnp.array(STAT_SLOTS[:NUM_STATS])]
    return out


def propagate(problem: Problem, x: Primal, xdot: Primal):
    """The solve and its forward sensitivity for the tangent ``xdot`` (``None`` leaves are
    zero) in one loop: ``(ys, final loop state, events, tangent)``.

    The tangent is ``d ys`` (and, with events, ``(d ys, (d event_time, d event_y))``). The
    solve is differentiated in forward mode with its steps held fixed; the output times enter
    through the exact identities ``d ys_i/d t_i = f(t_i, ys_i)`` (``i >= 1``) and
    ``d ys_i/d t_0 = -Φ_i f(t_0, y_0)`` (the flow's derivative applied to the start), so
    neither depends on how the solver placed its steps. The event time and state follow from
    the implicit function theorem (``neuralode._event``).

    Absent tangents stay symbolic zeros: only the inputs that have a tangent are
    differentiated (a zero parameter tangent would otherwise cost a product of every layer's
    input with a zero matrix at every stage), and the output-time terms are computed only for
    a tangent of ``ts``.
    """
    xd = tangent_of(xdot, x)
    ts = lax.stop_gradient(x.ts)
    y0_dot = xd.y0
    if xd.ts is not None:
        corr = -field(problem, x, ts[0], x.y0) * xd.ts[0]
        y0_dot = (corr if y0_dot is None else y0_dot + corr).astype(x.y0.dtype)

    p_leaves, p_def = jax.tree.flatten(x.params)
    p_dots = tangent_leaves(xd.params, x.params)
    args, dots = [x.y0, *p_leaves], [y0_dot, *p_dots]
    active = [i for i, d in enumerate(dots) if d is not None]

    def solve(*values):
        full = list(args)
        for i, v in zip(active, values, strict=True):
            full[i] = v
        y0, params = full[0], jax.tree.unflatten(p_def, full[1:])
        ys, st_out, _, ev = forward(problem, Primal(y0, ts, params, x.probe))
        ev_y = None if ev is None else ev.y
        return (ys, ev_y), (st_out, ev)

    # The primal outputs (for the time terms, and for the caller) come from this same loop.
    if active:
        (ys_own, _), (ys_dot, ev_y_dot), (st, ev) = jax.jvp(
            solve, tuple(args[i] for i in active), tuple(dots[i] for i in active), has_aux=True
        )
    else:  # only the statistics probe has a tangent
        (ys_own, ev_y), (st, ev) = solve()
        ys_dot = jnp.zeros_like(ys_own)
        ev_y_dot = None if ev_y is None else jnp.zeros_like(ev_y)
    ys = lax.stop_gradient(ys_own)
    reached = jnp.isfinite(ys)
    if xd.ts is not None:
        fs = jax.vmap(lambda t, y: field(problem, x, t, y))(ts, jnp.where(reached, ys, 0.0))
        ys_dot = ys_dot + fs * xd.ts[:, None]
    y0_row = jnp.zeros_like(x.y0) if xd.y0 is None else xd.y0
    ys_dot = ys_dot.astype(ys.dtype).at[0].set(y0_row)
    ys_dot = jnp.where(reached, ys_dot, 0.0)  # outputs not reached have no derivative
    out = ys_dot
    if ev is not None:
        out = (ys_dot, _event_tangent(problem, x, ev, ev_y_dot, fill_zeros(xdot, x)))
    return ys_own, st, ev, out


def _event_tangent(problem: Problem, x: Primal, ev: EventOut, y_dot, xdot: Primal):
    """``(d event_time, d event_y)`` from the tangent of the state at the fixed event time."""
    found = ev.index >= 0
    t_star = lax.stop_gradient(jnp.where(found, ev.time, x.ts[0]))
    y_star = lax.stop_gradient(jnp.where(found, ev.y, x.y0))
    f_star = field(problem, x, t_star, y_star)
    cond = event_function(problem, x)
    index = jnp.maximum(ev.index, 0)

    def g_one(t, y, p):
        return cond(t, y, p)[index]

    t_dot, ev_dot = ift_tangent(g_one, t_star, y_star, f_star, y_dot, x.params, xdot.params)
    t_dot = jnp.where(found, t_dot, 0.0).astype(x.ts.dtype)
    ev_dot = jnp.where(found, ev_dot, 0.0).astype(y_dot.dtype)
    return t_dot, ev_dot


def reverse_by_jacobian(problem: Problem, x: Primal, fwd_result, ct, ct_ev=None):
    """``J^T ct`` with ``J`` materialised column by column from forward sensitivities."""
    diff = Primal(x.y0, x.ts, x.params, jnp.zeros_like(x.probe))
    flat, unravel = ravel_pytree(diff)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    jac, stats = jax.vmap(lambda e: sensitivity(problem, x, unravel(e), with_stats=True))(basis)
    if ct_ev is None:
        jac, cts = (jac,), (ct,)
    else:
        jac_ys, (jac_t, jac_y) = jac
        jac, cts = (jac_ys, jac_t, jac_y), (ct, ct_ev[0], ct_ev[1])
    g = sum(jnp.tensordot(j, jnp.nan_to_num(c), axes=c.ndim).astype(flat.dtype)
            for j, c in zip(jac, cts, strict=True))
    # A failed forward solve contributes nothing (see finish).
    g = unravel(jnp.where(Result.succeeded(fwd_result), g, 0.0))
    return Primal(g.y0, g.ts, g.params, stats[0].astype(x.probe.dtype))
