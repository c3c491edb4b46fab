"""Pieces shared by the reverse passes of the gradient modes.

The cotangent assembly (time derivatives by identities, failed solves masked or flagged), the
events' contribution to a backward pass (:class:`Extra`), and the adjoint ODE solve of the
continuous modes with its parameter quadrature (:func:`integrate_adjoint`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ._event import ift_cotangent
from ._forward import NUM_STATS, Primal, Problem, event_function, field, forward, internal
from ._integrate import (
    ACCEPTED,
    NFE,
    REJECTED,
    RESULT,
    STEPS,
    LoopConfig,
    LoopState,
    T,
    run,
)
from ._plugins import Nodes, Stops
from ._primitive import batched
from ._solution import RESULT_MESSAGES, Result


def tolerances(mode, problem: Problem):
    dtype = problem.rtol.dtype
    rtol = problem.rtol if getattr(mode, "rtol", None) is None else jnp.asarray(mode.rtol, dtype)
    atol = problem.atol if getattr(mode, "atol", None) is None else jnp.asarray(mode.atol, dtype)
    return rtol, atol


def time_grads(problem: Problem, x: Primal, ys, ct, a0):
    """``dL/dts`` from the output cotangents and the adjoint ``a0`` arriving at ``ts[0]``."""
    fs = jax.vmap(lambda t, y: field(problem, x, t, y))(x.ts, ys)
    g = jnp.sum(ct * fs, axis=1).astype(x.ts.dtype)
    return g.at[0].set(-jnp.dot(a0, fs[0]).astype(x.ts.dtype))


def loop_stats(st_end: LoopState, st_start: LoopState | None = None):
    """Backward statistics ``[steps, accepted, rejected, nfe]`` of a loop (as floats)."""
    idx = jnp.array([STEPS, ACCEPTED, REJECTED, NFE])
    out = st_end.ints[idx]
    if st_start is not None:
        out = out - st_start.ints[idx]
    return out


def finish(problem: Problem, x: Primal, ys, ct, skip, a_final, a0, params_bar, bstats,
            result, hint: str, c_params=None):
    """Assemble the cotangent of ``x``; failed backward solves give NaN or raise.

    ``c_params`` is a direct cotangent of the parameters (the event functions')."""
    if c_params is not None:
        params_bar = jax.tree.map(jnp.add, params_bar, c_params)
    g_ts = time_grads(problem, x, ys, ct, a0)
    grads = (a_final, g_ts, params_bar)
    failed = (result != Result.successful) & ~skip
    if problem.cfg.throw:
        # The drift message names its remedies itself; the others get the mode's hint.
        messages = tuple(
            "neuralode: the backward (adjoint) solve of the gradient failed. " + m
            + ("" if code == Result.drift else hint)
            for code, m in enumerate(RESULT_MESSAGES)
        )
        # The check guards every gradient leaf: whichever cotangent the caller uses, a failed
        # backward solve raises (a check on one leaf alone is dropped when that leaf is unused).
        grads = eqx.branched_error_if(grads, failed, result, messages)
    # A sample whose forward solve failed (throw=False) contributes nothing: its unreached
    # outputs are NaN, so the loss that uses them is NaN already, and a loss that masks it
    # (jnp.where(sol.result == 0, ...)) sends NaN·0 = NaN cotangents that must not spread into
    # the gradient of shared parameters.
    grads = jax.tree.map(lambda g: jnp.where(failed, jnp.nan, jnp.where(skip, 0.0, g)), grads)
    a_final, g_ts, params_bar = grads
    return Primal(a_final, g_ts, params_bar, bstats.astype(x.probe.dtype))


def single_time(problem: Problem, x: Primal, ys, ct, skip):
    """A solve with one output time: ``ys[0] = y0``, nothing to integrate backwards."""
    zero_stats = jnp.zeros((NUM_STATS,), jnp.int32)
    params_bar = jax.tree.map(jnp.zeros_like, x.params)
    result = jnp.asarray(Result.successful, jnp.int32)
    return finish(problem, x, ys, ct, skip, ct[0], jnp.zeros_like(ct[0]), params_bar,
                   zero_stats, result, "")


def sanitize(ys, skip):
    """Zeros for a failed forward solve (its backward pass is skipped)."""
    return jnp.where(skip | ~jnp.isfinite(ys), 0.0, ys)


class Extra(NamedTuple):
    """What the events of a solve add to its backward pass.

    The cotangents of the event time and state become, by the implicit function theorem, a
    cotangent ``c_y`` of the state at the fixed internal time ``tau`` (an extra output) and a
    direct cotangent ``c_params`` of the event function's parameters. A terminal event ends the
    solve at ``tau`` (``end``): the backward pass starts there, and the outputs after it (never
    reached) carry no cotangent. Without events the extra output is inert (``c_y = 0`` at
    ``tau = +inf``) and the backward pass starts at ``ts[-1]``.
    """

    ct: Any  # the output cotangents (zero where not reached)
    tau: Any  # internal time of the extra output (+inf: none)
    c_y: Any
    c_params: Any
    end: Any  # internal time where the backward pass starts
    y_end: Any  # the state there
    terminal: Any  # bool: the solve ended at an event

    @staticmethod
    def of(problem: Problem, x: Primal, ys, ct, ev, ct_ev) -> Extra:
        sign, taus, _ = internal(problem, x)
        zeros_p = jax.tree.map(jnp.zeros_like, x.params)
        if ev is None:
            return Extra(ct, jnp.asarray(jnp.inf, taus.dtype), jnp.zeros_like(x.y0), zeros_p,
                          taus[-1], ys[-1], jnp.zeros((), bool))
        found = ev.index >= 0
        index = jnp.maximum(ev.index, 0)
        terminal = found & jnp.asarray(problem.cfg.event_terminal)[index]
        t_star = jnp.where(found, ev.time, x.ts[0])
        y_star = jnp.where(found, ev.y, x.y0)
        cond = event_function(problem, x)

        def g_one(t, y, p):
            return cond(t, y, p)[index]

        f_star = field(problem, x, t_star, y_star)
        ct_t, ct_y = ct_ev
        c_y, c_p = ift_cotangent(g_one, t_star, y_star, f_star, x.params, ct_t, ct_y)
        c_y = jnp.where(found, c_y, 0.0).astype(x.y0.dtype)
        c_p = jax.tree.map(lambda v: jnp.where(found, v, 0.0), c_p)
        tau = jnp.where(found, sign * t_star, jnp.inf).astype(taus.dtype)
        reached = jnp.isfinite(ys)
        return Extra(
            ct=jnp.where(reached, ct, 0.0),
            tau=tau,
            c_y=c_y,
            c_params=c_p,
            end=jnp.where(terminal, tau, taus[-1]),
            y_end=jnp.where(terminal, y_star, ys[-1]),
            terminal=terminal,
        )

    def start_state(self, ys, taus):
        """``(a0, first stop)`` of a continuous backward pass from ``end``: the cotangent of
        the state there (the event's, plus outputs at exactly that time) and the index of the
        first backward stop strictly before it."""
        rho_stops = stop_times(taus)
        at_end = (taus == self.end) & jnp.isfinite(ys[:, 0] if ys.shape[1] else taus)
        a0 = jnp.where(self.terminal, self.c_y + jnp.sum(jnp.where(at_end[:, None], self.ct, 0.0),
                                                      axis=0), self.ct[-1])
        first = jnp.where(self.terminal, jnp.sum(rho_stops <= -self.end), 0)
        return a0.astype(ys.dtype), first.astype(jnp.int32)

    def stops(self, taus, output_jump, n_out):
        """Backward stops: the output times before the start (and a non-terminal event's time),
        with the jumps that add their cotangents."""
        rho_out = stop_times(taus)  # n_out - 1 stops, increasing
        # No event (tau = +inf) or a terminal one (the pass starts there): the extra stop
        # lies past the end of the backward solve, where it is never reached.
        rho_ev = jnp.where(self.terminal | ~jnp.isfinite(self.tau), jnp.inf, -self.tau)
        rho = jnp.concatenate([rho_out, rho_ev[None]])
        order = jnp.argsort(rho)
        rho = rho[order]

        def jump(s, y, q):
            k = order[s]
            is_event = k == n_out - 1
            y_out, q, result = output_jump(jnp.minimum(k, n_out - 2), y, q)
            y_ev = add_event(y, self.c_y)
            return jnp.where(is_event, y_ev, y_out), q, jnp.where(is_event, Result.successful,
                                                                   result)

        return Stops(rho, jump)


def add_event(y, c_y):
    """Add ``c_y`` to the adjoint part (the last ``len(c_y)`` entries) of a backward state."""
    n = c_y.shape[0]
    return y.at[y.shape[0] - n:].add(c_y) if n else y


# Floats of quadrature-node buffer per backward solve (per sample under vmap).
NODE_BUDGET = 1 << 18
# A node buffer is flushed in this many chunks at most (only the filled ones are evaluated).
# Measured on the T1 training step (BacksolveAdjoint, 384-node buffers): 4 chunks 25.3 ms,
# 8 chunks 23.4 ms, 16 chunks 26.5 ms, 64 chunks 32.1 ms, the whole buffer 35 ms.
FLUSH_CHUNKS = 8


def buffered(mode) -> bool:
    """Whether the parameter adjoint is integrated from buffered quadrature nodes.

    Only with the seminorm (the full norm needs it in the loop) and under ``vmap``: there the
    per-sample parameter adjoint is ``batch × parameters`` wide and carrying it through every
    stage dominates a backward step (11x on the T1 training benchmark). Unbatched it is one
    vector, and computing ``a f_θ`` in the stage's own vector-Jacobian product is cheaper than
    evaluating the field again at every node (2.3x on the MLP (a) gradient benchmark).
    """
    return mode.seminorm and batched()


def adjoint_config(mode, problem: Problem) -> LoopConfig:
    """The backward loop: buffered, the parameter adjoint is not part of the loop; otherwise it
    is its quadrature channel, in the error norm (``"mixed"``) or not (seminorm)."""
    cfg = problem.cfg
    return LoopConfig(cfg.solver, cfg.controller, cfg.max_steps, quad=not buffered(mode),
                      norm="semi" if mode.seminorm else "mixed")


def integrate_adjoint(mode, problem: Problem, g, flush, st, t_to, rtol, atol, stops,
                       step_limit, direction):
    """Run the backward solve from ``st`` to ``t_to`` and integrate the parameter adjoint.

    ``g(ρ, s)`` is the ``[z, a]`` (or ``a``) dynamics; with the full norm it returns
    ``(ds, dq)`` with the parameter channel. Buffered (:func:`buffered`) the parameter
    adjoint never enters the loop: each accepted step records its quadrature nodes (stage
    time, stage state, weight), and ``flush(nodes) -> dq`` evaluates the parameter integrand
    on the filled part of a buffer in batched vector-Jacobian products.
    """
    lcfg = adjoint_config(mode, problem)
    if not buffered(mode):
        st, _, _, _ = run(g, lcfg, st, t_to, rtol, atol, stops=stops, step_limit=step_limit,
                          direction=direction)
        return st
    solver = problem.cfg.solver
    n = st.y.shape[0]
    per = solver.num_nodes
    capacity = max(per, min(NODE_BUDGET // (n + 2), 64 * per)) // per * per
    spec = Nodes(capacity, per)
    chunk = max(per, capacity // FLUSH_CHUNKS // per * per)

    def cond(st):
        return ((st.fs[T] < t_to) & (st.ints[STEPS] < step_limit)
                & (st.ints[RESULT] == Result.successful))

    def body(st):
        q = st.q  # kept out of the step loop
        st, _, _, buf = run(g, lcfg, st._replace(q=None), t_to, rtol, atol, stops=stops,
                            nodes=spec, node_buf=spec.init(n, st.y.dtype), step_limit=step_limit,
                            direction=direction)
        return st._replace(q=q + flush_filled(flush, buf, chunk))

    return lax.while_loop(cond, body, st)


def flush_filled(flush, buf, chunk: int):
    """``flush`` over the filled part of a node buffer only, ``chunk`` nodes at a time.

    A backward solve that ends after a few steps fills a small part of its buffer (8 steps
    of a 512-float state fill 48 of 384 nodes): evaluating the whole buffer made the
    parameter quadrature 8x the work it needs. The filled chunks are evaluated in a loop
    (under ``vmap``, as many chunks as the fullest buffer of the batch).
    """
    capacity = buf["t"].shape[0]
    if chunk >= capacity:
        return flush(buf)
    pad = -capacity % chunk  # zero-weight nodes: they add nothing
    if pad:
        buf = {k: v if k == "count" else jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
               for k, v in buf.items()}
    num = (buf["count"] + chunk - 1) // chunk

    def body(k, acc):
        part = {key: lax.dynamic_slice_in_dim(v, k * chunk, chunk)
                for key, v in buf.items() if key != "count"}
        return acc + flush(part)

    zero = jax.eval_shape(flush, {key: v[:chunk] for key, v in buf.items() if key != "count"})
    return lax.fori_loop(0, num, body, jnp.zeros(zero.shape, zero.dtype))


def stop_times(taus):
    """Backward stops: ``ρ = -τ`` of ``ts[-2], ..., ts[0]`` (increasing)."""
    return -taus[:-1][::-1]


def backward_from_scratch(problem: Problem, x: Primal, ct):
    """The mode's backward pass with the forward solve recomputed from ``x`` (differentiable
    in forward mode: the second derivatives are built from it)."""
    mode = problem.cfg.adjoint
    ys, st, rec, _ = forward(problem, x, mode.recorder(problem.cfg))
    return mode.backward(problem, x, ys, st.ints[ACCEPTED], st.ints[RESULT], rec, ct)
