"""The reverse passes of the continuous adjoints: :class:`~neuralode.BacksolveAdjoint` (the
paper's Algorithm 1) and :class:`~neuralode.InterpolatedAdjoint` (``z`` from the dense output).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._backward import (
    Extra,
    adjoint_config,
    buffered,
    finish,
    integrate_adjoint,
    loop_stats,
    sanitize,
    single_time,
    tolerances,
)
from ._checkpoint import step_size, walk
from ._controller import rms_norm
from ._forward import NUM_STATS, Primal, Problem, internal
from ._integrate import NEXT, RESULT, STEPS, LoopState, T, start
from ._solution import Result
from ._solvers._rk import eval_dense

_BACKSOLVE_HINT = (
    " With BacksolveAdjoint this usually means that re-integrating the state backwards in "
    "time is unstable (the problem contracts forward in time, e.g. Van der Pol or a chaotic "
    "system). Remedies: adjoint=nde.CheckpointAdjoint() or nde.InterpolatedAdjoint() (no "
    "backward re-integration), or more output times in `ts` (each restarts the state from "
    "the forward solution)."
)
_INTERPOLATED_HINT = (
    " The adjoint ODE itself needed more steps than allowed: raise `max_steps` or loosen the "
    "adjoint tolerances (InterpolatedAdjoint(rtol=..., atol=...))."
)


class _Setup(NamedTuple):
    ct: Any  # the output cotangents
    ys: Any  # the outputs, zero where the forward solve failed
    skip: Any  # the forward solve failed: no backward pass
    params_flat: Any
    unravel: Any


def _setup(x: Primal, ys, fwd_result, extra: Extra) -> _Setup:
    params_flat, unravel = ravel_pytree(x.params)
    skip = ~Result.succeeded(fwd_result)
    return _Setup(extra.ct, sanitize(ys, skip), skip, params_flat, unravel)


def backsolve_backward(mode, problem: Problem, x: Primal, ys, fwd_result,
               extra: Extra):
    ct, ys, skip, params_flat, unravel = _setup(x, ys, fwd_result, extra)
    n_out, n = ys.shape
    m = params_flat.shape[0]
    if n_out == 1:
        return single_time(problem, x, ys, ct, skip)
    sign, taus, _ = internal(problem, x)
    rtol, atol = tolerances(mode, problem)

    def fn(t, z, p):
        return problem.fn(t, z, p, problem.nondiff)

    # The backward solve runs in ρ = -τ (increasing), real time t = -sign·ρ, so the loop's
    # direction is -sign and g is the real-time field of [z, a] (and of a_θ):
    # dz/dt = f, da/dt = -a f_z, da_θ/dt = -a f_θ.
    direction = -sign

    def g(rho, s):
        t = direction * rho
        z, a = s[:n], s[n:]
        if buffered(mode):
            fz, vjp = jax.vjp(lambda zz: fn(t, zz, x.params), z)
            (a_z,) = vjp(a)
            return jnp.concatenate([fz, -a_z]).astype(s.dtype)
        fz, vjp = jax.vjp(lambda zz, pp: fn(t, zz, pp), z, x.params)
        a_z, a_p = vjp(a)
        ds = jnp.concatenate([fz, -a_z]).astype(s.dtype)
        return ds, (-ravel_pytree(a_p)[0]).astype(params_flat.dtype)

    def flush(buf):
        # Σ_j w_j (-a_j f_θ(t_j, z_j)) with the signed weights w_j, as one VJP.
        t = direction * buf["t"]
        z, a = buf["y"][:, :n], buf["y"][:, n:]
        _, vjp = jax.vjp(lambda p: jax.vmap(lambda tt, zz: fn(tt, zz, p))(t, z), x.params)
        (a_p,) = vjp((-buf["w"][:, None] * a).astype(a.dtype))
        return ravel_pytree(a_p)[0]

    def jump(k, y, q):
        i = n_out - 2 - k
        z, a = y[:n], y[n:]
        result = Result.successful
        if mode.drift_check is not None:
            scale = atol + rtol * jnp.abs(ys[i])
            drift = rms_norm((z - ys[i]) / scale)
            result = jnp.where(drift <= mode.drift_check, Result.successful, Result.drift)
        return jnp.concatenate([ys[i], a + ct[i]]), q, result

    a0, first = extra.start_state(ys, taus)
    rho0 = -extra.end
    rho_end = jnp.where(skip, rho0, -taus[0])
    lcfg = adjoint_config(mode, problem)
    s0 = jnp.concatenate([extra.y_end, a0])
    st = start(g, lcfg, rho0, rho_end, s0, jnp.zeros((m,), params_flat.dtype), rtol, atol,
               direction=direction)
    st = st._replace(ints=st.ints.at[NEXT].set(first))
    stops = extra.stops(taus, jump, n_out)
    st = integrate_adjoint(mode, problem, g, flush, st, rho_end, rtol, atol, stops,
                            st.ints[STEPS] + problem.cfg.max_steps, direction)
    a_final = st.y[n:]
    return finish(problem, x, ys, ct, skip, a_final, a_final - ct[0], unravel(st.q),
                   loop_stats(st), st.ints[RESULT], _BACKSOLVE_HINT, extra.c_params)


def interpolated_backward(mode, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                  rec, extra: Extra):
    ct, ys, skip, params_flat, unravel = _setup(x, ys, fwd_result, extra)
    cfg = problem.cfg
    n_out, n = ys.shape
    m = params_flat.shape[0]
    if n_out == 1:
        return single_time(problem, x, ys, ct, skip)
    n_acc = jnp.where(skip, 0, n_acc)
    sign, taus, _ = internal(problem, x)
    t_end = taus[-1]
    rtol, atol = tolerances(mode, problem)
    lcfg = adjoint_config(mode, problem)

    def fn(t, z, p):
        return problem.fn(t, z, p, problem.nondiff)

    direction = -sign  # the backward solve: ρ = -τ increasing, real time t = -sign·ρ

    def make(z_of):
        """``(g, flush)``: the real-time adjoint field ``da/dt = -a f_z(t, z(t))`` (and
        ``da_θ/dt = -a f_θ``) with ``z`` read at ``τ = -ρ`` from ``z_of``."""

        def g(rho, a):
            t, z = direction * rho, z_of(-rho)
            if buffered(mode):
                _, vjp = jax.vjp(lambda zz: fn(t, zz, x.params), z)
                (a_z,) = vjp(a)
                return (-a_z).astype(a.dtype)
            _, vjp = jax.vjp(lambda zz, pp: fn(t, zz, pp), z, x.params)
            a_z, a_p = vjp(a)
            return (-a_z).astype(a.dtype), (-ravel_pytree(a_p)[0]).astype(params_flat.dtype)

        def flush(buf):
            t, z = direction * buf["t"], jax.vmap(z_of)(-buf["t"])
            _, vjp = jax.vjp(lambda p: jax.vmap(lambda tt, zz: fn(tt, zz, p))(t, z), x.params)
            (a_p,) = vjp((-buf["w"][:, None] * buf["y"]).astype(buf["y"].dtype))
            return ravel_pytree(a_p)[0]

        return g, flush

    def jump(k, y, q):
        return y + ct[n_out - 2 - k], q, jnp.asarray(Result.successful, jnp.int32)

    stops = extra.stops(taus, jump, n_out)

    def leaf(rec_obj, buf, level, count, seg_end, carry):
        st_adj, limit = carry
        valid = jnp.arange(rec_obj.slots) < count
        ts_buf = jnp.where(valid, buf["fs"][:, T], jnp.inf)

        def z_of(tau):
            j = jnp.clip(jnp.sum(ts_buf <= tau) - 1, 0, jnp.maximum(count - 1, 0))
            st_j = LoopState(buf["y"][j], buf["f"][j], None, buf["fs"][j], buf["ints"][j])
            theta = jnp.clip((tau - st_j.fs[T]) / step_size(st_j, t_end), 0.0, 1.0)
            return eval_dense(buf["y"][j], buf["c"][j], theta).astype(buf["y"].dtype)

        g, flush = make(z_of)
        rho_to = jnp.where(count > 0, -buf["fs"][0, T], st_adj.fs[T])
        st_adj = integrate_adjoint(mode, problem, g, flush, st_adj, rho_to, rtol, atol, stops,
                                    limit, direction)
        return st_adj, limit

    a0, first = extra.start_state(ys, taus)
    rho0 = -extra.end
    # The first step size is chosen with z frozen at its value at the start (its second
    # evaluation only guides the guess; the derivative at ρ0 itself is exact there).
    g0, _ = make(lambda tau: extra.y_end)
    rho_end = jnp.where(skip, rho0, -taus[0])
    st0 = start(g0, lcfg, rho0, rho_end, a0, jnp.zeros((m,), params_flat.dtype), rtol,
                atol, direction=direction)
    st0 = st0._replace(ints=st0.ints.at[NEXT].set(first))
    bstats = jnp.zeros((NUM_STATS,), jnp.int32)
    limit = st0.ints[STEPS] + cfg.max_steps
    (st, _), bstats = walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf, (st0, limit),
                            bstats)
    bstats = bstats + loop_stats(st)
    return finish(problem, x, ys, ct, skip, st.y, st.y - ct[0], unravel(st.q), bstats,
                   st.ints[RESULT], _INTERPOLATED_HINT, extra.c_params)
