"""The adaptive integration loop: one ``lax.while_loop`` for every solve neuralode makes.

Everything here works on flat 1-D arrays in *internal time* ``τ``, which always increases: a
solve of decreasing ``ts`` (or an adjoint solve running backwards) maps time through a sign
before calling :func:`run` (``neuralode._odeint`` and ``neuralode._adjoint`` do that).

One loop serves four purposes, switched on statically:

* the forward solve: dense output at the output times, optionally a bounded record of step
  checkpoints (:class:`Recorder`) for the exact and interpolated adjoints;
* the replay of a recorded segment (same body, same decisions, a finer record);
* the adjoint solves: a quadrature channel (the parameter adjoint), *stops* at the output
  times, where the step lands exactly and a *jump* changes the state (the output cotangent
  is added, the reconstructed state is reset);
* the forward sensitivity (the same forward solve under ``jax.jvp``).

Step-size decisions never carry derivatives (``lax.stop_gradient``): derivatives of a solve are
those of the discrete method with its steps held fixed.

On CPU the step cost of small systems is the number of kernels XLA runs per step, not the
arithmetic, so the loop is written for few kernels: the state, its derivative and the float
slots travel as one flat array (one update kernel), the int slots are updated by one vector
expression, the next attempt is decided at the end of the previous step, and conditionals
read the loop carry rather than values computed for them outside (see :func:`run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import jax
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
from ._custom_types import (
    BoolScalar,
    Buffers,
    Direction,
    DType,
    FieldValue,
    FloatSlots,
    IntScalar,
    IntScalarLike,
    IntSlots,
    OutputBuffer,
    PackedFloats,
    QuadState,
    RealScalar,
    RealScalarLike,
    RecordCarry,
    State,
    Times,
    VectorField,
)
from ._solution import Result
from ._solvers import AbstractAdaptiveSolver
from ._solvers._rk import eval_dense
from ._solvers._step import StepContext, StepResult

if TYPE_CHECKING:
    from ._plugins import Events, Nodes, Recorder, Stops

# Float slots of LoopState.fs.
T = 0  # current time
H = 1  # size of the next attempt (the controller's proposal)
PREV = 2  # error ratio of the previous accepted step (PI memory; 1 before the first step)
NUM_FLOAT = 3

# Int slots of LoopState.ints.
STEPS = 0  # attempted steps
ACCEPTED = 1
REJECTED = 2
NFE = 3  # vector-field evaluations
NJEV = 4  # Jacobian evaluations (implicit methods)
NLIN = 5  # linear solves (implicit methods)
RESULT = 6  # a Result code
REJ_LAST = 7  # 1 if the previous attempt was rejected
NONFINITE = 8  # 1 once any attempt produced a non-finite error estimate
NEXT = 9  # next output index (forward) or next stop index (adjoint)
NUM_INT = 10

STAT_SLOTS = (STEPS, ACCEPTED, REJECTED, NFE, NJEV, NLIN)
# Unit vectors of the int slots, and which slots accumulate (the others are replaced).
_E = np.eye(NUM_INT, dtype=np.int32)
_KEEP = np.isin(np.arange(NUM_INT), STAT_SLOTS).astype(np.int32)

# Up to this many output times (and output entries, times x state size), every accepted step
# evaluates its interpolant at all of them and selects (no branch, no inner loop): cheaper for
# small states, where a conditional costs more than the arithmetic. Beyond, a conditional inner
# loop visits only the output times inside the step.
_SELECT_OUTPUTS_MAX = 8
_SELECT_ENTRIES_MAX = 256

# Inside :func:`run`: the packed state ``(z, dq, q, ints)`` and the whole loop carry
# ``(state, ys, record carry, node buffer, event carry)``.
_Packed: TypeAlias = tuple[PackedFloats, QuadState | None, QuadState | None, IntSlots]
_Carry: TypeAlias = tuple[
    _Packed, OutputBuffer | None, RecordCarry | None, Buffers | None, Buffers | None
]


class LoopState(NamedTuple):
    """What the loop carries from step to step (and what a checkpoint stores).

    Attributes:
        y: State, shape ``(n,)``.
        f: ``g(t, y)``: an array ``(n,)``, or ``(dy, dq)`` with a quadrature channel.
        q: Quadrature channel ``(m,)`` or ``None``.
        fs: Float slots ``[T, H, PREV]``.
        ints: Int32 slots ``[STEPS, ..., NEXT]``.
    """

    y: State
    f: FieldValue
    q: QuadState | None
    fs: FloatSlots
    ints: IntSlots


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Static settings of one loop.

    Attributes:
        solver: The adaptive solver.
        controller: Step-size controller settings.
        max_steps: Limit on attempted steps (counted from the state the loop starts with).
        quad: Whether ``g`` returns ``(dy, dq)`` (a quadrature channel).
        norm: How the quadrature channel enters the error: ``"semi"`` (not at all: a
            seminorm) or ``"mixed"`` (the larger of the RMS norms of ``y`` and ``q``).
    """

    solver: AbstractAdaptiveSolver
    controller: PIController
    max_steps: int
    quad: bool = False
    norm: str = "semi"


def dy_of(f: FieldValue, quad: bool) -> State:
    """The state part of the field's value (``dy`` of ``(dy, dq)``)."""
    return f[0] if quad else f


def time_dtype(dtype: DType) -> DType:
    """Dtype of times, step sizes and error ratios: the state's, but at least float32 (a
    half-precision time axis could not even tell steps apart)."""
    return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Error norm


def error_ratio(
    res: StepResult,
    y: State,
    y1: State,
    q: QuadState | None,
    q1: QuadState | None,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    cfg: LoopConfig,
) -> RealScalar:
    """Scaled RMS error estimate of an attempted step (``<= 1`` means accept).

    A non-finite new state makes the ratio NaN (``0 · x`` is NaN exactly for non-finite ``x``),
    in the same reduction, so such a step is rejected.
    """
    scale = error_scale(y, y1, rtol, atol)
    scaled = res.err / scale + 0.0 * y1
    if q1 is not None:
        scaled = scaled + 0.0 * jnp.sum(q1)
    ratio = rms_norm(scaled)
    if res.err2 is not None:
        # Hairer's DOP853 combination of the 5th and 3rd order estimates.
        e3 = rms_norm(res.err2 / scale)
        denom = jnp.sqrt(ratio * ratio + 0.01 * e3 * e3)
        ratio = ratio * ratio / jnp.where(denom == 0, 1.0, denom)
    if cfg.quad and cfg.norm == "mixed" and res.q_err is not None and q.shape[0] > 0:
        ratio_q = rms_norm(res.q_err / error_scale(q, q1, rtol, atol))
        ratio = jnp.maximum(ratio, ratio_q)  # NaN in either propagates
    return ratio


# ---------------------------------------------------------------------------------------------
# Starting a loop


def start(
    g: VectorField,
    cfg: LoopConfig,
    t0: RealScalarLike,
    t_end: RealScalarLike,
    y0: State,
    q0: QuadState | None,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    h0: RealScalarLike | None = None,
    direction: Direction = 1.0,
) -> LoopState:
    """The loop state at ``t0``: evaluates ``g`` once (twice for the automatic first step).

    The problem is ``dy/dτ = direction·g(τ, y)`` in the increasing internal time ``τ``.
    """
    dtype = time_dtype(y0.dtype)
    t0 = jnp.asarray(t0, dtype)
    f0 = g(t0, y0)
    nfe = 1
    if h0 is None:
        h0 = initial_step(
            lambda t, y: dy_of(g(t, y), cfg.quad), t0, y0, dy_of(f0, cfg.quad), t_end,
            cfg.solver.error_order, rtol, atol, direction=direction,
        )
        nfe += 1
    else:
        h0 = jnp.minimum(jnp.abs(jnp.asarray(h0, dtype)), t_end - t0)
    h0 = lax.stop_gradient(jnp.minimum(h0, dtmax_value(cfg.controller)))
    head = dy_of(f0, cfg.quad)
    ok = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(head))
    result = jnp.where(ok, Result.successful, Result.nonfinite)
    ints = jnp.zeros((NUM_INT,), jnp.int32).at[NFE].set(nfe).at[RESULT].set(result)
    fs = jnp.stack([jnp.asarray(t0, dtype), jnp.asarray(h0, dtype), jnp.ones((), dtype)])
    return LoopState(y0, f0, q0, fs, ints)


# ---------------------------------------------------------------------------------------------
# Output writing (forward solves)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Dense output at the (internal, increasing) times ``taus`` (the first is the start)."""

    taus: Times

    def init(self, y0: State) -> OutputBuffer:
        n_out = self.taus.shape[0]
        return jnp.full((n_out, y0.shape[0]), jnp.nan, y0.dtype).at[0].set(y0)

    def write(
        self,
        ctx: StepContext,
        cfg: LoopConfig,
        ys: OutputBuffer,
        ints: IntSlots,
        span: Callable[[], tuple[RealScalar, State, RealScalar, RealScalar, State, StepResult]],
        res: StepResult,
        accepted: BoolScalar,
    ) -> tuple[OutputBuffer, IntSlots]:
        """Write the outputs inside an accepted step ``(t, t1]``: returns ``(ys, ints)`` with
        the next output index ``ints[NEXT]`` advanced (and ``ints[NFE]`` by what the dense
        output cost).

        ``span() -> (t, y, h, t1, y1, res)`` is the step. It is called where its values are needed,
        inside the conditional, so that the branch computes them from the loop carry instead
        of taking them as operands (each a kernel of its own, outside).
        """
        taus = self.taus
        n_out = taus.shape[0]
        solver = cfg.solver
        t, y, h, t1, y1, res = span()
        i_out = ints[NEXT]
        if (
            not solver.dense_costs_evaluations
            and n_out <= _SELECT_OUTPUTS_MAX
            and n_out * y.shape[0] <= _SELECT_ENTRIES_MAX
        ):
            coeffs, _ = solver.dense(ctx, t, y, h, res)
            inside = accepted & (taus > t) & (taus <= t1)
            theta = jnp.where(inside, (taus - t) / h, 0.0)
            vals = eval_dense(y[None, :], coeffs[:, None, :], theta[:, None]).astype(ys.dtype)
            vals = jnp.where((taus == t1)[:, None], y1[None, :], vals)
            ys = jnp.where(inside[:, None], vals, ys)
            return ys, ints + jnp.sum(inside, dtype=ints.dtype) * _E[NEXT]

        def write(c: tuple[OutputBuffer, IntSlots]) -> tuple[OutputBuffer, IntSlots]:
            ys, ints = c
            t, y, h, t1, y1, res = span()
            coeffs, extra = solver.dense(ctx, t, y, h, res)

            # The inner loop reads the step from the carry as well (under ``vmap`` the
            # conditional becomes a select and the loop's operands would be kernels).
            def more(c: tuple[IntScalar, OutputBuffer]) -> BoolScalar:
                i, _ = c
                t1 = span()[3]
                return (i < n_out) & (taus[jnp.minimum(i, n_out - 1)] <= t1)

            def one(c: tuple[IntScalar, OutputBuffer]) -> tuple[IntScalar, OutputBuffer]:
                i, ys = c
                t, y, h, t1, y1, _ = span()
                theta = (taus[i] - t) / h
                yi = jnp.where(taus[i] == t1, y1, eval_dense(y, coeffs, theta).astype(y1.dtype))
                return i + 1, ys.at[i].set(yi)

            i1, ys = lax.while_loop(more, one, (ints[NEXT], ys))
            # Elementwise (not a scatter: under ``vmap`` that would be a kernel of its own).
            ints = ints + (i1 - ints[NEXT]) * _E[NEXT]
            if solver.dense_costs_evaluations:
                ints = ints + jnp.asarray(extra, ints.dtype) * _E[NFE]
            return ys, ints

        # The branch that writes nothing returns its operands unchanged (no copy).
        has = accepted & (i_out < n_out) & (taus[jnp.minimum(i_out, n_out - 1)] <= t1)
        return lax.cond(has, write, lambda c: c, (ys, ints))


# ---------------------------------------------------------------------------------------------
# The loop


def run(
    g: VectorField,
    cfg: LoopConfig,
    st: LoopState,
    t_end: RealScalar,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    *,
    outputs: Outputs | None = None,
    ys: OutputBuffer | None = None,
    stops: Stops | None = None,
    recorder: Recorder | None = None,
    rec: RecordCarry | None = None,
    count_end: IntScalarLike | None = None,
    nodes: Nodes | None = None,
    node_buf: Buffers | None = None,
    step_limit: IntScalarLike | None = None,
    direction: Direction = 1.0,
    events: Events | None = None,
    ev: Buffers | None = None,
) -> (
    tuple[LoopState, OutputBuffer | None, RecordCarry | None, Buffers | None]
    | tuple[LoopState, OutputBuffer | None, RecordCarry | None, Buffers | None, Buffers]
):
    """Integrate from ``st`` to ``t_end`` (or until ``count_end`` steps are accepted).

    Args:
        g: The vector field ``g(τ, y)`` (or ``(dy, dq)``); the problem is
            ``dy/dτ = direction·g(τ, y)`` in the increasing internal time ``τ``.
        cfg: Static loop settings.
        st: The starting state (from :func:`start`, a record entry, or a previous run).
        t_end: Final internal time; stage times never pass it.
        rtol, atol: Tolerances.
        outputs, ys: Dense output times and the output buffer (forward solves).
        stops: Stop times with jumps (adjoint solves).
        recorder, rec: Step record and its carry ``(buffers, level, k0)``: accepted step
            ``ints[ACCEPTED] - k0`` is the record's step count.
        count_end: Stop once ``ints[ACCEPTED]`` reaches this (replays).
        nodes, node_buf: Quadrature nodes of accepted steps and their buffer; the loop stops
            early when the buffer is full (see :class:`Nodes`).
        step_limit: Stop (with ``Result.max_steps_reached``) when ``ints[STEPS]`` reaches
            this; default ``max_steps`` more than at the start.
        direction: ``±1`` (a runtime scalar): the sign relating real and internal time, which
            the solver applies to its state combinations (never to the field's values).
        events, ev: Event functions and their carry (:meth:`Events.init`); a terminal event
            ends the loop with ``Result.event``, outputs after it unwritten.

    Returns:
        ``(state, ys, rec, node_buf)`` (and ``ev`` last, with events); a loop that ran out of
        steps has ``Result.max_steps_reached``.
    """
    solver, ctrl = cfg.solver, cfg.controller
    ctx = StepContext(g, t_end, cfg.quad, direction, (rtol, atol))
    dtmin, dtmax = dtmin_value(ctrl), dtmax_value(ctrl)
    order = solver.error_order
    beta = solver.controller_beta
    limit = st.ints[STEPS] + cfg.max_steps if step_limit is None else step_limit
    n_stops = 0 if stops is None else stops.taus.shape[0]
    n = st.y.shape[0]
    tdt = st.fs.dtype
    ydt, fdt = st.y.dtype, dy_of(st.f, cfg.quad).dtype
    zt = 2 * n  # where the float slots start in the packed carry (see pack)

    def limit_of(i_stop: IntScalar) -> tuple[RealScalar, BoolScalar | None, RealScalar | None]:
        """``(t_lim, has_stop, t_stop)``: where the attempt must end at the latest."""
        if not n_stops:
            return t_end, None, None
        has_stop = i_stop < n_stops
        t_stop = jnp.where(has_stop, stops.taus[jnp.minimum(i_stop, n_stops - 1)], t_end)
        return jnp.minimum(t_stop, t_end), has_stop, t_stop

    def attempt(t: RealScalar, h: RealScalar, i_stop: IntScalar) -> tuple[BoolScalar, RealScalar]:
        """``(clip, h_eff)``: the next attempt, ``h`` clipped to land on a stop or the end."""
        t_lim = limit_of(i_stop)[0]
        clip = h >= t_lim - t
        return clip, jnp.where(clip, t_lim - t, h)

    # Inside the loop the state, its derivative, the float slots and the next attempt
    # ``[y, f, T, H, PREV, h_eff, clip]`` travel as one flat array ``z`` in the time dtype
    # (which holds the state's values exactly). The new ``z`` is one kernel where separate
    # arrays cost an update kernel and a copy each per step. The attempt (the proposal clipped
    # to the next stop or the end) is decided at the end of the previous step, inside that
    # kernel: decided at the start of a step it costs kernels of its own, because XLA does not
    # duplicate a scalar computed from the carry into the many stage kernels that read it.
    def pack(st: LoopState) -> _Packed:
        clip, h_eff = attempt(st.fs[T], st.fs[H], st.ints[NEXT])
        z = jnp.concatenate([
            st.y.astype(tdt), dy_of(st.f, cfg.quad).astype(tdt), st.fs,
            jnp.stack([h_eff, clip.astype(tdt)]),
        ])
        return z, (st.f[1] if cfg.quad else None), st.q, st.ints

    def unpack(
        z: PackedFloats, dq: QuadState | None, q: QuadState | None, ints: IntSlots
    ) -> LoopState:
        y, f = z[:n].astype(ydt), z[n:zt].astype(fdt)
        return LoopState(y, (f, dq) if cfg.quad else f, q, z[zt:zt + NUM_FLOAT], ints)

    def cond(carry: _Carry) -> BoolScalar:
        (z, _, _, ints), _, _, node_buf, _ = carry
        go = (z[zt + T] < t_end) & (ints[STEPS] < limit) & (ints[RESULT] == Result.successful)
        if count_end is not None:
            go = go & (ints[ACCEPTED] < count_end)
        if nodes is not None:
            go = go & (node_buf["count"] + nodes.per_step <= nodes.capacity)
        return go

    def body(carry: _Carry) -> _Carry:
        state, ys, rec, node_buf, ev = carry

        def view() -> tuple[
            LoopState, RealScalar, BoolScalar, RealScalar,
            tuple[RealScalar, BoolScalar | None, RealScalar | None],
        ]:
            """The step's starting point, read from the carry. Called again where a value is
            needed inside a conditional, so that the branch reads the carry itself instead of
            a value materialised outside (a kernel of its own) for it."""
            st = unpack(*state)
            z = state[0]
            h_eff, clip = z[zt + NUM_FLOAT], z[zt + NUM_FLOAT + 1] != 0
            t_lim, has_stop, t_stop = limit_of(st.ints[NEXT])
            t1 = jnp.where(clip, t_lim, st.fs[T] + h_eff)
            return st, h_eff, clip, t1, (t_lim, has_stop, t_stop)

        st, h_eff, clip, t1, (t_lim, has_stop, t_stop) = view()
        t, h, prev = st.fs[T], st.fs[H], st.fs[PREV]
        rej_last = st.ints[REJ_LAST] != 0
        res = solver.step(ctx, t, st.y, st.f, h_eff)
        q1 = st.q + res.q_inc if cfg.quad else st.q
        ratio = lax.stop_gradient(
            error_ratio(res, st.y, res.y1, st.q, q1, rtol, atol, cfg)
        )
        finite = jnp.isfinite(ratio)
        accepted = ratio <= 1.0  # False for NaN: a non-finite step is rejected
        if res.ok is not None:
            accepted = accepted & res.ok
        nfe = jnp.asarray(res.nfe, jnp.int32)
        y_out = res.y1
        if events is not None:
            ev, stop, tau_ev, y_ev, extra = events.check(
                ev, ctx, cfg, t, st.y, h_eff, t1, res.y1, res, accepted
            )
            nfe = nfe + extra
            y_out = jnp.where(stop, y_ev, res.y1)  # outputs only up to a terminal event

        if recorder is not None:
            buf, level, k0 = rec
            coeffs = None
            if recorder.dense:
                coeffs, extra = solver.dense(ctx, t, st.y, h_eff, res)
                nfe = nfe + jnp.where(accepted, extra, 0)
            buf, level = recorder.write(buf, level, st.ints[ACCEPTED] - k0, st, coeffs, accepted)
            rec = (buf, level, k0)
        if nodes is not None:
            node_buf = nodes.write(node_buf, res, t, h_eff, t_end, accepted, direction)

        # The controller. A step clipped to land on a stop or the end keeps the proposal it
        # was clipped from, if larger (landing says nothing about the size the error allows).
        factor = step_factor(ratio, prev, accepted, rej_last, order, ctrl, beta)
        if res.ok is not None:  # a failed step (e.g. Newton) shrinks as far as allowed
            factor = jnp.where(res.ok, factor, ctrl.factormin)
        h_new = jnp.minimum(h_eff * factor, dtmax)
        h_new = lax.stop_gradient(jnp.where(accepted & clip, jnp.maximum(h_new, h), h_new))
        t_new = jnp.where(accepted, t1, t)
        if events is not None:
            t_new = jnp.where(stop, tau_ev, t_new)

        y_new = jnp.where(accepted, res.y1, st.y)
        f_new = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), res.f1, st.f)
        q_new = jnp.where(accepted, q1, st.q) if cfg.quad else st.q
        next_idx = st.ints[NEXT]
        jump_result = None
        if n_stops:
            i_stop = st.ints[NEXT]
            landed = accepted & clip & has_stop & (t_stop <= t_end) & (t1 >= t_stop)
            y_j, q_j, jump_result = stops.jump(jnp.minimum(i_stop, n_stops - 1), y_new, q_new)
            y_new = jnp.where(landed, y_j, y_new)
            if cfg.quad:
                q_new = jnp.where(landed, q_j, q_new)
            again = landed & (t1 < t_end)
            f_new = lax.cond(again, lambda: g(t1, y_new), lambda: f_new)
            nfe = nfe + again.astype(jnp.int32)
            next_idx = i_stop + landed.astype(jnp.int32)
            jump_result = jnp.where(landed, jump_result, Result.successful)

        prev_new = jnp.where(accepted, jnp.maximum(ratio, 1e-4), prev).astype(tdt)
        t_new, h_new = t_new.astype(tdt), h_new.astype(tdt)
        clip_new, h_eff_new = attempt(t_new, h_new, next_idx)
        # One-element pieces, not a stacked block: under ``vmap`` a stacked block becomes a
        # transposed kernel of its own, into which XLA fuses the controller's log and exp once
        # for every slot that depends on the new step size.
        slots = (t_new, h_new, prev_new, h_eff_new, clip_new.astype(tdt))
        z = jnp.concatenate([
            y_new.astype(tdt), dy_of(f_new, cfg.quad).astype(tdt),
            *(jnp.reshape(v, (1,)) for v in slots),
        ])
        # The failure checks read the new time and step size from the new ``z`` (given the
        # controller's expressions instead, XLA computes them in a kernel of their own).
        t_new, h_new = z[zt + T], z[zt + H]
        at_end = accepted & clip & (t_lim >= t_end)
        underflow = ~at_end & ((h_new < dtmin) | (t_new + h_new <= t_new))
        saw_nonfinite = (st.ints[NONFINITE] != 0) | ~finite
        result = jnp.where(
            underflow,
            jnp.where(saw_nonfinite, Result.nonfinite, Result.dt_min_reached),
            st.ints[RESULT],
        )
        if events is not None:
            result = jnp.where(stop, Result.event, result)
        if jump_result is not None:
            result = jnp.where(result == Result.successful, jump_result, result)

        # All int slots in one vector expression (one kernel instead of one per slot): the
        # counters accumulate, the flags and the next stop index are replaced.
        acc = accepted.astype(jnp.int32)
        i32 = jnp.int32
        ints = (
            st.ints * _KEEP
            + _E[STEPS]
            + acc * _E[ACCEPTED]
            + (1 - acc) * (_E[REJECTED] + _E[REJ_LAST])
            + nfe * _E[NFE]
            + jnp.asarray(result, i32) * _E[RESULT]
            + saw_nonfinite.astype(i32) * _E[NONFINITE]
            + jnp.asarray(next_idx, i32) * _E[NEXT]
        )
        if not (isinstance(res.njev, int) and res.njev == 0):
            ints = ints + jnp.asarray(res.njev, i32) * _E[NJEV]
        if not (isinstance(res.nlinsolve, int) and res.nlinsolve == 0):
            ints = ints + jnp.asarray(res.nlinsolve, i32) * _E[NLIN]

        if outputs is not None:
            def span() -> tuple[RealScalar, State, RealScalar, RealScalar, State, StepResult]:
                st_, h_eff_, _, t1_, _ = view()
                t_out = t1_ if events is None else jnp.where(stop, tau_ev, t1_)
                # The step's data refers to the starting state (e.g. the first stage is ``f``):
                # read those from the carry as well.
                fresh = {id(st.y): st_.y, id(dy_of(st.f, cfg.quad)): dy_of(st_.f, cfg.quad)}
                res_ = jax.tree.map(lambda a: fresh.get(id(a), a), res)
                return st_.fs[T], st_.y, h_eff_, t_out, y_out, res_

            ys, ints = outputs.write(ctx, cfg, ys, ints, span, res, accepted)
        state = (z, (f_new[1] if cfg.quad else None), q_new, ints)
        return state, ys, rec, node_buf, ev

    state, ys, rec, node_buf, ev = lax.while_loop(
        cond, body, (pack(st), ys, rec, node_buf, ev)
    )
    st = unpack(*state)
    ran_out = (st.ints[RESULT] == Result.successful) & (st.fs[T] < t_end)
    ran_out = ran_out & (st.ints[STEPS] >= limit)
    st = st._replace(ints=st.ints.at[RESULT].set(
        jnp.where(ran_out, Result.max_steps_reached, st.ints[RESULT]).astype(jnp.int32)
    ))
    if events is not None:
        return st, ys, rec, node_buf, ev
    return st, ys, rec, node_buf


STAT_NAMES = ("num_steps", "num_accepted", "num_rejected", "nfe", "njev", "nlinsolve")


def stats_of(st: LoopState) -> dict[str, IntScalar]:
    """The statistics of a finished loop as a dict (the public ``Solution.stats``)."""
    return {name: st.ints[slot] for name, slot in zip(STAT_NAMES, STAT_SLOTS, strict=True)}


def direction_of(ts: Times) -> RealScalar:
    """``+1`` for increasing (or single) output times, ``-1`` for decreasing."""
    if ts.shape[0] < 2:
        return jnp.ones((), ts.dtype)
    return jnp.where(ts[-1] >= ts[0], 1.0, -1.0).astype(ts.dtype)
