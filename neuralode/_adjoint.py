"""Gradient rules for adaptive solves.

Three ways to differentiate ``ys = ODESolve(y0, ts, params)`` in reverse mode, each a
``jax.custom_vjp`` around the forward ``lax.while_loop`` integrator:

* :class:`BacksolveAdjoint` — the paper's Algorithm 1: the adjoint ODE for ``[z, a, a_θ]`` is
  solved backwards interval by interval, ``z`` re-integrated backwards from the forward
  output at each output time. Memory does not grow with the number of steps.
* :class:`InterpolatedAdjoint` — the same adjoint ODE for ``[a, a_θ]`` with ``z(t)`` read from
  the forward solve's stored dense output: no reconstruction drift, memory O(steps).
* :class:`CheckpointAdjoint` — the exact gradient of the discrete forward solver, replaying its
  accepted steps in reverse with vector-Jacobian products: memory O(steps).

Gradients with respect to the output times use the identities (valid for the exact flow)
``dL/dt_i = ⟨∂L/∂y(t_i), f(t_i, y(t_i))⟩`` for ``i ≥ 1`` and ``dL/dt_0 = -⟨a(t_0), f(t_0, y0)⟩``,
where ``a(t_0)`` is the adjoint arriving at ``t_0``. They equal what the paper's extra channel
``a_t`` (``da_t/dt = -aᵀ∂f/∂t``) integrates to, without integrating it: ``d(a·f)/dt = a·∂f/∂t``
along the adjoint, so ``a_t(t) = -a(t)·f(t, z(t))`` exactly.

Backward statistics. Every mode accepts a zero "probe" array (``stats_probe`` of
:func:`neuralode.odeint`); the backward rule returns the backward solve's
``[num_steps, num_accepted, num_rejected, nfe]`` as that probe's cotangent, so
``jax.grad(loss, argnums=...)`` hands them to the caller under ``jit`` without side effects.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ._controller import PIController
from ._integrate import (
    Stats,
    dense_coeffs,
    direction_of,
    eval_dense,
    extra_stages,
    integrate_adaptive,
    rk_stages,
)
from ._solution import RESULT_MESSAGES, Result
from ._solvers import ButcherTableau

NUM_STATS = 4


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """Static settings of one adaptive solve (hashable)."""

    tab: ButcherTableau
    controller: PIController
    max_steps: int
    throw: bool
    has_dt0: bool

    def __hash__(self):
        return hash((id(self.tab), self.controller, self.max_steps, self.throw, self.has_dt0))

    def __eq__(self, other):
        return (
            isinstance(other, SolveConfig)
            and self.tab is other.tab
            and (self.controller, self.max_steps, self.throw, self.has_dt0)
            == (other.controller, other.max_steps, other.throw, other.has_dt0)
        )


class AbstractAdjoint:
    """Base class of the gradient modes of adaptive solves (static configuration)."""

    def _validate(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name, None)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ValueError(
                    f"{type(self).__name__}: `{name}` must be a positive number or None "
                    f"(got {value!r})."
                )

    def solve(self, fn, cfg: SolveConfig, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(AbstractAdjoint):
    """The continuous adjoint of the paper (Algorithm 1), O(1) memory in the number of steps.

    The backward pass solves the augmented ODE ``[z, a, a_θ]`` from each output time to the
    previous one, restarting ``z`` from the stored forward output there (a checkpoint at every
    output time) and adding ``∂L/∂y(t_i)`` into ``a``.

    Args:
        seminorm: Leave the parameter channel ``a_θ`` out of the backward error norm
            (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"): it never feeds back into the
            dynamics, so controlling its error only costs steps. ``False`` uses the full
            norm: the larger of the RMS norm of ``[z, a]`` and that of ``a_θ`` (each channel
            controlled on its own, as torchdiffeq's default adjoint norm that the seminorm
            paper compares against; one RMS over everything would let thousands of small
            parameter entries dilute the error of ``[z, a]``). The seminorm's ratio is never
            larger than the full norm's.
        rtol, atol: Tolerances of the backward solve; ``None`` (default) reuses the forward
            ones.
        drift_check: Backward reconstruction of ``z`` can drift away from the forward
            trajectory on problems that contract forward in time (the gradient is then wrong).
            At every output time the reconstructed ``z`` is compared with the stored forward
            value; if their RMS difference, scaled by ``atol + rtol·|y|``, exceeds
            ``drift_check`` the gradient is flagged (an error with ``throw=True``, NaN
            otherwise). ``None`` disables the check.

    Remedies when the drift check fires: add output times (each is a checkpoint), use
    :class:`InterpolatedAdjoint` or :class:`CheckpointAdjoint`, or tighten the tolerances.
    """

    seminorm: bool = True
    rtol: float | None = None
    atol: float | None = None
    drift_check: float | None = 1e4

    def __post_init__(self):
        self._validate()
        if self.drift_check is not None and not self.drift_check > 0:
            raise ValueError("BacksolveAdjoint: `drift_check` must be positive or None.")

    def solve(self, fn, cfg, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        return _backsolve(fn, cfg, self, y0, ts, diff, nondiff, rtol, atol, dt0, probe)


@dataclasses.dataclass(frozen=True)
class InterpolatedAdjoint(AbstractAdjoint):
    """Continuous adjoint with ``z(t)`` read from the forward solve's dense output.

    The forward pass keeps every accepted step's interpolating polynomial (a buffer of
    ``max_steps`` steps); the backward pass solves ``[a, a_θ]`` backwards and evaluates
    ``z(t)`` from that buffer instead of re-integrating it. No reconstruction drift, so it is
    accurate where :class:`BacksolveAdjoint` is not (problems that contract forward in
    time); memory ``O(max_steps × state)``.

    Args:
        seminorm: As for :class:`BacksolveAdjoint`.
        rtol, atol: Backward tolerances, default the forward ones.
    """

    seminorm: bool = True
    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self):
        self._validate()

    def solve(self, fn, cfg, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        return _interpolated(fn, cfg, self, y0, ts, diff, nondiff, rtol, atol, dt0, probe)


@dataclasses.dataclass(frozen=True)
class CheckpointAdjoint(AbstractAdjoint):
    """Exact gradient of the discrete forward solve (discretise-then-optimise).

    The forward pass stores the start of every accepted step (a buffer of ``max_steps``
    states); the backward pass replays the steps in reverse, taking vector-Jacobian products
    of each Runge-Kutta step and of the interpolation that produced each output. Step sizes
    are treated as constants (as every discrete adjoint does). No backward ODE solve, no
    reconstruction error; memory ``O(max_steps × state)``.
    """

    def solve(self, fn, cfg, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        return _checkpoint(fn, cfg, y0, ts, diff, nondiff, rtol, atol, dt0, probe)


# --------------------------------------------------------------------------------------
# Shared pieces


def _forward(fn, cfg: SolveConfig, y0, ts, params, rtol, atol, dt0, record=None):
    ys, stats, result, rec = _integrate(fn, cfg, y0, ts, params, rtol, atol, dt0, record)
    if cfg.throw:
        ys = eqx.branched_error_if(ys, result != Result.successful, result, RESULT_MESSAGES)
    return ys, stats, result, rec


def _integrate(fn, cfg: SolveConfig, y0, ts, params, rtol, atol, dt0, record):
    return integrate_adaptive(
        fn,
        y0,
        ts,
        params,
        tab=cfg.tab,
        controller=cfg.controller,
        rtol=rtol,
        atol=atol,
        dt0=dt0 if cfg.has_dt0 else None,
        max_steps=cfg.max_steps,
        record=record,
    )


def _zeros_like_nondiff(nondiff):
    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, jax.dtypes.float0)

    return jax.tree.map(zero, nondiff)


def _stats_vector(stats: Stats, dtype):
    return jnp.stack([jnp.asarray(s, dtype) for s in stats])


def _time_grads(fn, ts, ys, ct_ys, a0, params):
    """``dL/dt_i`` from the output cotangents and the adjoint arriving at ``t_0``."""
    fs = jax.vmap(lambda t, y: fn(t, y, params))(ts, ys)
    g = jnp.sum(ct_ys * fs, axis=1)
    return g.at[0].set(-jnp.dot(a0, fs[0]))


# --------------------------------------------------------------------------------------
# BacksolveAdjoint


def _backsolve(fn, cfg, adj, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
    @functools.partial(jax.custom_vjp)
    def solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        ys, stats, result, _ = _forward(fn, cfg, y0, ts, (diff, nondiff), rtol, atol, dt0)
        return ys, stats, result

    def fwd(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        out = solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe)
        return out, (out[0], ts, diff, nondiff, rtol, atol, dt0, probe)

    def bwd(res, cts):
        ys, ts, diff, nondiff, rtol, atol, dt0, probe = res
        ct_ys = cts[0]
        dtype = ys.dtype
        n = ys.shape[1]
        diff_flat, unravel_diff = ravel_pytree(diff)
        m = diff_flat.shape[0]
        b_rtol = rtol if adj.rtol is None else jnp.asarray(adj.rtol, dtype)
        b_atol = atol if adj.atol is None else jnp.asarray(adj.atol, dtype)

        def aug(t, s, p):
            d, nd = p
            z, a = s[:n], s[n : 2 * n]
            fz, vjp = jax.vjp(lambda zz, dd: fn(t, zz, (dd, nd)), z, d)
            a_z, a_d = vjp(a)
            return jnp.concatenate([fz, -a_z, -ravel_pytree(a_d)[0]])

        def interval(carry, xs):
            a, a_d, stats_acc, result = carry
            t_hi, t_lo, y_hi, y_lo, ct_hi = xs
            a = a + ct_hi
            s0 = jnp.concatenate([y_hi, a, jnp.zeros((m,), dtype)])
            out, stats, res_i, _ = integrate_adaptive(
                aug,
                s0,
                jnp.stack([t_hi, t_lo]),
                (diff, nondiff),
                tab=cfg.tab,
                controller=cfg.controller,
                rtol=b_rtol,
                atol=b_atol,
                dt0=None,
                max_steps=cfg.max_steps,
                norm_dims=2 * n if adj.seminorm else None,
                norm_split=None if adj.seminorm else 2 * n,
            )
            s1 = out[1]
            z_rec = s1[:n]
            result = jnp.where(result == Result.successful, res_i, result)
            if adj.drift_check is not None:
                scale = b_atol + b_rtol * jnp.abs(y_lo)
                drift = jnp.sqrt(jnp.mean(jnp.square((z_rec - y_lo) / scale)))
                result = jnp.where(
                    (result == Result.successful) & ~(drift <= adj.drift_check),
                    _DRIFT_CODE,
                    result,
                )
            stats_acc = stats_acc + _stats_vector(stats, dtype)
            return (s1[n : 2 * n], a_d + s1[2 * n :], stats_acc, result), None

        init = (
            jnp.zeros((n,), dtype),
            jnp.zeros((m,), dtype),
            jnp.zeros((NUM_STATS,), dtype),
            jnp.asarray(Result.successful, jnp.int32),
        )
        xs = (ts[1:], ts[:-1], ys[1:], ys[:-1], ct_ys[1:])
        xs = jax.tree.map(lambda x: x[::-1], xs)
        if ts.shape[0] > 1:
            (a, a_d, bstats, bresult), _ = lax.scan(interval, init, xs)
        else:
            a, a_d, bstats, bresult = init
        g_ts = _time_grads(fn, ts, ys, ct_ys, a, (diff, nondiff))
        g_y0 = a + ct_ys[0]
        grads = (g_y0, g_ts, unravel_diff(a_d))
        grads = _backward_failure_drift(bresult, grads, cfg)
        g_y0, g_ts, g_diff = grads
        return (
            g_y0,
            g_ts,
            g_diff,
            _zeros_like_nondiff(nondiff),
            jnp.zeros_like(rtol),
            jnp.zeros_like(atol),
            jnp.zeros_like(dt0),
            bstats.astype(probe.dtype),
        )

    solve.defvjp(fwd, bwd)
    return solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe)


_DRIFT_CODE = len(Result)
_DRIFT_MESSAGE = (
    "neuralode.BacksolveAdjoint: the backward re-integration of the state drifted away from "
    "the forward trajectory (its difference at an output time exceeded `drift_check` times "
    "the tolerance), so the continuous-adjoint gradient would be wrong. This happens on "
    "problems that contract forward in time (e.g. Van der Pol, chaotic systems). Use "
    "`adjoint=nde.InterpolatedAdjoint()` or `nde.CheckpointAdjoint()`, add intermediate "
    "output times (each one restarts the reconstruction), or tighten rtol/atol."
)


_BACKSOLVE_HINT = (
    " With BacksolveAdjoint this usually means that re-integrating the state backwards in "
    "time is unstable (the problem contracts forward in time, e.g. Van der Pol or a chaotic "
    "system). Remedies: adjoint=nde.InterpolatedAdjoint() or nde.CheckpointAdjoint() (no "
    "backward re-integration), or more output times in `ts` (each restarts the state from "
    "the forward solution)."
)
_INTERPOLATED_HINT = (
    " The adjoint ODE itself needed more steps than allowed: raise `max_steps` or loosen the "
    "adjoint tolerances (InterpolatedAdjoint(rtol=..., atol=...))."
)


def _backward_failure_drift(result, grads, cfg, hint=_BACKSOLVE_HINT):
    """NaN gradients after a failed backward solve; with ``throw`` a runtime error too."""
    failed = result != Result.successful
    if cfg.throw:
        messages = tuple(
            "neuralode: the backward (adjoint) solve of the gradient failed. " + m + hint
            for m in RESULT_MESSAGES
        ) + (_DRIFT_MESSAGE,)
        # The check guards every gradient leaf: whichever cotangent the caller uses, a failed
        # backward solve raises (a check on one leaf alone is dropped when that leaf is unused).
        grads = eqx.branched_error_if(grads, failed, result, messages)
    return jax.tree.map(lambda g: jnp.where(failed, jnp.nan, g), grads)


# --------------------------------------------------------------------------------------
# InterpolatedAdjoint


def _interpolated(fn, cfg, adj, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
    tab = cfg.tab

    @jax.custom_vjp
    def solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        ys, stats, result, _ = _forward(fn, cfg, y0, ts, (diff, nondiff), rtol, atol, dt0)
        return ys, stats, result

    def fwd(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        ys, stats, result, rec = _forward(
            fn, cfg, y0, ts, (diff, nondiff), rtol, atol, dt0, record="dense"
        )
        return (ys, stats, result), (ys, rec, ts, diff, nondiff, rtol, atol, dt0, probe)

    def bwd(res, cts):
        ys, rec, ts, diff, nondiff, rtol, atol, dt0, probe = res
        ct_ys = cts[0]
        dtype = ys.dtype
        n = ys.shape[1]
        diff_flat, unravel_diff = ravel_pytree(diff)
        m = diff_flat.shape[0]
        b_rtol = rtol if adj.rtol is None else jnp.asarray(adj.rtol, dtype)
        b_atol = atol if adj.atol is None else jnp.asarray(adj.atol, dtype)
        sign = direction_of(ts)
        count = rec.count
        # Padding entries get start time +inf so that searchsorted never selects them.
        rec_t = jnp.where(jnp.arange(cfg.max_steps) < count, rec.t, jnp.inf)

        def z_of(t):
            tau = sign * t
            idx = jnp.clip(jnp.searchsorted(rec_t, tau, side="right") - 1, 0, count - 1)
            theta = (tau - rec_t[idx]) / rec.h[idx]
            return eval_dense(rec.y[idx], rec.coeffs[idx], theta)

        def aug(t, s, p):
            d, nd = p
            a = s[:n]
            z = z_of(t)
            _, vjp = jax.vjp(lambda zz, dd: fn(t, zz, (dd, nd)), z, d)
            a_z, a_d = vjp(a)
            return jnp.concatenate([-a_z, -ravel_pytree(a_d)[0]])

        def interval(carry, xs):
            a, a_d, stats_acc, result = carry
            t_hi, t_lo, ct_hi = xs
            a = a + ct_hi
            s0 = jnp.concatenate([a, jnp.zeros((m,), dtype)])
            out, stats, res_i, _ = integrate_adaptive(
                aug,
                s0,
                jnp.stack([t_hi, t_lo]),
                (diff, nondiff),
                tab=tab,
                controller=cfg.controller,
                rtol=b_rtol,
                atol=b_atol,
                dt0=None,
                max_steps=cfg.max_steps,
                norm_dims=n if adj.seminorm else None,
                norm_split=None if adj.seminorm else n,
            )
            s1 = out[1]
            result = jnp.where(result == Result.successful, res_i, result)
            stats_acc = stats_acc + _stats_vector(stats, dtype)
            return (s1[:n], a_d + s1[n:], stats_acc, result), None

        init = (
            jnp.zeros((n,), dtype),
            jnp.zeros((m,), dtype),
            jnp.zeros((NUM_STATS,), dtype),
            jnp.asarray(Result.successful, jnp.int32),
        )
        xs = jax.tree.map(lambda x: x[::-1], (ts[1:], ts[:-1], ct_ys[1:]))
        if ts.shape[0] > 1:
            (a, a_d, bstats, bresult), _ = lax.scan(interval, init, xs)
        else:
            a, a_d, bstats, bresult = init
        g_ts = _time_grads(fn, ts, ys, ct_ys, a, (diff, nondiff))
        grads = (a + ct_ys[0], g_ts, unravel_diff(a_d))
        g_y0, g_ts, g_diff = _backward_failure_drift(bresult, grads, cfg, _INTERPOLATED_HINT)
        return (
            g_y0,
            g_ts,
            g_diff,
            _zeros_like_nondiff(nondiff),
            jnp.zeros_like(rtol),
            jnp.zeros_like(atol),
            jnp.zeros_like(dt0),
            bstats.astype(probe.dtype),
        )

    solve.defvjp(fwd, bwd)
    return solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe)


# --------------------------------------------------------------------------------------
# CheckpointAdjoint


def _checkpoint(fn, cfg, y0, ts, diff, nondiff, rtol, atol, dt0, probe):
    tab = cfg.tab

    @jax.custom_vjp
    def solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        ys, stats, result, _ = _forward(fn, cfg, y0, ts, (diff, nondiff), rtol, atol, dt0)
        return ys, stats, result

    def fwd(y0, ts, diff, nondiff, rtol, atol, dt0, probe):
        ys, stats, result, rec = _forward(
            fn, cfg, y0, ts, (diff, nondiff), rtol, atol, dt0, record="steps"
        )
        return (ys, stats, result), (ys, rec, ts, diff, nondiff, rtol, atol, dt0, probe)

    def bwd(res, cts):
        ys, rec, ts, diff, nondiff, rtol, atol, dt0, probe = res
        ct_ys = cts[0]
        dtype = ys.dtype
        n_out = ts.shape[0]
        sign = direction_of(ts)
        taus = sign * ts

        def step(y, d, t, h):
            """One accepted step in internal time: returns (y1, dense coefficients)."""

            def g(tt, yy):
                return sign * fn(sign * tt, yy, (d, nondiff))

            t_end = taus[-1]
            f0 = g(t, y)
            y1, ks = rk_stages(g, tab, t, y, f0, h, t_hi=t_end)
            full = list(ks)
            if not tab.fsal:
                full.append(g(jnp.minimum(t + h, t_end), y1))
            full = extra_stages(g, tab, t, y, h, full, t_hi=t_end)
            return y1, dense_coeffs(tab, h, full)

        s = tab.num_stages
        # One backward evaluation = one stage recomputed together with its VJP.
        nfe_per_step = s + (0 if tab.fsal else 1) + tab.num_extra

        def body(carry):
            k, j, a, a_d, ct_out = carry
            # ``k``: accepted step being replayed (descending), ``j``: highest output index
            # not yet assigned to a step. Outputs with taus[j] > t_k belong to step k.
            t, h, y = rec.t[k], rec.h[k], rec.y[k]

            def gather(c):
                j, ct_c, ct_y = c
                theta = (taus[j] - t) / h
                powers = theta ** jnp.arange(1, tab.interp.shape[1] + 1, dtype=dtype)
                ct_c = ct_c + powers[:, None] * ct_ys[j][None, :]
                return j - 1, ct_c, ct_y + ct_ys[j]

            def more(c):
                j, _, _ = c
                return (j >= 1) & (taus[jnp.maximum(j, 0)] > t)

            ct_c0 = jnp.zeros((tab.interp.shape[1], y.shape[0]), dtype)
            j, ct_c, ct_y_direct = lax.while_loop(more, gather, (j, ct_c0, jnp.zeros_like(y)))
            _, vjp = jax.vjp(lambda yy, dd: step(yy, dd, t, h), y, diff)
            g_y, g_d = vjp((a, ct_c))
            a_d = jax.tree.map(jnp.add, a_d, g_d)
            return k - 1, j, g_y + ct_y_direct, a_d, ct_out

        def cond(carry):
            return carry[0] >= 0

        a0 = jnp.zeros_like(ys[0])
        ad0 = jax.tree.map(jnp.zeros_like, diff)
        init = (rec.count - 1, jnp.asarray(n_out - 1, jnp.int32), a0, ad0, None)
        if n_out > 1:
            _, _, a, a_d, _ = lax.while_loop(cond, body, init)
        else:
            a, a_d = a0, ad0
        g_ts = _time_grads(fn, ts, ys, ct_ys, a, (diff, nondiff))
        bstats = jnp.stack(
            [rec.count, rec.count, jnp.zeros_like(rec.count), rec.count * nfe_per_step]
        ).astype(probe.dtype)
        return (
            a + ct_ys[0],
            g_ts,
            a_d,
            _zeros_like_nondiff(nondiff),
            jnp.zeros_like(rtol),
            jnp.zeros_like(atol),
            jnp.zeros_like(dt0),
            bstats,
        )

    solve.defvjp(fwd, bwd)
    return solve(y0, ts, diff, nondiff, rtol, atol, dt0, probe)
