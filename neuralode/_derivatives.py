"""How JAX differentiates an adaptive solve, to any order, under ``jit`` and ``vmap``.

Five primitives (``neuralode._primitive``) describe a solve ``ys = S(x)``, ``x = (y0, ts,
params)``:

=========  =======================  =========================================================
SOLVE      ``S(x)``                 its tangent is SENS
SENS       ``J(x) ẋ``               linear in ``ẋ``; transposes to ADJ; its ``x``-derivative
                                    is SENS2
ADJ        ``J(x)ᵀ c``              the gradient mode's backward pass; transposes to SENS; its
                                    ``x``-derivative is HESS
HESS       ``∇²⟨c, S⟩(x) u``        forward mode through the backward pass; self-transposed
SENS2      ``S''(x)[ẋ, δx]``        forward mode through the sensitivity; transposes to HESS
=========  =======================  =========================================================

So ``jax.jvp`` evaluates SENS, ``jax.grad`` transposes SENS into ADJ (the mode's adjoint),
``grad(grad)`` transposes ADJ's derivative into HESS and SENS, ``jvp(grad)`` and
``jax.hessian`` evaluate HESS. HESS uses the symmetry of second derivatives: the transpose of
``u ↦ ∂ₓ(Jᵀc)·u`` is the map itself. That is exact for :class:`CheckpointAdjoint` (its
gradient is the exact gradient of the discrete solve) and holds to the solver tolerance for the
continuous adjoints, whose gradient is itself exact only to that tolerance. Third derivatives
are not supported.

Tangents of the non-differentiable settings (``rtol``, ``atol``, ``dt0``, integer arrays) are
dropped: the solution is differentiated as a function of ``x`` alone.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._backward import backward_from_scratch
from ._forward import EventOut, Primal, Problem, forward, propagate, sensitivity
from ._integrate import RESULT, STAT_NAMES, LoopState, stats_of, time_dtype
from ._primitive import Rules, bind, fill_zeros, has_tangent, only_undefined, undefined
from ._solution import RESULT_MESSAGES, Result

_THIRD_ORDER = (
    "neuralode.odeint: derivatives of third or higher order are not supported (first and "
    "second order are, in every mode and combination of forward and reverse mode)."
)


_EVENTS_SECOND_ORDER = (
    "neuralode.odeint: second derivatives through a solve with events are not supported (the "
    "event time's first derivative is exact, by the implicit function theorem)."
)


def _recorder(problem: Problem, record: bool):
    return problem.cfg.adjoint.recorder(problem.cfg) if record else None


def _struct(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _ys_struct(x: Primal):
    return jax.ShapeDtypeStruct((x.ts.shape[0], x.y0.shape[0]), x.y0.dtype)


def _x_struct(x: Primal):
    return jax.tree.map(_struct, x)


# ---------------------------------------------------------------------------------------------
# SOLVE(problem, x, record) -> (ys, stats, result, record carry or None)


def _solve_impl(problem: Problem, x: Primal, record: bool):
    ys, st, rec, ev = forward(problem, x, _recorder(problem, record))
    result = st.ints[RESULT]
    if problem.cfg.throw:
        failed = ~Result.succeeded(result)
        ys = eqx.branched_error_if(ys, failed, result, RESULT_MESSAGES)
    return ys, stats_of(st), result, rec, ev


def _solve_abstract(problem: Problem, x: Primal, record: bool):
    # Written out (not jax.eval_shape of the solve): tracing the whole loop again at every
    # bind would double the trace time of every program that solves.
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    stats = {name: scalar for name in STAT_NAMES}
    recorder = _recorder(problem, record)
    rec = None
    y = jax.ShapeDtypeStruct(x.y0.shape, x.y0.dtype)
    if recorder is not None:
        state = LoopState(y, y, None, jax.ShapeDtypeStruct((3,), time_dtype(x.y0.dtype)), None)
        rec = jax.eval_shape(lambda: recorder.init(state, problem.cfg.solver.dense_degree))
    ev = None
    if problem.has_events:
        ev = EventOut(jax.ShapeDtypeStruct((), x.ts.dtype), y, scalar)
    return _ys_struct(x), stats, scalar, rec, ev


def _solve_jvp(primals, tangents):
    problem, x, record = primals
    xdot = tangents[1]
    ys, stats, result, rec, ev = bind(SOLVE, problem, x, True)
    out = (ys, stats, result, rec if record else None, ev)
    if not has_tangent(xdot):
        return out, None
    dot = bind(SENS, problem, x, (ys, stats["num_accepted"], result, rec, ev), xdot)
    if ev is None:
        return out, (dot, None, None, None, None)
    ys_dot, (t_dot, y_dot) = dot
    return out, (ys_dot, None, None, None, EventOut(t_dot, y_dot, None))


SOLVE = Rules("the solve", _solve_impl, _solve_abstract, _solve_jvp)


# ---------------------------------------------------------------------------------------------
# SENS(problem, x, res, xdot) -> ys_dot, with res = (ys, n_accepted, result, record)


def _sens_impl(problem, x, res, xdot):
    # The tangents come with their own solve (see `propagate`), whose primal outputs are
    # unused when only tangents are wanted: XLA then drops SOLVE's loop and jax.jacfwd costs
    # one loop. With ``throw``, the tangents carry the failure check of their own solve, which
    # would otherwise go with SOLVE's.
    _, st, _, dot = propagate(problem, x, xdot)
    if problem.cfg.throw:
        result = st.ints[RESULT]
        dot = eqx.branched_error_if(dot, ~Result.succeeded(result), result, RESULT_MESSAGES)
    return dot


def _sens_abstract(problem, x, res, xdot):
    if not problem.has_events:
        return _ys_struct(x)
    t = jax.ShapeDtypeStruct((), x.ts.dtype)
    return _ys_struct(x), (t, jax.ShapeDtypeStruct(x.y0.shape, x.y0.dtype))


def _sens_jvp(primals, tangents):
    problem, x, res, xdot = primals
    _, dx, _, dxdot = tangents
    out = bind(SENS, problem, x, res, xdot)
    parts = []
    if has_tangent(dxdot):
        parts.append(bind(SENS, problem, x, res, dxdot))
    if has_tangent(dx):
        parts.append(bind(SENS2, problem, x, xdot, dx))
    tangent = None
    for part in parts:
        tangent = part if tangent is None else jax.tree.map(jnp.add, tangent, part)
    return out, tangent


def _sens_transpose(ct, args):
    problem, x, res, xdot = args
    if ct is None:
        return None, None, None, None
    x_bar = bind(ADJ, problem, x, res, ct)
    return None, None, None, only_undefined(x_bar, xdot)


SENS = Rules("the forward sensitivity", _sens_impl, _sens_abstract, _sens_jvp, _sens_transpose)


# ---------------------------------------------------------------------------------------------
# ADJ(problem, x, res, ct) -> x_bar


def _adj_impl(problem, x, res, ct):
    ys, n_acc, result, rec, ev = res
    if ev is None:
        ct_ys, ct_ev = ct, None
    else:
        ct_ys, ct_ev = ct if ct is not None else (None, None)
        ct_t, ct_y = ct_ev if ct_ev is not None else (None, None)
        ct_ev = (jnp.zeros((), x.ts.dtype) if ct_t is None else ct_t,
                 jnp.zeros_like(x.y0) if ct_y is None else ct_y)
    if ct_ys is None:
        ct_ys = jnp.zeros_like(ys)
    return problem.cfg.adjoint.backward(problem, x, ys, n_acc, result, rec, ct_ys, ev, ct_ev)


def _adj_abstract(problem, x, res, ct):
    return _x_struct(x)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _adj_jvp(primals, tangents):
    problem, x, res, ct = primals
    _, dx, _, dct = tangents
    out = bind(ADJ, problem, x, res, ct)
    parts = []
    if has_tangent(dct):
        parts.append(bind(ADJ, problem, x, res, fill_zeros(dct, ct)))
    if has_tangent(dx):
        parts.append(bind(HESS, problem, x, ct, dx))
    tangent = None
    for part in parts:
        part = Primal(part.y0, part.ts, part.params, jnp.zeros_like(part.probe))
        tangent = part if tangent is None else _add(tangent, part)
    return out, tangent


def _adj_transpose(cts, args):
    problem, x, res, ct = args
    if not has_tangent(cts):
        return None, None, None, None
    w = fill_zeros(cts, x)
    return None, None, None, bind(SENS, problem, x, res, w)


ADJ = Rules("the adjoint", _adj_impl, _adj_abstract, _adj_jvp, _adj_transpose)


# ---------------------------------------------------------------------------------------------
# HESS(problem, x, ct, u) -> ∂ₓ(backward(x, ct))·u


def _hess_impl(problem, x, ct, u):
    if problem.has_events:
        raise NotImplementedError(_EVENTS_SECOND_ORDER)
    u = fill_zeros(u, x)
    _, out = jax.jvp(lambda xx: backward_from_scratch(problem, xx, ct), (x,), (u,))
    return Primal(out.y0, out.ts, out.params, jnp.zeros_like(x.probe))


def _hess_abstract(problem, x, ct, u):
    return _x_struct(x)


def _hess_jvp(primals, tangents):
    problem, x, ct, u = primals
    _, dx, dct, du = tangents
    if has_tangent(dx) or has_tangent(dct):
        raise NotImplementedError(_THIRD_ORDER)
    out = bind(HESS, problem, x, ct, u)
    return out, (bind(HESS, problem, x, ct, du) if has_tangent(du) else None)


def _hess_transpose(cts, args):
    problem, x, ct, u = args
    if not has_tangent(cts):
        return None, None, None, None
    return None, None, None, only_undefined(bind(HESS, problem, x, ct, fill_zeros(cts, x)), u)


HESS = Rules("the second derivative", _hess_impl, _hess_abstract, _hess_jvp, _hess_transpose)


# ---------------------------------------------------------------------------------------------
# SENS2(problem, x, xdot, dx) -> ∂ₓ(J(x) xdot)·dx


def _sens2_impl(problem, x, xdot, dx):
    if problem.has_events:
        raise NotImplementedError(_EVENTS_SECOND_ORDER)

    def sens(xx):
        return sensitivity(problem, xx, xdot)

    return jax.jvp(sens, (x,), (fill_zeros(dx, x),))[1]


def _sens2_abstract(problem, x, xdot, dx):
    return _ys_struct(x)


def _sens2_jvp(primals, tangents):
    raise NotImplementedError(_THIRD_ORDER)


def _sens2_transpose(ct, args):
    problem, x, xdot, dx = args
    if ct is None:
        return None, None, None, None
    if undefined(dx):
        return None, None, None, only_undefined(bind(HESS, problem, x, ct, xdot), dx)
    return None, None, only_undefined(bind(HESS, problem, x, ct, dx), xdot), None


SENS2 = Rules("the second forward derivative", _sens2_impl, _sens2_abstract, _sens2_jvp,
              _sens2_transpose)


def solve(problem: Problem, x: Primal):
    """``(ys, stats, result, events)`` of the adaptive solve, differentiable to second order
    (to first order with events)."""
    ys, stats, result, _, ev = bind(SOLVE, problem, x, False)
    return ys, stats, result, ev


