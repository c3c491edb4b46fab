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
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._controller import rms_norm
from ._event import ift_cotangent
from ._forward import (
    NUM_STATS,
    Primal,
    Problem,
    event_function,
    field,
    forward,
    internal,
    sensitivity,
)
from ._integrate import (
    ACCEPTED,
    NEXT,
    NFE,
    REJECTED,
    RESULT,
    STEPS,
    H,
    LoopConfig,
    LoopState,
    Nodes,
    Recorder,
    Stops,
    T,
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

    def backward(self, problem: Problem, x: Primal, ys, n_acc, result, rec, ct, ev=None,
                 ct_ev=None) -> Primal:
        """Cotangents of ``x`` for the output cotangent ``ct`` (``probe``: backward statistics).

        ``n_acc`` and ``result`` are the forward solve's accepted steps and result code,
        ``rec`` its step record (:meth:`recorder`), ``ev`` its events (``EventOut``) and
        ``ct_ev`` the cotangents ``(of event_time, of event_y)``.
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

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return _backsolve(self, problem, x, ys, result, _Extra.of(problem, x, ys, ct, ev, ct_ev))


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

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return _interpolated(self, problem, x, ys, n_acc, result, rec,
                             _Extra.of(problem, x, ys, ct, ev, ct_ev))


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

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return _checkpoint(self, problem, x, ys, n_acc, result, rec,
                           _Extra.of(problem, x, ys, ct, ev, ct_ev))


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

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return _forward_mode(problem, x, result, ct, ct_ev)


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
    g = jnp.sum(ct * fs, axis=1).astype(x.ts.dtype)
    return g.at[0].set(-jnp.dot(a0, fs[0]).astype(x.ts.dtype))


def _stats(st_end: LoopState, st_start: LoopState | None = None):
    """Backward statistics ``[steps, accepted, rejected, nfe]`` of a loop (as floats)."""
    idx = jnp.array([STEPS, ACCEPTED, REJECTED, NFE])
    out = st_end.ints[idx]
    if st_start is not None:
        out = out - st_start.ints[idx]
    return out


def _finish(problem: Problem, x: Primal, ys, ct, skip, a_final, a0, params_bar, bstats,
            result, hint: str, c_params=None):
    """Assemble the cotangent of ``x``; failed backward solves give NaN or raise.

    ``c_params`` is a direct cotangent of the parameters (the event functions')."""
    if c_params is not None:
        params_bar = jax.tree.map(jnp.add, params_bar, c_params)
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
    # A sample whose forward solve failed (throw=False) contributes nothing: its unreached
    # outputs are NaN, so the loss that uses them is NaN already, and a loss that masks it
    # (jnp.where(sol.result == 0, ...)) sends NaN·0 = NaN cotangents that must not spread into
    # the gradient of shared parameters.
    grads = jax.tree.map(lambda g: jnp.where(failed, jnp.nan, jnp.where(skip, 0.0, g)), grads)
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


class _Extra(NamedTuple):
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
    def of(problem: Problem, x: Primal, ys, ct, ev, ct_ev) -> _Extra:
        sign, taus, _ = internal(problem, x)
        zeros_p = jax.tree.map(jnp.zeros_like, x.params)
        if ev is None:
            return _Extra(ct, jnp.asarray(jnp.inf, taus.dtype), jnp.zeros_like(x.y0), zeros_p,
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
        return _Extra(
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
        rho_stops = _stop_times(taus)
        at_end = (taus == self.end) & jnp.isfinite(ys[:, 0] if ys.shape[1] else taus)
        a0 = jnp.where(self.terminal, self.c_y + jnp.sum(jnp.where(at_end[:, None], self.ct, 0.0),
                                                      axis=0), self.ct[-1])
        first = jnp.where(self.terminal, jnp.sum(rho_stops <= -self.end), 0)
        return a0.astype(ys.dtype), first.astype(jnp.int32)

    def stops(self, taus, output_jump, n_out):
        """Backward stops: the output times before the start (and a non-terminal event's time),
        with the jumps that add their cotangents."""
        rho_out = _stop_times(taus)  # n_out - 1 stops, increasing
        rho_ev = jnp.where(self.terminal, jnp.inf, -self.tau)
        rho = jnp.concatenate([rho_out, rho_ev[None]])
        order = jnp.argsort(rho)
        rho = rho[order]

        def jump(s, y, q):
            k = order[s]
            is_event = k == n_out - 1
            y_out, q, result = output_jump(jnp.minimum(k, n_out - 2), y, q)
            y_ev = _add_event(y, self.c_y)
            return jnp.where(is_event, y_ev, y_out), q, jnp.where(is_event, Result.successful,
                                                                   result)

        return Stops(rho, jump)


def _add_event(y, c_y):
    """Add ``c_y`` to the adjoint part (the last ``len(c_y)`` entries) of a backward state."""
    n = c_y.shape[0]
    return y.at[y.shape[0] - n:].add(c_y) if n else y


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
                       step_limit, direction):
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
        st, _, _, _ = run(g, lcfg, st, t_to, rtol, atol, stops=stops, step_limit=step_limit,
                          direction=direction)
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
                            nodes=spec, node_buf=spec.init(n, st.y.dtype), step_limit=step_limit,
                            direction=direction)
        return st._replace(q=q + flush(buf))

    return lax.while_loop(cond, body, st)


def _stop_times(taus):
    """Backward stops: ``ρ = -τ`` of ``ts[-2], ..., ts[0]`` (increasing)."""
    return -taus[:-1][::-1]


# ---------------------------------------------------------------------------------------------
# BacksolveAdjoint


def _backsolve(mode: BacksolveAdjoint, problem: Problem, x: Primal, ys, fwd_result,
               extra: _Extra):
    ct = extra.ct
    n_out, n = ys.shape
    params_flat, unravel = ravel_pytree(x.params)
    m = params_flat.shape[0]
    skip = ~Result.succeeded(fwd_result)
    ys = _sanitize(ys, skip)
    if n_out == 1:
        return _single_time(problem, x, ys, ct, skip)
    sign, taus, _ = internal(problem, x)
    rtol, atol = _tolerances(mode, problem)

    def fn(t, z, p):
        return problem.fn(t, z, p, problem.nondiff)

    # The backward solve runs in ρ = -τ (increasing), real time t = -sign·ρ, so the loop's
    # direction is -sign and g is the real-time field of [z, a] (and of a_θ):
    # dz/dt = f, da/dt = -a f_z, da_θ/dt = -a f_θ.
    direction = -sign

    def g(rho, s):
        t = direction * rho
        z, a = s[:n], s[n:]
        if mode.seminorm:
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
    lcfg = _adjoint_config(mode, problem)
    s0 = jnp.concatenate([extra.y_end, a0])
    st = start(g, lcfg, rho0, rho_end, s0, jnp.zeros((m,), params_flat.dtype), rtol, atol,
               direction=direction)
    st = st._replace(ints=st.ints.at[NEXT].set(first))
    stops = extra.stops(taus, jump, n_out)
    st = _integrate_adjoint(mode, problem, g, flush, st, rho_end, rtol, atol, stops,
                            st.ints[STEPS] + problem.cfg.max_steps, direction)
    a_final = st.y[n:]
    return _finish(problem, x, ys, ct, skip, a_final, a_final - ct[0], unravel(st.q),
                   _stats(st), st.ints[RESULT], _BACKSOLVE_HINT, extra.c_params)


# ---------------------------------------------------------------------------------------------
# Walking a bounded record backwards (CheckpointAdjoint and InterpolatedAdjoint)


def _walk(problem: Problem, x: Primal, n_acc, rec, recorder: Recorder, leaf, carry, bstats):
    """Process every recorded forward step in reverse time order.

    ``leaf(recorder, buf, level, count, seg_end, carry) -> carry`` handles a record of the last
    level, whose entries are consecutive steps (stride one) ending at ``seg_end``. Every other
    level is cut into pieces, from the last: where its stride is one, runs of consecutive
    entries are copied down; otherwise each entry is replayed into a finer record. The leaf is
    traced once. Returns ``(carry, bstats)`` with the replays' statistics added.
    """
    cfg = problem.cfg
    sign, taus, g = internal(problem, x)
    levels, lower = _record_levels(cfg.max_steps, recorder.slots)
    child = Recorder(lower, thin=False, dense=recorder.dense)
    bits = child.bits
    t_end = taus[-1]
    lcfg = cfg.loop
    degree = cfg.solver.dense_degree

    def process(depth, rec_obj, buf, level, count, exp, seg_end, carry, bstats):
        if depth == levels - 1:  # the stride is one here (_record_levels guarantees it)
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
            bstats = bstats + _stats(st_end, st_j)
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


def _step_size(st: LoopState, t_end):
    """The size of the accepted step that starts from recorded state ``st``."""
    t, h = st.fs[T], st.fs[H]
    return jnp.where(h >= t_end - t, t_end - t, h)


# ---------------------------------------------------------------------------------------------
# CheckpointAdjoint


def _checkpoint(mode: CheckpointAdjoint, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                rec, extra: _Extra):
    ct = extra.ct
    cfg = problem.cfg
    solver = cfg.solver
    n_out, n = ys.shape
    dtype = ys.dtype
    skip = ~Result.succeeded(fwd_result)
    ys = _sanitize(ys, skip)
    n_acc = jnp.where(skip, 0, n_acc)
    sign, taus, _ = internal(problem, x)
    t_end = taus[-1]
    # One backward evaluation = one stage recomputed together with its VJP.
    nfe_per_step = solver.nfe_per_step

    def step_map(y, params, t, h):
        def g(tau, yy):
            return problem.fn(sign * tau, yy, params, problem.nondiff).astype(yy.dtype)

        f0 = g(t, y)
        res = solver.step(g, t, y, f0, h, t_end, direction=sign,
                          tol=(problem.rtol, problem.atol))
        coeffs, _ = solver.dense(g, t, y, h, res, t_end, direction=sign)
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
        (a, a_p, _, nsteps), bstats = _walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf,
                                            carry, bstats)
    else:
        a, a_p, _, nsteps = carry
    bstats = bstats + jnp.stack([nsteps, nsteps, 0 * nsteps, nsteps * nfe_per_step])
    result = jnp.asarray(Result.successful, jnp.int32)
    return _finish(problem, x, ys, ct, skip, a + ct[0], a, a_p, bstats, result, "",
                   extra.c_params)


# ---------------------------------------------------------------------------------------------
# InterpolatedAdjoint


def _interpolated(mode: InterpolatedAdjoint, problem: Problem, x: Primal, ys, n_acc, fwd_result,
                  rec, extra: _Extra):
    ct = extra.ct
    cfg = problem.cfg
    n_out, n = ys.shape
    params_flat, unravel = ravel_pytree(x.params)
    m = params_flat.shape[0]
    skip = ~Result.succeeded(fwd_result)
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

    direction = -sign  # the backward solve: ρ = -τ increasing, real time t = -sign·ρ

    def make(z_of):
        """``(g, flush)``: the real-time adjoint field ``da/dt = -a f_z(t, z(t))`` (and
        ``da_θ/dt = -a f_θ``) with ``z`` read at ``τ = -ρ`` from ``z_of``."""

        def g(rho, a):
            t, z = direction * rho, z_of(-rho)
            if mode.seminorm:
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
            theta = jnp.clip((tau - st_j.fs[T]) / _step_size(st_j, t_end), 0.0, 1.0)
            return eval_dense(buf["y"][j], buf["c"][j], theta).astype(buf["y"].dtype)

        g, flush = make(z_of)
        rho_to = jnp.where(count > 0, -buf["fs"][0, T], st_adj.fs[T])
        st_adj = _integrate_adjoint(mode, problem, g, flush, st_adj, rho_to, rtol, atol, stops,
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
    (st, _), bstats = _walk(problem, x, n_acc, rec, mode.recorder(cfg), leaf, (st0, limit),
                            bstats)
    bstats = bstats + _stats(st)
    return _finish(problem, x, ys, ct, skip, st.y, st.y - ct[0], unravel(st.q), bstats,
                   st.ints[RESULT], _INTERPOLATED_HINT, extra.c_params)


# ---------------------------------------------------------------------------------------------
# ForwardMode


def _forward_mode(problem: Problem, x: Primal, fwd_result, ct, ct_ev=None):
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
    # A failed forward solve contributes nothing (see _finish).
    g = unravel(jnp.where(Result.succeeded(fwd_result), g, 0.0))
    return Primal(g.y0, g.ts, g.params, stats[0].astype(x.probe.dtype))


def backward_from_scratch(problem: Problem, x: Primal, ct):
    """The mode's backward pass with the forward solve recomputed from ``x`` (differentiable
    in forward mode: the second derivatives are built from it)."""
    mode = problem.cfg.adjoint
    ys, st, rec, _ = forward(problem, x, mode.recorder(problem.cfg))
    return mode.backward(problem, x, ys, st.ints[ACCEPTED], st.ints[RESULT], rec, ct)
