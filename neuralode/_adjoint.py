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

The reverse passes live in ``_continuous`` (Backsolve, Interpolated), ``_checkpoint``
(the bounded step record and the exact discrete adjoint) and ``_forward``
(ForwardMode); ``_backward`` holds what they share.
"""

from __future__ import annotations

import dataclasses

from ._backward import Extra
from ._checkpoint import DEFAULT_CHECKPOINTS, checkpoint_backward, slots_of
from ._continuous import backsolve_backward, interpolated_backward
from ._forward import Primal, Problem, reverse_by_jacobian
from ._plugins import Recorder

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "AbstractAdjoint",
    "BacksolveAdjoint",
    "CheckpointAdjoint",
    "ForwardMode",
    "InterpolatedAdjoint",
]


@dataclasses.dataclass(frozen=True)
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
        extra = Extra.of(problem, x, ys, ct, ev, ct_ev)
        return backsolve_backward(self, problem, x, ys, result, extra)


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
        return Recorder(slots_of(self.checkpoints), thin=True, dense=True)

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return interpolated_backward(self, problem, x, ys, n_acc, result, rec,
                             Extra.of(problem, x, ys, ct, ev, ct_ev))


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
        return Recorder(slots_of(self.checkpoints), thin=True)

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return checkpoint_backward(self, problem, x, ys, n_acc, result, rec,
                           Extra.of(problem, x, ys, ct, ev, ct_ev))


@dataclasses.dataclass(frozen=True)
class ForwardMode(AbstractAdjoint):
    """Forward sensitivities: every derivative from the forward-mode solve.

    ``jax.jacfwd`` is one loop carrying a solve and the tangents of all its directions
    (``jax.jvp`` and ``jax.linearize`` keep the primal: one forward solve more); that holds in
    every mode, this one just never builds a backward solve. Reverse mode (``jax.grad``,
    ``jax.vjp``) is computed by materialising the Jacobian of the outputs with respect to
    every input entry (``y0``, ``ts`` and all parameter entries), so it costs one tangent per
    input entry: use it for models with few parameters, and a reverse mode otherwise.
    """

    def backward(self, problem, x, ys, n_acc, result, rec, ct, ev=None, ct_ev=None):
        return reverse_by_jacobian(problem, x, result, ct, ct_ev)
