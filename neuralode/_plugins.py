"""The adaptive loop's optional plug-ins besides the outputs, each switched on statically by
passing it to :func:`neuralode._integrate.run`: a bounded record of accepted steps
(:class:`Recorder`, the exact and interpolated adjoints), stops with jumps (:class:`Stops`,
the adjoint solves), event functions (:class:`Events`, forward solves) and the quadrature nodes
of accepted steps (:class:`Nodes`, the parameter adjoint of the continuous adjoints).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int

from ._custom_types import (
    BoolScalar,
    Buffers,
    DenseCoeffs,
    Direction,
    DType,
    EventFunction,
    EventValues,
    IntScalar,
    IntScalarLike,
    Jump,
    RealScalar,
    RecordCarry,
    State,
    Times,
)
from ._integrate import NUM_FLOAT, NUM_INT, LoopConfig, LoopState, T, dy_of, time_dtype
from ._solvers._rk import eval_dense
from ._solvers._step import StepContext, StepResult

# ---------------------------------------------------------------------------------------------
# Bounded step checkpoints


def rotate_left(j: Int[Array, "*b"], r: IntScalarLike, bits: int) -> Int[Array, "*b"]:
    """Rotate the ``bits``-bit integer ``j`` left by ``r`` (``0 <= r < bits``)."""
    if bits == 0:
        return j
    mask = (1 << bits) - 1
    return ((j << r) | (j >> ((bits - r) % bits))) & mask


@dataclasses.dataclass(frozen=True)
class Recorder:
    """Keeps a bounded record of accepted steps: at most ``slots`` loop states.

    Accepted step ``k`` (counted from ``k0``) is kept if ``k - k0`` is a multiple of the
    stride ``2^L``, as entry ``j = (k - k0) >> L`` in slot ``rotate_left(j, L)``. With
    ``thin=True`` (the forward solve, whose length is unknown), an entry that would not fit
    doubles the stride: every other entry becomes free and the slots are reused. Entry ``j``
    of stride ``2^(L+1)`` lives where entry ``2j`` of stride ``2^L`` lived, and the new
    entries ``j >= slots/2`` take the slots of the freed odd entries (a rotation of the slot
    index), so nothing is ever moved. This is online checkpointing with ``O(slots)`` memory:
    the stride ends as the smallest power of two that fits all steps.

    Each entry holds the loop state *before the accepted attempt* of its step (a valid state to
    replay from) and, with ``dense=True``, the step's dense-output coefficients.
    """

    slots: int  # a power of two, at least 2
    thin: bool
    dense: bool = False

    def __post_init__(self) -> None:
        if self.slots < 2 or self.slots & (self.slots - 1):
            raise ValueError(f"Recorder: `slots` must be a power of two >= 2, got {self.slots}.")

    @property
    def bits(self) -> int:
        return int(self.slots).bit_length() - 1

    def init(
        self, st: LoopState, degree: int, level: IntScalarLike = 0, k0: IntScalarLike = 0
    ) -> RecordCarry:
        """The record carry ``(buffers, level, k0)`` for a loop starting at ``st``."""
        n = st.y.shape[0]
        buf = {
            "y": jnp.zeros((self.slots, n), st.y.dtype),
            "f": jnp.zeros((self.slots, n), st.y.dtype),
            "fs": jnp.zeros((self.slots, NUM_FLOAT), st.fs.dtype),
            "ints": jnp.zeros((self.slots, NUM_INT), jnp.int32),
        }
        if self.dense:
            buf["c"] = jnp.zeros((self.slots, degree, n), st.y.dtype)
        return buf, jnp.asarray(level, jnp.int32), jnp.asarray(k0, jnp.int32)

    def slot(self, j: Int[Array, "*b"], level: IntScalar) -> Int[Array, "*b"]:
        return rotate_left(j, level % max(self.bits, 1), self.bits)

    def write(
        self,
        rec: Buffers,
        level: IntScalar,
        k: IntScalar,
        st: LoopState,
        coeffs: DenseCoeffs | None,
        accepted: BoolScalar,
    ) -> tuple[Buffers, IntScalar]:
        """Record step ``k`` (relative count) with pre-attempt state ``st`` if kept."""
        if self.thin:
            grow = accepted & ((k >> level) == self.slots) & ((k & ((1 << level) - 1)) == 0)
            level = level + grow.astype(level.dtype)
        keep = accepted & ((k & ((1 << level) - 1)) == 0)
        j = k >> level
        idx = jnp.where(keep & (j < self.slots), self.slot(j, level), self.slots)
        rec = dict(rec)
        rec["y"] = rec["y"].at[idx].set(st.y, mode="drop")
        rec["f"] = rec["f"].at[idx].set(dy_of(st.f, False), mode="drop")
        rec["fs"] = rec["fs"].at[idx].set(st.fs, mode="drop")
        rec["ints"] = rec["ints"].at[idx].set(st.ints, mode="drop")
        if self.dense:
            rec["c"] = rec["c"].at[idx].set(coeffs, mode="drop")
        return rec, level

    def entry(
        self, rec: Buffers, level: IntScalar, j: IntScalar
    ) -> tuple[LoopState, DenseCoeffs | None]:
        """``(LoopState, coeffs or None)`` of entry ``j``."""
        s = self.slot(j, level)
        st = LoopState(rec["y"][s], rec["f"][s], None, rec["fs"][s], rec["ints"][s])
        return st, (rec["c"][s] if self.dense else None)


# ---------------------------------------------------------------------------------------------
# Stops with jumps (adjoint solves)


@dataclasses.dataclass(frozen=True)
class Stops:
    """Times where every step lands exactly and ``jump(i, y, q) -> (y, q, result)`` applies.

    ``taus`` are increasing internal times; stop ``i`` is ``taus[i]``. After a jump the vector
    field is evaluated again at the new state (one evaluation), except at the end.
    """

    taus: Times
    jump: Jump = dataclasses.field(compare=False)


# ---------------------------------------------------------------------------------------------
# Events (forward solves)


@dataclasses.dataclass(frozen=True)
class Events:
    """Event functions checked after every accepted step (see ``neuralode._event``).

    ``cond(τ, y)`` returns the values of all event functions (a vector) at internal time
    ``τ``; ``directions`` holds ``+1``/``-1``/``0`` per event and ``terminal`` whether it stops
    the solve. The carry records the first event found: its internal time, index and state. A
    terminal event overrides a non-terminal one found before it.
    """

    cond: EventFunction = dataclasses.field(compare=False)
    directions: tuple[int, ...]
    terminal: tuple[bool, ...]

    def init(self, st: LoopState) -> Buffers:
        tdtype = st.fs.dtype
        return {
            "g": lax.stop_gradient(self.cond(st.fs[T], st.y)),
            "found": jnp.zeros((), bool),
            "tau": jnp.full((), jnp.inf, tdtype),
            "index": jnp.full((), -1, jnp.int32),
            "y": jnp.full_like(st.y, jnp.nan),
        }

    def check(
        self,
        ev: Buffers,
        ctx: StepContext,
        cfg: LoopConfig,
        t: RealScalar,
        y: State,
        h: RealScalar,
        t1: RealScalar,
        y1: State,
        res: StepResult,
        accepted: BoolScalar,
    ) -> tuple[Buffers, BoolScalar, RealScalar, State, IntScalar]:
        """``(ev, stop, tau_stop, y_stop, nfe)`` after an attempted step."""
        from ._event import crossings, locate

        # Where the events fire is a step-size-like decision: no derivative flows through it
        # (the event time's derivative comes from the implicit function theorem instead).
        g1 = lax.stop_gradient(self.cond(t1, y1))
        cross = crossings(ev["g"], g1, self.directions) & accepted
        coeffs, extra = cfg.solver.dense(ctx, t, y, h, res)

        def interp(theta: RealScalar) -> State:
            return eval_dense(y, coeffs, theta).astype(y.dtype)

        def phi(theta: EventValues) -> EventValues:
            # one θ per event: every event function at its own θ
            vals = jax.vmap(lambda th: self.cond(t + th * h, interp(th)))(theta)
            return lax.stop_gradient(jnp.diagonal(vals))

        theta = lax.stop_gradient(locate(phi, ev["g"], g1, cross))
        terminal = jnp.asarray(self.terminal)
        theta_first = jnp.where(cross, theta, jnp.inf)
        index = jnp.argmin(theta_first).astype(jnp.int32)
        th = theta[index]
        any_cross = jnp.any(cross)
        tau = jnp.where(th >= 1.0, t1, t + th * h)
        y_at = jnp.where(th >= 1.0, y1, interp(th))
        stop = any_cross & terminal[index]
        record = any_cross & (~ev["found"] | stop)
        ev = {
            "g": jnp.where(accepted, g1, ev["g"]),
            "found": ev["found"] | any_cross,
            "tau": jnp.where(record, tau, ev["tau"]),
            "index": jnp.where(record, index, ev["index"]),
            "y": jnp.where(record, y_at, ev["y"]),
        }
        return ev, stop, tau, y_at, jnp.where(accepted, extra, 0)


# ---------------------------------------------------------------------------------------------
# Quadrature nodes (the parameter adjoint of the continuous adjoints)


@dataclasses.dataclass(frozen=True)
class Nodes:
    """A buffer of the quadrature nodes of accepted steps: stage time, stage state, weight.

    A quantity ``q`` with ``dq/dτ = direction·G(τ, y)`` that does not feed back into ``y`` is
    the sum ``Σ w_j G(τ_j, y_j)`` over these nodes (``w_j = direction·h·b_j``, exact for the
    Runge-Kutta method). Recording the nodes and evaluating ``G`` on a whole buffer at once
    (one batched call, e.g. one vector-Jacobian product for all nodes) is much cheaper than
    carrying ``q`` through the loop when ``q`` is long (the parameter adjoint) and the loop
    is ``vmap`` ped.
    A loop stops when the next step's nodes might not fit.
    """

    capacity: int
    per_step: int

    def init(self, n: int, dtype: DType) -> Buffers:
        tdtype = time_dtype(dtype)
        return {
            "t": jnp.zeros((self.capacity,), tdtype),
            "y": jnp.zeros((self.capacity, n), dtype),
            "w": jnp.zeros((self.capacity,), tdtype),
            "count": jnp.zeros((), jnp.int32),
        }

    def write(
        self,
        buf: Buffers,
        res: StepResult,
        t: RealScalar,
        h: RealScalar,
        t_end: RealScalar,
        accepted: BoolScalar,
        direction: Direction = 1.0,
    ) -> Buffers:
        """Record the nodes of an accepted step (weights ``direction·h·b_j``)."""
        count = buf["count"]
        buf = dict(buf)
        for jj, (c, b, yj) in enumerate(res.nodes):
            idx = jnp.where(accepted, count + jj, self.capacity)  # out of range: dropped
            tj = t + c * h
            buf["t"] = buf["t"].at[idx].set(jnp.minimum(tj, t_end), mode="drop")
            buf["y"] = buf["y"].at[idx].set(yj, mode="drop")
            buf["w"] = buf["w"].at[idx].set(direction * h * b, mode="drop")
        buf["count"] = count + accepted.astype(jnp.int32) * self.per_step
        return buf
