"""Results of an ODE solve: :class:`Solution`, :class:`Result` codes and statistics."""

from __future__ import annotations

import enum
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int, PyTree, Shaped


class Result(enum.IntEnum):
    """Outcome of a solve, stored in :attr:`Solution.result` as an integer array.

    ``successful`` and ``event`` (a terminal event ended the solve) are successes; every other
    code is a failure. Test with ``sol.successful`` (or ``nde.Result.succeeded(code)``);
    :meth:`message` turns a code into a sentence that says what happened and what to try.
    """

    successful = 0
    max_steps_reached = 1
    dt_min_reached = 2
    nonfinite = 3
    drift = 4
    event = 5

    def message(self) -> str:
        return _MESSAGES[self]

    @classmethod
    def describe(cls, code: Any) -> str:
        """Human-readable message for an integer code (a Python int or a 0-d array)."""
        return cls(int(code)).message()

    @staticmethod
    def succeeded(code: Any) -> Any:
        """Boolean (array): whether ``code`` is a success (``successful`` or ``event``)."""
        code = jnp.asarray(code)
        return (code == Result.successful) | (code == Result.event)


_MESSAGES = {
    Result.successful: "The solve reached the final time successfully.",
    Result.max_steps_reached: (
        "neuralode.odeint: the solver took `max_steps` steps without reaching the final time. "
        "Increase `max_steps` or loosen `rtol`/`atol`. If the problem is stiff (fast decaying "
        "modes beside slow dynamics: chemical kinetics, circuits, some trained fields), an "
        "explicit solver needs tiny steps for stability: use a stiff solver, "
        "solver=nde.Rodas5() (Rosenbrock; nde.Rodas5P() for strongly time-dependent forcing) "
        "or solver=nde.Kvaerno5() (ESDIRK)."
    ),
    Result.dt_min_reached: (
        "neuralode.odeint: the step size fell below its minimum (step size underflow) before the "
        "final time. The solution may blow up in finite time, be discontinuous or stiff; "
        "loosen the tolerances, lower `dtmin` of the controller, or shorten the interval."
    ),
    Result.nonfinite: (
        "neuralode.odeint: the vector field produced non-finite values (NaN or inf) that step "
        "size reduction could not avoid. Check `f` and `y0` for NaN/inf, for division by zero "
        "or overflow; in float32 consider float64 or a smaller time interval."
    ),
    Result.drift: (
        "neuralode.BacksolveAdjoint: the backward re-integration of the state drifted away "
        "from the forward trajectory (its difference at an output time exceeded `drift_check` "
        "times the tolerance), so the continuous-adjoint gradient would be wrong. This happens "
        "on problems that contract forward in time (e.g. Van der Pol, chaotic systems). Use "
        "`adjoint=nde.CheckpointAdjoint()` or `nde.InterpolatedAdjoint()`, add intermediate "
        "output times (each one restarts the reconstruction), or tighten rtol/atol."
    ),
    Result.event: "A terminal event ended the solve (see `event_time`, `event_y`).",
}

RESULT_MESSAGES: tuple[str, ...] = tuple(_MESSAGES[r] for r in Result)


class Solution(eqx.Module):
    """What :func:`neuralode.odeint` returns.

    Attributes:
        ts: The output times, shape ``(len(ts),)``.
        ys: The solution at ``ts``: the same pytree structure as ``y0``, every leaf with a
            leading axis of length ``len(ts)``. ``ys[0]`` equals ``y0``. Entries the solver did
            not reach (only possible with ``throw=False``) are NaN.
        stats: Integer arrays ``num_steps`` (attempted steps), ``num_accepted``,
            ``num_rejected``, ``nfe`` (vector-field evaluations of the forward solve),
            ``njev`` (Jacobian evaluations) and ``nlinsolve`` (linear solves) (both zero for
            explicit solvers).
        result: Integer :class:`Result` code. With ``throw=False`` check it; under ``vmap`` it
            has one entry per sample.
        event_time: With ``event=``: the time of the first event (of the terminating one if a
            terminal event fired), NaN if none happened. Differentiable. ``None`` without
            events.
        event_y: The state at ``event_time`` (the pytree of ``y0``; NaN if no event).
            Differentiable. ``None`` without events.
        event_index: Which event of a tuple fired (``-1``: none). ``None`` without events.
    """

    ts: Shaped[Array, " times"]
    ys: PyTree[Shaped[Array, "times ..."]]
    stats: dict[str, Int[Array, ""]]
    result: Int[Array, ""]
    event_time: Shaped[Array, ""] | None = None
    event_y: PyTree[Shaped[Array, "..."]] | None = None
    event_index: Int[Array, ""] | None = None

    @property
    def successful(self) -> Any:
        """Boolean array: the solve succeeded (reached the end, or a terminal event)."""
        return Result.succeeded(self.result)
