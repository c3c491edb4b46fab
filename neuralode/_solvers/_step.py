"""What the integrator hands an adaptive solver (a :class:`StepContext`, once per solve) and
what one attempted step hands back (a :class:`StepResult`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from .._custom_types import (
    Direction,
    FieldValue,
    QuadState,
    RealScalarLike,
    State,
    Tolerances,
    VectorField,
)


class StepContext(NamedTuple):
    """What stays the same over a solve: the problem a solver's steps integrate.

    The solver protocol is ``step(ctx, t, y, f0, h)`` and ``dense(ctx, t, y, h, result)``;
    the loop builds one context per solve and passes it to every step.

    Attributes:
        g: The vector field ``g(t, y)`` in the increasing internal time; the problem is
            ``dy/dt = direction·g(t, y)``.
        t_hi: Stage times never pass it (the end of the solve); ``None``: unbounded.
        quad: Whether ``g`` returns ``(dy, dq)``, a quadrature channel ``q`` that does not
            feed back into ``g`` (static).
        direction: ``±1`` (a runtime scalar): the sign of the real time. The solver applies it
            to its state combinations, never to the field's values.
        tol: ``(rtol, atol)``, the loop's tolerances: implicit methods stop their Newton
            iterations by them (explicit methods ignore them); ``None``: the method's own
            default.
    """

    g: VectorField
    t_hi: RealScalarLike | None = None
    quad: bool = False
    direction: Direction = 1.0
    tol: Tolerances | None = None

    def split(self, value: FieldValue) -> tuple[State, QuadState | None]:
        """``(dy, dq)`` of a value of ``g`` (``dq`` is ``None`` without a quadrature channel)."""
        return value if self.quad else (value, None)


class StepResult(NamedTuple):
    """One attempted step of an adaptive solver, as the integrator consumes it.

    Attributes:
        y1: The proposed new state.
        f1: The vector field at ``(t + h, y1)`` (the next step's first stage; a ``(dy, dq)``
            pair for a field with a quadrature channel).
        err: Local error estimate of ``y1`` (same shape), or ``None`` for fixed-step methods.
        err2: A second error estimate combined with ``err`` as in Hairer's DOP853, or ``None``.
        q_inc, q_err: Increment of the quadrature channel over the step and its error estimate
            (``None`` without a quadrature channel).
        stages: Solver-specific data for the dense output of the step.
        nfe: Vector-field evaluations spent by the step (a Python int or an int array).
        ok: ``False`` where the step failed for a reason other than its error estimate (e.g.
            a Newton iteration that did not converge); ``None`` means always ``True``.
        njev: Jacobian evaluations spent by the step (implicit methods).
        nlinsolve: Linear solves spent by the step (implicit methods).
        nodes: ``(c_j, b_j, y_j)`` triples: the stage times ``t + c_j·h``, solution weights
            and stage states at which the step evaluated the field, so that a quadrature along
            the step is ``h Σ b_j g(t + c_j h, y_j)`` (static ``c_j``, ``b_j``); ``None`` if
            the method has none.
    """

    y1: Any
    f1: Any
    err: Any
    err2: Any
    q_inc: Any
    q_err: Any
    stages: Any
    nfe: Any
    ok: Any = None
    njev: Any = 0
    nlinsolve: Any = 0
    nodes: Any = None
