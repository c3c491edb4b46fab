"""The pure integrators: flat state in, outputs at ``ts`` and statistics out.

Everything here works on one flat 1-D state array ``y`` and a vector field
``fn(t, y, params) -> dy/dt`` on flat arrays; ``neuralode._odeint`` does the pytree
bookkeeping. Two integrators:

* :func:`integrate_adaptive`: an embedded Runge-Kutta pair inside one ``lax.while_loop``.
  Steps are not clipped to the output times; outputs come from each step's dense
  interpolant (an inner ``while_loop`` writes every output time that falls in an accepted
  step). Only the last step is clipped so that ``f`` is never evaluated past the final time.
* :func:`integrate_fixed`: a fixed-step method as nested ``lax.scan`` over output intervals
  and sub-steps, differentiable by plain reverse-mode autodiff (the paper's RK-Net).

Both integrate in the direction of ``ts``: for decreasing ``ts`` they solve the mirrored
problem ``ds/dτ = -f(-τ, s)`` forwards, a runtime sign, so direction never recompiles.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._controller import (
    PIController,
    dtmax_value,
    dtmin_value,
    error_scale,
    initial_step,
    rms_norm,
    step_factor,
)
from ._solution import Result
from ._solvers import ButcherTableau

# Up to this many output times (and output entries, times x state size), every accepted step
# evaluates its interpolant at all of them and selects (no branch, no inner loop): cheaper for
# small states, where a conditional costs more than the arithmetic (Van der Pol, Lorenz: 4-7%
# per solve). Beyond, a conditional inner loop visits only the output times inside the step
# (cheaper for large states: 4% on a 512-entry MLP state with two output times).
_SELECT_OUTPUTS_MAX = 8
_SELECT_ENTRIES_MAX = 256


def _combine(base, h, coeffs, ks):
    """``base + h Σ_j coeffs[j] ks[j]`` skipping zero coefficients (unrolled, fused by XLA)."""
    acc = None
    for cj, kj in zip(coeffs, ks, strict=False):
        if cj == 0.0:
            continue
        term = kj if cj == 1.0 else float(cj) * kj
        acc = term if acc is None else acc + term
    if acc is None:
        return base
    return acc * h if base is None else base + h * acc


def _stage_time(t, c, h, t_lo, t_hi):
    """``t + c h``, clamped to ``[t_lo, t_hi]`` when given (rounding can overshoot an ulp)."""
    tc = t + float(c) * h
    if t_hi is not None:
        tc = jnp.minimum(tc, t_hi)
    if t_lo is not None:
        tc = jnp.maximum(tc, t_lo)
    return tc


def rk_stages(fn, tab: ButcherTableau, t, y, f0, h, t_lo=None, t_hi=None):
    """One explicit Runge-Kutta step from ``(t, y)`` with first stage ``f0``.

    Stage times are clamped to ``[t_lo, t_hi]`` when given, so that ``fn`` is never evaluated
    outside the integration interval, even by an ulp. Returns ``(y1, ks)`` where ``ks`` is the
    list of the ``s`` tableau stages.
    """
    ks = [f0]
    for i in range(1, tab.num_stages):
        yi = _combine(y, h, tab.a[i, :i], ks)
        ks.append(fn(_stage_time(t, tab.c[i], h, t_lo, t_hi), yi))
    y1 = _combine(y, h, tab.b, ks)
    return y1, ks


def error_ratio(
    tab: ButcherTableau, ks, h, y0, y1, rtol, atol, norm_dims=None, poison=None, norm_split=None
):
    """Scaled RMS error estimate of a step (``<= 1`` means accept).

    ``norm_dims`` restricts the norm to the first ``norm_dims`` state entries (a seminorm).
    ``norm_split`` (with ``norm_dims=None``) takes the larger of the RMS norms of the entries
    before and from ``norm_split`` (a mixed norm, so a large block of small entries cannot
    dilute the error of a small block). ``poison`` (the whole new state) makes the ratio NaN if
    it holds a NaN or inf, in the same reduction (``0·x`` is NaN exactly for non-finite ``x``).
    """
    if norm_dims is None and norm_split is not None and 0 < norm_split < y0.shape[0]:
        head = error_ratio(
            tab, [k[:norm_split] for k in ks], h, y0[:norm_split], y1[:norm_split], rtol, atol,
            poison=None if poison is None else jnp.sum(poison),
        )
        tail = error_ratio(
            tab, [k[norm_split:] for k in ks], h, y0[norm_split:], y1[norm_split:], rtol, atol
        )
        # NaN in either half propagates (jnp.maximum keeps NaN).
        return jnp.maximum(head, tail)
    if norm_dims is not None:
        ks = [k[:norm_dims] for k in ks]
        y0, y1 = y0[:norm_dims], y1[:norm_dims]
    scale = error_scale(y0, y1, rtol, atol)
    scaled = _combine(None, h, tab.b_err, ks) / scale
    if poison is not None:
        if norm_dims is None:
            scaled = scaled + 0.0 * poison
        else:
            scaled = scaled + 0.0 * jnp.sum(poison)
    e5 = rms_norm(scaled)
    if tab.b_err2 is None:
        return e5
    # Hairer's DOP853 combination of the 5th and 3rd order estimates.
    e3 = rms_norm(_combine(None, h, tab.b_err2, ks) / scale)
    denom = jnp.sqrt(e5 * e5 + 0.01 * e3 * e3)
    # denom == 0 only if e5 == 0 (ratio 0); NaN/inf propagate so bad steps are rejected.
    return e5 * e5 / jnp.where(denom == 0, 1.0, denom)


def extra_stages(fn, tab: ButcherTableau, t, y, h, ks_full, t_hi=None):
    """Append the dense-output-only stages of ``tab`` to ``ks_full`` (list, in place)."""
    for i in range(tab.num_extra):
        row = tab.extra_a[i]
        yi = _combine(y, h, row[: len(ks_full)], ks_full)
        ks_full.append(fn(_stage_time(t, tab.extra_c[i], h, None, t_hi), yi))
    return ks_full


def dense_coeffs(tab: ButcherTableau, h, ks_full):
    """Polynomial coefficients ``[c_1..c_P]`` (shape ``(P, n)``): ``y(θ) = y0 + Σ c_p θ^p``."""
    # Unrolled weighted sums with constant coefficients (fused elementwise by XLA) rather than
    # a small matrix product, which XLA:CPU dispatches as a comparatively slow dot.
    interp = tab.interp[: len(ks_full)]
    rows = []
    for p in range(interp.shape[1]):
        row = _combine(None, h, interp[:, p], ks_full)
        rows.append(jnp.zeros_like(ks_full[0]) if row is None else row)
    return jnp.stack(rows)


def eval_dense(y0, coeffs, theta):
    """Evaluate ``y0 + Σ_p coeffs[p-1] θ^p`` by Horner's rule."""
    acc = coeffs[-1]
    for p in range(coeffs.shape[0] - 2, -1, -1):
        acc = coeffs[p] + theta * acc
    return y0 + theta * acc


class Stats(NamedTuple):
    num_steps: Any
    num_accepted: Any
    num_rejected: Any
    nfe: Any

    def as_dict(self):
        return dict(self._asdict())


class StepRecord(NamedTuple):
    """Accepted steps kept for the checkpointed and interpolated adjoints.

    ``t[i]``, ``h[i]`` and ``y[i]`` are the start time, size and start state of accepted
    step ``i`` (in the solver's internal, increasing time ``τ = sign · t``), ``coeffs[i]`` its
    dense polynomial (only when asked for); entries past ``count`` are padding.
    """

    t: Any
    h: Any
    y: Any
    coeffs: Any
    count: Any


def direction_of(ts):
    if ts.shape[0] < 2:
        return jnp.ones((), ts.dtype)
    return jnp.where(ts[-1] >= ts[0], 1.0, -1.0).astype(ts.dtype)


def integrate_adaptive(
    fn,
    y0,
    ts,
    params,
    *,
    tab: ButcherTableau,
    controller: PIController,
    rtol,
    atol,
    dt0,
    max_steps: int,
    record: str | None = None,
    norm_dims: int | None = None,
    norm_split: int | None = None,
):
    """Solve ``dy/dt = fn(t, y, params)`` with an adaptive embedded RK pair.

    Args:
        fn: Flat vector field ``fn(t, y, params)``.
        y0: Flat initial state, shape ``(n,)``.
        ts: Output times, shape ``(N,)``, strictly monotonic (either direction).
        params: Pytree passed to ``fn``.
        tab: Tableau with an error estimate and dense output.
        controller: Step-size controller settings.
        rtol, atol: Tolerances (traced scalars).
        dt0: Initial step magnitude, or ``None`` for the automatic choice.
        max_steps: Maximum number of attempted steps.
        record: ``None``, ``"steps"`` (keep each accepted step's start) or ``"dense"`` (also
            its dense polynomial), for the memory-hungry adjoints.
        norm_dims: If set, error control sees only the first ``norm_dims`` state entries
            (the seminorm of the adjoint solve); the rest is integrated without control.
        norm_split: If set (and ``norm_dims`` is not), the error norm is the larger of the
            RMS norms of the entries before and from ``norm_split`` (the adjoint's full norm:
            the state channels and the parameter channel each controlled on their own).

    Returns:
        ``(ys, stats, result, steps)``: outputs of shape ``(N, n)`` (NaN where not reached),
        :class:`Stats`, an integer :class:`Result` code and a :class:`StepRecord` or ``None``.
    """
    dtype = y0.dtype
    n_out = ts.shape[0]
    sign = direction_of(ts)
    taus = sign * ts  # increasing
    t0, t_end = taus[0], taus[-1]
    rtol = jnp.asarray(rtol, dtype)
    atol = jnp.asarray(atol, dtype)
    dtmin = dtmin_value(controller)
    dtmax = dtmax_value(controller)
    q = tab.error_order
    has_extra = tab.num_extra > 0

    def g(tau, y):
        return sign * fn(sign * tau, y, params)

    f0 = g(t0, y0)
    nfe0 = 1
    if dt0 is None:
        if norm_dims is None:
            h0 = initial_step(g, t0, y0, f0, t_end, q, rtol, atol)
        else:
            h0 = initial_step(
                lambda tt, yy: g(tt, yy)[:norm_dims], t0, y0[:norm_dims], f0[:norm_dims],
                t_end, q, rtol, atol, full_y0=y0, full_f0=f0,
            )
        nfe0 += 1
    else:
        h0 = jnp.minimum(jnp.abs(jnp.asarray(dt0, dtype)), t_end - t0)
    h0 = jnp.minimum(h0, dtmax)

    ys = jnp.full((n_out, y0.shape[0]), jnp.nan, dtype).at[0].set(y0)
    start_ok = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(f0))
    result0 = jnp.where(start_ok, Result.successful, Result.nonfinite).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)

    if record is not None:
        rec_t = jnp.zeros((max_steps,), dtype)
        rec_h = jnp.zeros((max_steps,), dtype)
        rec_y = jnp.zeros((max_steps, y0.shape[0]), dtype)
        if record == "dense":
            degree = tab.interp.shape[1]
            rec_c = jnp.zeros((max_steps, degree, y0.shape[0]), dtype)
        else:
            rec_c = None
        rec = (rec_t, rec_h, rec_y, rec_c)
    else:
        rec = None

    # Loop state, packed into few arrays: every array of the loop state costs its own select /
    # update kernel per step, which dominates the step cost of small systems on XLA:CPU.
    #   yf:  [y, f(t, y)]                                   (2n,)   state dtype
    #   fsc: [t, h, previous accepted error ratio]          (3,)    state dtype
    #   isc: [i_out, steps, accepted, rejected, nfe, result, rejected_last, saw_nonfinite] int32
    n = y0.shape[0]
    init = (
        jnp.concatenate([y0, f0]),
        jnp.stack([t0, h0, jnp.ones((), dtype)]),  # PI memory 1: neutral before the first step
        jnp.stack(
            [jnp.asarray(v, jnp.int32) for v in (1, 0, 0, 0, nfe0, result0, 0, 0)]
        ),
        ys,
        rec,
    )

    def cond(state):
        _, fsc, isc, _, _ = state
        return (fsc[0] < t_end) & (isc[1] < max_steps) & (isc[5] == Result.successful)

    def body(state):
        yf, fsc, isc, ys, rec = state
        y, f0 = yf[:n], yf[n:]
        t, h, prev_ratio = fsc[0], fsc[1], fsc[2]
        i_out, n_acc = isc[0], isc[2]
        rejected_last = isc[6] != 0
        saw_nonfinite = isc[7] != 0
        remaining = t_end - t
        last = h >= remaining
        h_eff = jnp.where(last, remaining, h)
        y1, ks = rk_stages(g, tab, t, y, f0, h_eff, t_hi=t_end)
        t1 = jnp.where(last, t_end, t + h_eff)
        ratio = error_ratio(tab, ks, h_eff, y, y1, rtol, atol, norm_dims, y1, norm_split)
        finite = jnp.isfinite(ratio)
        accepted = finite & (ratio <= 1.0)
        step_nfe = tab.num_stages - 1
        if tab.fsal:
            f1 = ks[-1]
            ks_full = list(ks)
        else:
            f1 = g(t1, y1)
            ks_full = list(ks) + [f1]
            step_nfe += 1

        # Dense output for every output time in (t, t1] of an accepted step.
        def write_outputs(carry):
            i_out, ys, extra_nfe = carry
            full = list(ks_full)
            if has_extra:
                full = extra_stages(g, tab, t, y, h_eff, full, t_hi=t_end)
            coeffs = dense_coeffs(tab, h_eff, full)

            def out_cond(c):
                i, _ = c
                return (i < n_out) & (taus[jnp.minimum(i, n_out - 1)] <= t1)

            def out_body(c):
                i, ys = c
                theta = (taus[i] - t) / h_eff
                yi = jnp.where(taus[i] == t1, y1, eval_dense(y, coeffs, theta))
                return i + 1, ys.at[i].set(yi)

            i_out, ys = lax.while_loop(out_cond, out_body, (i_out, ys))
            return i_out, ys, extra_nfe + tab.num_extra

        if (
            not has_extra
            and n_out <= _SELECT_OUTPUTS_MAX
            and n_out * y0.shape[0] <= _SELECT_ENTRIES_MAX
        ):
            # Few output times: evaluate the step's interpolant at all of them and keep those
            # inside this accepted step. Branch-free, O(n_out · n) per step.
            coeffs = dense_coeffs(tab, h_eff, ks_full)
            inside = accepted & (taus > t) & (taus <= t1)
            theta = jnp.where(inside, (taus - t) / h_eff, 0.0)
            vals = eval_dense(y[None, :], coeffs[:, None, :], theta[:, None])
            vals = jnp.where((taus == t1)[:, None], y1[None, :], vals)
            ys = jnp.where(inside[:, None], vals, ys)
            i_out = i_out + jnp.sum(inside, dtype=i_out.dtype)
            extra_nfe = zero
        else:
            has_out = accepted & (i_out < n_out) & (taus[jnp.minimum(i_out, n_out - 1)] <= t1)
            i_out, ys, extra_nfe = lax.cond(
                has_out, write_outputs, lambda c: c, (i_out, ys, zero)
            )

        if rec is not None:
            rec_t, rec_h, rec_y, rec_c = rec
            idx = jnp.where(accepted, n_acc, max_steps)  # out of range -> dropped
            rec_t = rec_t.at[idx].set(t, mode="drop")
            rec_h = rec_h.at[idx].set(h_eff, mode="drop")
            rec_y = rec_y.at[idx].set(y, mode="drop")
            if rec_c is not None:
                full = list(ks_full)
                if has_extra:
                    full = extra_stages(g, tab, t, y, h_eff, full, t_hi=t_end)
                    step_nfe += tab.num_extra
                rec_c = rec_c.at[idx].set(dense_coeffs(tab, h_eff, full), mode="drop")
            rec = (rec_t, rec_h, rec_y, rec_c)

        factor = step_factor(
            ratio, prev_ratio, accepted, rejected_last, q, controller, tab.controller_beta
        )
        h_new = jnp.minimum(h_eff * factor, dtmax)
        t_new = jnp.where(accepted, t1, t)
        underflow = (~last | ~accepted) & ((h_new < dtmin) | (t_new + h_new <= t_new))
        # A step-size collapse after any non-finite rejection is reported as non-finite.
        saw_nonfinite = saw_nonfinite | ~finite
        result = jnp.where(
            underflow,
            jnp.where(saw_nonfinite, Result.nonfinite, Result.dt_min_reached),
            isc[5],
        )
        yf = jnp.where(accepted, jnp.concatenate([y1, f1]), yf)
        fsc = jnp.stack([t_new, h_new, jnp.where(accepted, jnp.maximum(ratio, 1e-4), prev_ratio)])
        acc_i = accepted.astype(jnp.int32)
        isc = jnp.stack(
            [
                i_out,
                isc[1] + 1,
                isc[2] + acc_i,
                isc[3] + (1 - acc_i),
                isc[4] + step_nfe + extra_nfe,
                result.astype(jnp.int32),
                1 - acc_i,
                saw_nonfinite.astype(jnp.int32),
            ]
        )
        return yf, fsc, isc, ys, rec

    if n_out == 1:
        final = init
    else:
        final = lax.while_loop(cond, body, init)
    _, fsc, isc, ys, rec = final
    t = fsc[0]
    n_steps, n_acc, n_rej, nfe, result = isc[1], isc[2], isc[3], isc[4], isc[5]
    result = jnp.where(
        (result == Result.successful) & (t < t_end), Result.max_steps_reached, result
    ).astype(jnp.int32)
    stats = Stats(n_steps, n_acc, n_rej, nfe)
    steps = None
    if rec is not None:
        steps = StepRecord(rec[0], rec[1], rec[2], rec[3], n_acc)
    return ys, stats, result, steps


def integrate_fixed(fn, y0, ts, params, *, tab: ButcherTableau, num_sub: int):
    """Fixed-step integration: ``num_sub`` equal steps inside each output interval.

    Plain ``lax.scan`` loops, so reverse-mode autodiff differentiates the discrete solver
    exactly (memory grows with the number of steps).
    """
    dtype = y0.dtype

    def step(y, t, h, t_lo, t_hi):
        f0 = fn(t, y, params)
        y1, _ = rk_stages(lambda tt, yy: fn(tt, yy, params), tab, t, y, f0, h, t_lo, t_hi)
        return y1

    def interval(y, t_pair):
        ta, tb = t_pair
        h = (tb - ta) / num_sub
        t_lo, t_hi = jnp.minimum(ta, tb), jnp.maximum(ta, tb)

        def sub(y, j):
            t = jnp.clip(ta + j.astype(dtype) * h, t_lo, t_hi)
            return step(y, t, h, t_lo, t_hi), None

        y, _ = lax.scan(sub, y, jnp.arange(num_sub))
        return y, y

    if ts.shape[0] == 1:
        return y0[None], num_sub * 0
    _, ys = lax.scan(interval, y0, (ts[:-1], ts[1:]))
    ys = jnp.concatenate([y0[None], ys], axis=0)
    nfe = tab.num_stages * num_sub * (ts.shape[0] - 1)
    return ys, nfe


def fixed_substeps(ts, dt0) -> int:
    """Number of equal sub-steps per output interval so that no step exceeds ``|dt0|``."""
    span = np.max(np.abs(np.diff(np.asarray(ts, dtype=np.float64))))
    return max(1, int(np.ceil(span / abs(float(dt0)) - 1e-9)))


__all__ = [
    "Stats",
    "StepRecord",
    "integrate_adaptive",
    "integrate_fixed",
    "fixed_substeps",
    "rk_stages",
    "error_ratio",
    "dense_coeffs",
    "eval_dense",
    "extra_stages",
    "direction_of",
]
