"""What one attempted step of an adaptive solver hands to the integrator."""

from __future__ import annotations

from typing import Any, NamedTuple


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
