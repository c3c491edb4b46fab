"""The bounded step record walked backwards, and the exact (discrete) adjoint.

Checkpoints (the exact and interpolated modes). The forward solve keeps at most ``checkpoints``
step states with online thinning (:class:`~neuralode._integrate.Recorder`): the stride between
kept steps doubles whenever the record is full, so it ends as the smallest power of two that
fits the solve. The backward pass walks the record from the end; a kept step whose stride is
more than one is replayed (the same loop body, the same step-size decisions) into a record of
the next level, recursively, until the records hold every step. A solve of at most
``checkpoints`` accepted steps is never replayed; a longer one is replayed about once per extra
level it needs. The lower levels share as many slots as the top level has, so
the record never holds more than ``2·checkpoints`` states whatever ``max_steps`` is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._backward import Extra, finish, loop_stats, sanitize
from ._forward import NUM_STATS, Primal, Problem, internal
from ._integrate import ACCEPTED, H, LoopState, T, run
from ._plugins import Recorder
from ._solution import Result
from ._solvers._step import StepContext

DEFAULT_CHECKPOINTS = 64

def slots_of(checkpoints: int | None) -> int:
    """Slots per record level: ``checkpoints`` rounded down to a power of two."""
    c = DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
    return 1 << (int(c).bit_length() - 1)


def record_levels(max_steps: int, slots: int) -> tuple[int, int]:
    """``(levels, lower_slots)``: how deep the record goes below its top level.

    The top level has ``slots`` entries; the ``levels - 1`` lower levels share another
    ``slots`` entries (``lower_slots`` each, a power of two, at least 2), so the record holds
    about ``2·slots`` states whatever ``max_steps`` is: a longer solve only means more replays.
    """
    levels, lower = 1, slots
    while slots * lower ** (levels - 1) < max_steps:
        levels += 1
        share = max(slots // (levels - 1), 2)
        lower = 1 << (share.bit_length() - 1)
    return levels, lower


def walk(problem: Problem, x: Primal, n_acc, rec, recorder: Recorder, leaf, carry, bstats):
    """Process every recorded forward step in reverse time order.

    ``leaf(recorder, buf, level, count, seg_end, carry) -> carry`` handles a record of the last
    level, whose entries are consecutive steps (stride one) ending at ``seg_end``. Every other
    level is cut into pieces, from the last: where its stride is one, runs of consecutive
    entries are copied down; otherwise each entry is replayed into a finer record. The leaf is
    traced once. Returns ``(carry, bstats)`` with the replays' statistics added.
    """
    cfg = problem.cfg
    sign, taus, g = internal(problem, x)
    levels, lower = record_levels(cfg.max_steps, recorder.slots)
    child = Recorder(lower, thin=False, dense=recorder.dense)
    bits = child.bits
    t_end = taus[-1]
    lcfg = cfg.loop
    degree = cfg.solver.dense_degree

    def process(depth, rec_obj, buf, level, count, exp, seg_end, carry, bstats):
        if depth == levels - 1:  # the stride is one here (record_levels guarantees it)
            return leaf(rec_obj, buf, level, count, seg_end, carry), bstats
        copy = exp == 0
        pieces = jnp.where(copy, (count + lower - 1) // lower, count)

        def body(c):
            p, carry, bstats, seg_end_p = c
            # Copy: entries [lo, hi) of a stride-one record (its slots are in entry order).
            hi = count - p * lower
            lo = jnp.maximum(hi - lower, 0)
            copied = {k: lax.dynamic_slice_in_dim(v, lo, lower) for k, v in buf.items()}
            # Replay: entry j, stride 2^exp, into a record of stride 2^(exp - bits).
            j = jnp.maximum(count - 1 - p, 0)
            st_j, _ = rec_obj.entry(buf, level, j)
            k0 = st_j.ints[ACCEPTED]
            n_seg = jnp.where(copy, 0, jnp.minimum(1 << exp, n_acc - k0))
            exp_child = jnp.maximum(exp - bits, 0)
            init = child.init(st_j, degree, level=exp_child, k0=k0)
            st_end, _, (replayed, _, _), _ = run(
                g, lcfg, st_j, t_end, problem.rtol, problem.atol, recorder=child, rec=init,
                count_end=k0 + n_seg, direction=sign,
            )
            bstats = bstats + loop_stats(st_end, st_j)
            c_buf = jax.tree.map(lambda a, b: jnp.where(copy, a, b), copied, replayed)
            c_count = jnp.where(copy, hi - lo, (n_seg + (1 << exp_child) - 1) >> exp_child)
            c_exp = jnp.where(copy, 0, exp_child)
            carry, bstats = process(depth + 1, child, c_buf, c_exp, c_count, c_exp, seg_end_p,
                                    carry, bstats)
            next_end = jnp.where(copy, buf["fs"][lo, T], st_j.fs[T])
            return p + 1, carry, bstats, next_end

        _, carry, bstats, _ = lax.while_loop(
            lambda c: c[0] < pieces, body, (jnp.zeros((), jnp.int32), carry, bstats, seg_end)
        )
        return carry, bstats

    buf, level, _ = rec
    count = (n_acc + (1 << level) - 1) >> level
    return process(0, recorder, buf, level, count, level, t_end, carry, bstats)


def step_size(st: LoopState, t_end):
    """The size of the accepted step that starts from recorded state ``st``."""
    t, h = st.fs[T], st.fs[H]
    return jnp.where(h >= t_end - t, t_end - t, h)


def checkpoint_backward(mode, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                rec, extra: Extra):
    ct = extra.ct
    cfg = problem.cfg
    solver = cfg.solver
    n_out, n = ys.shape
    dtype = ys.dtype
    skip = ~Result.succeeded(fwd_result)
    ys = sanitize(ys, skip)
    n_acc = jnp.where(skip, 0, n_acc)
    sign, taus, _ = internal(problem, x)
    t_end = taus[-1]
    # One backward evaluation = one stage recomputed together with its VJP.
    nfe_per_step = solver.nfe_per_step

    def step_map(y, params, t, h):
        def g(tau, yy):
            return problem.fn(sign * tau, yy, params, problem.nondiff).astype(yy.dtype)

        f0 = g(t, y)
        ctx = StepContext(g, t_end, direction=sign, tol=(problem.rtol, problem.atol))
        res = solver.step(ctx, t, y, f0, h)
        coeffs, _ = solver.dense(ctx, t, y, h, res)
        return res.y1, coeffs

    def leaf(rec_obj, buf, level, count, seg_end, carry):
        def body(c):
            j, (a, a_p, j_out, nsteps) = c
            st_j, _ = rec_obj.entry(buf, level, j)
            t, y = st_j.fs[T], st_j.y
            h = step_size(st_j, t_end)

            def more(cc):
                jo, _, _ = cc
                return (jo >= 1) & (taus[jnp.maximum(jo, 0)] > t)

            def gather(cc):
                jo, ct_c, ct_y = cc
                theta = (taus[jo] - t) / h
                powers = theta ** jnp.arange(1, solver.dense_degree + 1, dtype=theta.dtype)
                ct_c = ct_c + (powers[:, None] * ct[jo][None, :]).astype(dtype)
                return jo - 1, ct_c, ct_y + ct[jo]

            ct_c0 = jnp.zeros((solver.dense_degree, n), dtype)
            j_out, ct_c, ct_y = lax.while_loop(more, gather, (j_out, ct_c0, jnp.zeros_like(y)))
            # The event's state, an extra output of the step that contains its time.
            has_ev = (extra.tau > t) & (extra.tau <= t + h)
            theta = jnp.where(has_ev, (extra.tau - t) / h, 0.0)
            powers = theta ** jnp.arange(1, solver.dense_degree + 1, dtype=theta.dtype)
            c_ev = jnp.where(has_ev, extra.c_y, 0.0)
            ct_c = ct_c + (powers[:, None] * c_ev[None, :]).astype(dtype)
            ct_y = ct_y + c_ev
            _, vjp = jax.vjp(lambda yy, pp: step_map(yy, pp, t, h), y, x.params)
            g_y, g_p = vjp((a, ct_c))
            a_p = jax.tree.map(jnp.add, a_p, g_p)
            return j - 1, (g_y + ct_y, a_p, j_out, nsteps + 1)

        _, carry = lax.while_loop(lambda c: c[0] >= 0, body, (count - 1, carry))
        return carry

    carry = (jnp.zeros((n,), dtype), jax.tree.map(jnp.zeros_like, x.params),
             jnp.asarray(n_out - 1, jnp.int32), jnp.zeros((), jnp.int32))
    bstats = jnp.zeros((NUM_STATS,), jnp.int32)
    if n_out > 1:
        (a, a_p, _, nsteps), bstats = walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf,
                                            carry, bstats)
    else:
        a, a_p, _, nsteps = carry
    bstats = bstats + jnp.stack([nsteps, nsteps, 0 * nsteps, nsteps * nfe_per_step])
    result = jnp.asarray(Result.successful, jnp.int32)
    return finish(problem, x, ys, ct, skip, a + ct[0], a, a_p, bstats, result, "",
                   extra.c_params)
