"""Gradient modes: how the reverse-mode derivative of an adaptive solve is computed.

A mode is a small immutable options object; its :meth:`~AbstractAdjoint.backward` maps output
cotangents ``∂L/∂ys`` to input cotangents (``y0``, ``ts``, the parameters) and the backward
statistics. ``neuralode._derivatives`` installs it as the transpose of the forward sensitivity,
which is what makes ``grad``, ``grad(grad)``, ``jvp(grad)`` and ``jax.hessian`` work.

* :class:`BacksolveAdjoint` — the paper's Algorithm 1: ``[z, a, a_θ]`` solved backwards from
  ``ts[-1]`` to ``ts[0]`` as one adaptive solve; steps land on every output time, where the
  cotangent is added to ``a`` and ``z`` restarts from the stored forward output.
* :class:`InterpolatedAdjoint` — the same adjoint solve for ``[a, a_θ]`` with ``z(t)`` read from
  the forward solve's dense output, recomputed from bounded checkpoints.
* :class:`CheckpointAdjoint` — the exact derivative of the discrete forward solve, replaying its
  steps from bounded checkpoints with vector-Jacobian products.
* :class:`ForwardMode` — forward sensitivities; reverse mode by materialising the Jacobian.

Output times are differentiated through the identities ``dL/dt_i = ⟨∂L/∂y(t_i), f(t_i,
y(t_i))⟩`` (``i >= 1``) and ``dL/dt_0 = -⟨a(t_0), f(t_0, y_0)⟩``, where ``a(t_0)`` is the
adjoint arriving at ``t_0``: what the paper's extra channel ``a_t`` integrates to, without
integrating it (``d(a·f)/dt = a·∂f/∂t`` along the adjoint, so ``a_t(t) = -a(t)·f(t, z(t))``).

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

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._controller import rms_norm
from ._forward import NUM_STATS, Primal, Problem, field, forward, internal, sensitivity
from ._integrate import (
    ACCEPTED,
    H,
    NFE,
    REJECTED,
    RESULT,
    STEPS,
    T,
    LoopConfig,
    LoopState,
    Nodes,
    Recorder,
    Stops,
    run,
    start,
)
from ._solution import RESULT_MESSAGES, Result
from ._solvers._rk import eval_dense

DEFAULT_CHECKPOINTS = 64


class AbstractAdjoint:
    """Base class of the gradient modes (immutable, hashable static configuration)."""

    def recorder(self, cfg) -> Recorder | None:
        """The step record the forward solve keeps for this mode (``None``: none)."""
        return None

    def backward(self, problem: Problem, x: Primal, ys, n_acc, result, rec, ct) -> Primal:
        """Cotangents of ``x`` for the output cotangent ``ct`` (``probe``: backward statistics).

        ``n_acc`` and ``result`` are the forward solve's accepted steps and result code,
        ``rec`` its step record (:meth:`recorder`).
        """
        raise NotImplementedError

    def _check_tolerances(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name, None)
            if value is not None and not (
                isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            ):
                raise ValueError(
                    f"{type(self).__name__}: `{name}` must be a positive number or None, got "
                    f"{value!r}."
                )


def _check_checkpoints(owner: str, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(
            f"{owner}: `checkpoints` must be an int >= 2 (step states kept per level) or None, "
            f"got {value!r}."
        )


def _slots(checkpoints: int | None) -> int:
    """Slots per record level: ``checkpoints`` rounded down to a power of two."""
    c = DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
    return 1 << (int(c).bit_length() - 1)


def _record_levels(max_steps: int, slots: int) -> tuple[int, int]:
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


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(AbstractAdjoint):
    """The continuous adjoint of the paper (Algorithm 1): memory independent of the steps.

    The backward pass solves ``[z, a, a_θ]`` from ``ts[-1]`` to ``ts[0]`` as one adaptive solve.
    Its steps land on every output time, where ``∂L/∂y(t_i)`` is added to ``a`` and ``z``
    restarts from the stored forward output (a checkpoint at every output time); step size and
    controller state carry across output times.

    Args:
        seminorm: Leave the parameter channel ``a_θ`` out of the backward error norm
            (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"): it never feeds back into the
            dynamics, so controlling its error only costs steps. ``False`` uses the larger of
            the RMS norms of ``[z, a]`` and of ``a_θ`` (each channel controlled on its own, as
            torchdiffeq's default adjoint norm; one RMS over everything would let thousands of
            small parameter entries dilute the error of ``[z, a]``).
        rtol, atol: Tolerances of the backward solve; ``None`` (default) reuses the forward
            ones.
        drift_check: Backward reconstruction of ``z`` can drift away from the forward
            trajectory on problems that contract forward in time (the gradient is then wrong).
            At every output time the reconstructed ``z`` is compared with the stored forward
            value; if their RMS difference, scaled by ``atol + rtol·|y|``, exceeds
            ``drift_check`` the gradient is flagged (an error with ``throw=True``, NaN
            otherwise, ``Result.drift``). ``None`` disables the check.

    Remedies when the drift check fires: add output times (each is a checkpoint), use
    :class:`CheckpointAdjoint` or :class:`InterpolatedAdjoint`, or tighten the tolerances.
    """

    seminorm: bool = True
    rtol: float | None = None
    atol: float | None = None
    drift_check: float | None = 1e4

    def __post_init__(self):
        self._check_tolerances()
        if self.drift_check is not None and not (
            isinstance(self.drift_check, int | float) and self.drift_check > 0
        ):
            raise ValueError(
                "BacksolveAdjoint: `drift_check` must be a positive number or None, got "
                f"{self.drift_check!r}."
            )

    def backward(self, problem, x, ys, n_acc, result, rec, ct):
        return _backsolve(self, problem, x, ys, result, ct)


@dataclasses.dataclass(frozen=True)
class InterpolatedAdjoint(AbstractAdjoint):
    """Continuous adjoint with ``z(t)`` read from the forward solve's dense output.

    The backward pass solves ``[a, a_θ]`` from ``ts[-1]`` to ``ts[0]`` as one adaptive solve and
    evaluates ``z(t)`` from the forward steps' interpolants instead of re-integrating it: no
    reconstruction drift. The interpolants come from a bounded record of forward steps (see the
    module docstring): memory ``O(checkpoints)``, not ``O(steps)``.

    Args:
        seminorm, rtol, atol: As for :class:`BacksolveAdjoint`.
        checkpoints: Step states kept per record level (rounded down to a power of two;
            default 64). More keeps long solves from being replayed, at more memory.
    """

    seminorm: bool = True
    rtol: float | None = None
    atol: float | None = None
    checkpoints: int | None = None

    def __post_init__(self):
        self._check_tolerances()
        _check_checkpoints("InterpolatedAdjoint", self.checkpoints)

    def recorder(self, cfg):
        return Recorder(_slots(self.checkpoints), thin=True, dense=True)

    def backward(self, problem, x, ys, n_acc, result, rec, ct):
        return _interpolated(self, problem, x, ys, n_acc, result, rec, ct)


@dataclasses.dataclass(frozen=True)
class CheckpointAdjoint(AbstractAdjoint):
    """Exact gradient of the discrete forward solve (discretise-then-optimise).

    The backward pass replays the accepted steps in reverse, taking vector-Jacobian products of
    each Runge-Kutta step and of the interpolation that produced each output. Step sizes are
    held fixed (as every discrete adjoint does). No backward ODE solve, no reconstruction
    error. Step states come from a bounded record (see the module docstring): memory
    ``O(checkpoints · levels)``, never ``O(max_steps)``; solves longer than ``checkpoints``
    steps are partly recomputed.

    Args:
        checkpoints: Step states kept per record level (rounded down to a power of two;
            default 64). More keeps long solves from being replayed, at more memory.
    """

    checkpoints: int | None = None

    def __post_init__(self):
        _check_checkpoints("CheckpointAdjoint", self.checkpoints)

    def recorder(self, cfg):
        return Recorder(_slots(self.checkpoints), thin=True)

    def backward(self, problem, x, ys, n_acc, result, rec, ct):
        return _checkpoint(self, problem, x, ys, n_acc, result, rec, ct)


@dataclasses.dataclass(frozen=True)
class ForwardMode(AbstractAdjoint):
    """Forward sensitivities: every derivative from the forward-mode solve.

    ``jax.jvp``, ``jax.jacfwd`` and ``jax.linearize`` cost one forward solve plus one tangent
    propagation per direction (all directions of ``jacfwd`` share the solve); that holds in
    every mode, this one just never builds a backward solve. Reverse mode (``jax.grad``,
    ``jax.vjp``) is computed by materialising the Jacobian of the outputs with respect to
    every input entry (``y0``, ``ts`` and all parameter entries), so it costs one tangent per
    input entry: use it for models with few parameters, and a reverse mode otherwise.
    """

    def backward(self, problem, x, ys, n_acc, result, rec, ct):
        return _forward_mode(problem, x, ys, ct)


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _tolerances(mode, problem: Problem):
    dtype = problem.rtol.dtype
    rtol = problem.rtol if getattr(mode, "rtol", None) is None else jnp.asarray(mode.rtol, dtype)
    atol = problem.atol if getattr(mode, "atol", None) is None else jnp.asarray(mode.atol, dtype)
    return rtol, atol


def _time_grads(problem: Problem, x: Primal, ys, ct, a0):
    """``dL/dts`` from the output cotangents and the adjoint ``a0`` arriving at ``ts[0]``."""
    fs = jax.vmap(lambda t, y: field(problem, x, t, y))(x.ts, ys)
    g = jnp.sum(ct * fs, axis=1)
    return g.at[0].set(-jnp.dot(a0, fs[0]))


def _stats(st_end: LoopState, st_start: LoopState | None = None):
    """Backward statistics ``[steps, accepted, rejected, nfe]`` of a loop (as floats)."""
    idx = jnp.array([STEPS, ACCEPTED, REJECTED, NFE])
    out = st_end.ints[idx]
    if st_start is not None:
        out = out - st_start.ints[idx]
    return out


def _finish(problem: Problem, x: Primal, ys, ct, skip, a_final, a0, params_bar, bstats,
            result, hint: str):
    """Assemble the cotangent of ``x``; failed backward solves give NaN or raise."""
    g_ts = _time_grads(problem, x, ys, ct, a0)
    grads = (a_final, g_ts, params_bar)
    failed = (result != Result.successful) & ~skip
    if problem.cfg.throw:
        messages = tuple(
            "neuralode: the backward (adjoint) solve of the gradient failed. " + m + hint
            for m in RESULT_MESSAGES
        )
        # The check guards every gradient leaf: whichever cotangent the caller uses, a failed
        # backward solve raises (a check on one leaf alone is dropped when that leaf is unused).
        grads = eqx.branched_error_if(grads, failed, result, messages)
    # A sample whose forward solve failed (throw=False) has no gradient: zero if its outputs
    # are unused (a masked loss), NaN otherwise.
    used = jnp.any(ct != 0)
    bad = failed | (skip & used)
    grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, jnp.where(skip, 0.0, g)), grads)
    a_final, g_ts, params_bar = grads
    return Primal(a_final, g_ts, params_bar, bstats.astype(x.probe.dtype))


def _single_time(problem: Problem, x: Primal, ys, ct, skip):
    """A solve with one output time: ``ys[0] = y0``, nothing to integrate backwards."""
    zero_stats = jnp.zeros((NUM_STATS,), jnp.int32)
    params_bar = jax.tree.map(jnp.zeros_like, x.params)
    result = jnp.asarray(Result.successful, jnp.int32)
    return _finish(problem, x, ys, ct, skip, ct[0], jnp.zeros_like(ct[0]), params_bar,
                   zero_stats, result, "")


def _sanitize(ys, skip):
    """Zeros for a failed forward solve (its backward pass is skipped)."""
    return jnp.where(skip | ~jnp.isfinite(ys), 0.0, ys)


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


# Floats of quadrature-node buffer per backward solve (per sample under vmap).
_NODE_BUDGET = 1 << 18


def _adjoint_config(mode, problem: Problem) -> LoopConfig:
    """The backward loop: with the seminorm the parameter adjoint is not part of the loop
    (buffered quadrature nodes); the full norm needs it in the loop (a quadrature channel)."""
    cfg = problem.cfg
    return LoopConfig(cfg.solver, cfg.controller, cfg.max_steps, quad=not mode.seminorm,
                      norm="mixed")


def _integrate_adjoint(mode, problem: Problem, g, flush, st, t_to, rtol, atol, stops,
                       step_limit):
    """Run the backward solve from ``st`` to ``t_to`` and integrate the parameter adjoint.

    ``g(ρ, s)`` is the ``[z, a]`` (or ``a``) dynamics; with the full norm it returns
    ``(ds, dq)`` with the parameter channel. With the seminorm the parameter adjoint never
    enters the loop: each accepted step records its quadrature nodes (stage time, stage state,
    weight), and ``flush(nodes) -> dq`` evaluates the parameter integrand on a whole buffer of
    nodes in one batched vector-Jacobian product. Under ``vmap`` this keeps the per-sample
    parameter gradient (``batch × parameters``) out of every loop iteration, which otherwise
    dominates the cost of a backward step (11x on the T1 training benchmark).
    """
    lcfg = _adjoint_config(mode, problem)
    if not mode.seminorm:
        st, _, _, _ = run(g, lcfg, st, t_to, rtol, atol, stops=stops, step_limit=step_limit)
        return st
    solver = problem.cfg.solver
    n = st.y.shape[0]
    per = solver.num_nodes
    capacity = max(per, min(_NODE_BUDGET // (n + 2), 64 * per)) // per * per
    spec = Nodes(capacity, per)

    def cond(st):
        return ((st.fs[T] < t_to) & (st.ints[STEPS] < step_limit)
                & (st.ints[RESULT] == Result.successful))

    def body(st):
        q = st.q  # kept out of the step loop
        st, _, _, buf = run(g, lcfg, st._replace(q=None), t_to, rtol, atol, stops=stops,
                            nodes=spec, node_buf=spec.init(n, st.y.dtype), step_limit=step_limit)
        return st._replace(q=q + flush(buf))

    return lax.while_loop(cond, body, st)


def _stop_times(taus):
    """Backward stops: ``ρ = -τ`` of ``ts[-2], ..., ts[0]`` (increasing)."""
    return -taus[:-1][::-1]


# ---------------------------------------------------------------------------------------------
# BacksolveAdjoint


def _backsolve(mode: BacksolveAdjoint, problem: Problem, x: Primal, ys, fwd_result, ct):
    n_out, n = ys.shape
    dtype = ys.dtype
    params_flat, unravel = ravel_pytree(x.params)
    m = params_flat.shape[0]
    skip = fwd_result != Result.successful
    ys = _sanitize(ys, skip)
    if n_out == 1:
        return _single_time(problem, x, ys, ct, skip)
    sign, taus, _ = internal(problem, x)
    rtol, atol = _tolerances(mode, problem)

    def fn(t, z, p):
        return problem.fn(t, z, p, problem.nondiff)

    # In ρ = -τ (increasing): d/dρ = -sign d/dt at t = -sign ρ, for dz/dt = f,
    # da/dt = -a f_z and da_θ/dt = -a f_θ.
    def g(rho, s):
        t = -sign * rho
        z, a = s[:n], s[n:]
        if mode.seminorm:
            fz, vjp = jax.vjp(lambda zz: fn(t, zz, x.params), z)
            (a_z,) = vjp(a)
            return jnp.concatenate([-sign * fz, sign * a_z])
        fz, vjp = jax.vjp(lambda zz, pp: fn(t, zz, pp), z, x.params)
        a_z, a_p = vjp(a)
        return jnp.concatenate([-sign * fz, sign * a_z]), sign * ravel_pytree(a_p)[0]

    def flush(buf):
        t = -sign * buf["t"]
        z, a = buf["y"][:, :n], buf["y"][:, n:]
        _, vjp = jax.vjp(lambda p: jax.vmap(lambda tt, zz: fn(tt, zz, p))(t, z), x.params)
        (a_p,) = vjp(sign * buf["w"][:, None] * a)
        return ravel_pytree(a_p)[0]

    def jump(s, y, q):
        i = n_out - 2 - s
        z, a = y[:n], y[n:]
        result = Result.successful
        if mode.drift_check is not None:
            scale = atol + rtol * jnp.abs(ys[i])
            drift = rms_norm((z - ys[i]) / scale)
            result = jnp.where(drift <= mode.drift_check, Result.successful, Result.drift)
        return jnp.concatenate([ys[i], a + ct[i]]), q, result

    rho0 = -taus[-1]
    rho_end = jnp.where(skip, rho0, -taus[0])
    lcfg = _adjoint_config(mode, problem)
    s0 = jnp.concatenate([ys[-1], ct[-1]])
    st = start(g, lcfg, rho0, rho_end, s0, jnp.zeros((m,), dtype), rtol, atol)
    stops = Stops(_stop_times(taus), jump)
    st = _integrate_adjoint(mode, problem, g, flush, st, rho_end, rtol, atol, stops,
                            st.ints[STEPS] + problem.cfg.max_steps)
    a_final = st.y[n:]
    return _finish(problem, x, ys, ct, skip, a_final, a_final - ct[0], unravel(st.q),
                   _stats(st), st.ints[RESULT], _BACKSOLVE_HINT)


# ---------------------------------------------------------------------------------------------
# Walking a bounded record backwards (CheckpointAdjoint and InterpolatedAdjoint)


def _walk(problem: Problem, x: Primal, n_acc, rec, recorder: Recorder, leaf, carry, bstats):
    """Process every recorded forward step in reverse time order.

    ``leaf(recorder, buf, level, count, seg_end, carry) -> carry`` handles a record whose
    entries are consecutive steps (stride one); records with a larger stride are replayed
    into finer ones first. Returns ``(carry, bstats)`` with the replays' statistics added.
    """
    cfg = problem.cfg
    _, taus, g = internal(problem, x)
    levels, lower = _record_levels(cfg.max_steps, recorder.slots)
    child = Recorder(lower, thin=False, dense=recorder.dense)
    bits = child.bits
    t_end = taus[-1]
    lcfg = cfg.loop

    def process(depth, rec_obj, buf, level, count, exp, seg_end, k_base, carry, bstats):
        leaf_count = jnp.where(exp == 0, count, 0)
        carry = leaf(rec_obj, buf, level, leaf_count, seg_end, carry)
        if depth == levels - 1:
            return carry, bstats

        def body(c):
            j, carry, bstats, seg_end_j = c
            st_j, _ = rec_obj.entry(buf, level, j)
            k_start = k_base + (j << exp)
            n_seg = jnp.minimum(1 << exp, n_acc - k_start)
            exp_child = jnp.maximum(exp - bits, 0)
            k0 = st_j.ints[ACCEPTED]
            init = child.init(st_j, cfg.solver.dense_degree, level=exp_child, k0=k0)
            st_end, _, (cbuf, clevel, _), _ = run(
                g, lcfg, st_j, t_end, problem.rtol, problem.atol, recorder=child, rec=init,
                count_end=k0 + n_seg,
            )
            bstats = bstats + _stats(st_end, st_j)
            c_count = (n_seg + (1 << exp_child) - 1) >> exp_child
            carry, bstats = process(depth + 1, child, cbuf, clevel, c_count, exp_child,
                                    seg_end_j, k_start, carry, bstats)
            return j - 1, carry, bstats, st_j.fs[T]

        first = jnp.where(exp > 0, count - 1, -1)
        _, carry, bstats, _ = lax.while_loop(
            lambda c: c[0] >= 0, body, (first, carry, bstats, seg_end)
        )
        return carry, bstats

    buf, level, _ = rec
    count = (n_acc + (1 << level) - 1) >> level
    return process(0, recorder, buf, level, count, level, t_end, jnp.zeros((), jnp.int32),
                   carry, bstats)


def _step_size(st: LoopState, t_end):
    """The size of the accepted step that starts from recorded state ``st``."""
    t, h = st.fs[T], st.fs[H]
    return jnp.where(h >= t_end - t, t_end - t, h)


# ---------------------------------------------------------------------------------------------
# CheckpointAdjoint


def _checkpoint(mode: CheckpointAdjoint, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                rec, ct):
    cfg = problem.cfg
    solver = cfg.solver
    n_out, n = ys.shape
    dtype = ys.dtype
    skip = fwd_result != Result.successful
    ys = _sanitize(ys, skip)
    n_acc = jnp.where(skip, 0, n_acc)
    sign, taus, _ = internal(problem, x)
    t_end = taus[-1]
    # One backward evaluation = one stage recomputed together with its VJP.
    nfe_per_step = solver.nfe_per_step

    def step_map(y, params, t, h):
        def g(tau, yy):
            return sign * problem.fn(sign * tau, yy, params, problem.nondiff)

        f0 = g(t, y)
        res = solver.step(g, t, y, f0, h, t_end, tol=(problem.rtol, problem.atol))
        coeffs, _ = solver.dense(g, t, y, h, res, t_end)
        return res.y1, coeffs

    def leaf(rec_obj, buf, level, count, seg_end, carry):
        def body(c):
            j, (a, a_p, j_out, nsteps) = c
            st_j, _ = rec_obj.entry(buf, level, j)
            t, y = st_j.fs[T], st_j.y
            h = _step_size(st_j, t_end)

            def more(cc):
                jo, _, _ = cc
                return (jo >= 1) & (taus[jnp.maximum(jo, 0)] > t)

            def gather(cc):
                jo, ct_c, ct_y = cc
                theta = (taus[jo] - t) / h
                powers = theta ** jnp.arange(1, solver.dense_degree + 1, dtype=dtype)
                return jo - 1, ct_c + powers[:, None] * ct[jo][None, :], ct_y + ct[jo]

            ct_c0 = jnp.zeros((solver.dense_degree, n), dtype)
            j_out, ct_c, ct_y = lax.while_loop(more, gather, (j_out, ct_c0, jnp.zeros_like(y)))
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
        (a, a_p, _, nsteps), bstats = _walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf,
                                            carry, bstats)
    else:
        a, a_p, _, nsteps = carry
    bstats = bstats + jnp.stack([nsteps, nsteps, 0 * nsteps, nsteps * nfe_per_step])
    result = jnp.asarray(Result.successful, jnp.int32)
    return _finish(problem, x, ys, ct, skip, a + ct[0], a, a_p, bstats, result, "")


# ---------------------------------------------------------------------------------------------
# InterpolatedAdjoint


def _interpolated(mode: InterpolatedAdjoint, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                  rec, ct):
    cfg = problem.cfg
    n_out, n = ys.shape
    dtype = ys.dtype
    params_flat, unravel = ravel_pytree(x.params)
    m = params_flat.shape[0]
    skip = fwd_result != Result.successful
    ys = _sanitize(ys, skip)
    if n_out == 1:
        return _single_time(problem, x, ys, ct, skip)
    n_acc = jnp.where(skip, 0, n_acc)
    sign, taus, _ = internal(problem, x)
    t_end = taus[-1]
    rtol, atol = _tolerances(mode, problem)
    lcfg = _adjoint_config(mode, problem)

    def fn(t, z, p):
        return problem.fn(t, z, p, problem.nondiff)

    def make(z_of):
        """``(g, flush)`` with ``z(τ)`` from ``z_of``; ``t = sign·τ``, ``τ = -ρ``."""

        def g(rho, a):
            t, z = -sign * rho, z_of(-rho)
            if mode.seminorm:
                _, vjp = jax.vjp(lambda zz: fn(t, zz, x.params), z)
                (a_z,) = vjp(a)
                return sign * a_z
            _, vjp = jax.vjp(lambda zz, pp: fn(t, zz, pp), z, x.params)
            a_z, a_p = vjp(a)
            return sign * a_z, sign * ravel_pytree(a_p)[0]

        def flush(buf):
            t, z = -sign * buf["t"], jax.vmap(z_of)(-buf["t"])
            _, vjp = jax.vjp(lambda p: jax.vmap(lambda tt, zz: fn(tt, zz, p))(t, z), x.params)
            (a_p,) = vjp(sign * buf["w"][:, None] * buf["y"])
            return ravel_pytree(a_p)[0]

        return g, flush

    def jump(s, y, q):
        return y + ct[n_out - 2 - s], q, jnp.asarray(Result.successful, jnp.int32)

    stops = Stops(_stop_times(taus), jump)

    def leaf(rec_obj, buf, level, count, seg_end, carry):
        st_adj, limit = carry
        valid = jnp.arange(rec_obj.slots) < count
        ts_buf = jnp.where(valid, buf["fs"][:, T], jnp.inf)

        def z_of(tau):
            j = jnp.clip(jnp.sum(ts_buf <= tau) - 1, 0, jnp.maximum(count - 1, 0))
            st_j = LoopState(buf["y"][j], buf["f"][j], None, buf["fs"][j], buf["ints"][j])
            theta = jnp.clip((tau - st_j.fs[T]) / _step_size(st_j, t_end), 0.0, 1.0)
            return eval_dense(buf["y"][j], buf["c"][j], theta)

        g, flush = make(z_of)
        rho_to = jnp.where(count > 0, -buf["fs"][0, T], st_adj.fs[T])
        st_adj = _integrate_adjoint(mode, problem, g, flush, st_adj, rho_to, rtol, atol, stops,
                                    limit)
        return st_adj, limit

    rho0 = -taus[-1]
    # The first step size is chosen with z frozen at ys[-1] (its second evaluation only guides
    # the guess; the derivative at ρ0 itself is exact there).
    g0, _ = make(lambda tau: ys[-1])
    rho_end = jnp.where(skip, rho0, -taus[0])
    st0 = start(g0, lcfg, rho0, rho_end, ct[-1], jnp.zeros((m,), dtype), rtol, atol)
    bstats = jnp.zeros((NUM_STATS,), jnp.int32)
    limit = st0.ints[STEPS] + cfg.max_steps
    (st, _), bstats = _walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf, (st0, limit),
                            bstats)
    bstats = bstats + _stats(st)
    return _finish(problem, x, ys, ct, skip, st.y, st.y - ct[0], unravel(st.q), bstats,
                   st.ints[RESULT], _INTERPOLATED_HINT)


# ---------------------------------------------------------------------------------------------
# ForwardMode


def _forward_mode(problem: Problem, x: Primal, ys, ct):
    """``J^T ct`` with ``J`` materialised column by column from forward sensitivities."""
    diff = Primal(x.y0, x.ts, x.params, jnp.zeros_like(x.probe))
    flat, unravel = ravel_pytree(diff)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    jac, stats = jax.vmap(lambda e: sensitivity(problem, x, ys, unravel(e), with_stats=True))(
        basis
    )
    g = unravel(jnp.tensordot(jac, ct, axes=ct.ndim))
    return Primal(g.y0, g.ts, g.params, stats[0].astype(x.probe.dtype))


def backward_from_scratch(problem: Problem, x: Primal, ct):
    """The mode's backward pass with the forward solve recomputed from ``x`` (differentiable
    in forward mode: the second derivatives are built from it)."""
    mode = problem.cfg.adjoint
    ys, st, rec = forward(problem, x, mode.recorder(problem.cfg))
    return mode.backward(problem, x, ys, st.ints[ACCEPTED], st.ints[RESULT], rec, ct)
