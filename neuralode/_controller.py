"""Error norm, PI step-size controller and the initial step size.

All functions are pure and work on flat (1-D) state arrays.

The controller is a PI controller in Gustafsson's (1991) form: after an accepted step with
error ratio ``r_n`` (previous accepted ratio ``r_{n-1}``, initially 1)

    h_new = h · clip(safety · (1/r_n)^k_I · min(1, (r_{n-1}/r_n)^k_P), factormin, factormax),
    k_I = 1/(q+1),   k_P = 5 β/(q+1),

where ``q`` is the order of the error estimate. ``β = 0`` is the classical I (elementary)
controller, diffrax's default. The default ``β`` is the solver's recommendation, as in Hairer's
codes: 0.04 for the fifth-order pairs (DOPRI5; ``k_P = β`` there) and Bosh3, 0 for Dopri8
(DOP853). The proportional factor only damps growth while the error rises; it never adds growth
of its own (that over-grows steps of high-order pairs at loose tolerances). Hairer's DOPRI5
instead lowers the integral gain to ``1/(q+1) - 0.75 β``; keeping ``k_I = 1/(q+1)`` lets short
neural-ODE solves grow their steps as fast as an I controller does (fewer NFE on the benchmark
MLPs). After a rejected step the step only shrinks (``(1/r)^(1/(q+1))`` with the same safety and
``factormin``), and the first step after a rejection may not grow.

References: K. Gustafsson, "Control theoretic techniques for stepsize selection in explicit
Runge-Kutta methods", ACM TOMS 17(4), 1991. Hairer, Nørsett, Wanner, *Solving ODEs I*, 2nd ed.,
section II.4, and *II*, section IV.2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp

from ._custom_types import (
    BoolScalar,
    Direction,
    RealScalar,
    RealScalarLike,
    State,
)


@dataclasses.dataclass(frozen=True)
class PIController:
    """Step-size controller for adaptive solvers (static configuration).

    Args:
        beta: Proportional gain for a fifth-order pair (``k_P = 5 β/(q+1)``, the weight of the
            ratio of successive errors). ``0.0`` is a pure integral controller. Default
            ``None``: the solver's recommended value, as in Hairer's codes: ``0.04`` for Bosh3,
            Dopri5 and Tsit5 (DOPRI5), ``0.0`` for Dopri8 (DOP853).
        safety: Safety factor multiplying every proposed step. Default ``0.9``.
        factormin: Smallest factor by which one step may shrink. Default ``0.2``.
        factormax: Largest factor by which one step may grow. Default ``10.0``.
        dtmin: Smallest allowed step size (absolute). If the controller asks for a smaller
            step, the solve stops with ``Result.dt_min_reached``. Default ``None``: only the
            floating-point limit (a step that no longer changes ``t``).
        dtmax: Largest allowed step size (absolute). Default ``None`` (unbounded).

    Example:
        ```python
        sol = nde.odeint(f, y0, ts, controller=nde.PIController(beta=0.0, dtmax=0.1))
        ```
    """

    beta: float | None = None
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    dtmin: float | None = None
    dtmax: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "beta": self.beta is None or 0.0 <= self.beta < 0.5,
            "safety": 0.0 < self.safety <= 1.0,
            "factormin": 0.0 < self.factormin < 1.0,
            "factormax": self.factormax > 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"PIController: `{name}`={getattr(self, name)!r} is out of range "
                    "(need beta None or 0 <= beta < 0.5, 0 < safety <= 1, 0 < factormin < 1, "
                    "factormax > 1)."
                )
        for name in ("dtmin", "dtmax"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"PIController: `{name}` must be a positive number or None.")
        if self.dtmin is not None and self.dtmax is not None and self.dtmin > self.dtmax:
            raise ValueError("PIController: `dtmin` must not exceed `dtmax`.")


def rms_norm(x: State) -> RealScalar:
    """Root-mean-square norm of a flat array (0 for an empty one)."""
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def error_scale(y0: State, y1: State, rtol: RealScalarLike, atol: RealScalarLike) -> State:
    """``atol + rtol * max(|y0|, |y1|)``, elementwise."""
    return atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))


def initial_step(
    fn: Callable[[RealScalar, State], State],
    t0: RealScalar,
    y0: State,
    f0: State,
    t_end: RealScalarLike,
    error_order: int,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    full_y0: State | None = None,
    full_f0: State | None = None,
    direction: Direction = 1.0,
) -> RealScalar:
    """Initial step size by Hairer, Nørsett, Wanner, *Solving ODEs I*, section II.4.

    Uses one extra evaluation of ``fn`` at ``t0 + h0`` with ``h0 <= t_end - t0`` (the
    vector field is never evaluated outside the integration interval). Returns the step.
    The problem is ``dy/dt = direction·fn(t, y)`` (``direction = ±1``).
    With a seminorm, ``y0``/``f0`` are the controlled part and ``full_y0``/``full_f0`` the
    whole state that ``fn`` takes (``fn`` then returns the controlled part).
    """
    span = t_end - t0
    scale = atol + rtol * jnp.abs(y0)
    d0 = rms_norm(y0 / scale)
    d1 = rms_norm(f0 / scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    h0 = jnp.minimum(h0, span)
    t1 = jnp.minimum(t0 + h0, t_end)  # never past the final time, not even by an ulp
    if full_y0 is None:
        f1 = fn(t1, (y0 + direction * h0 * f0).astype(y0.dtype))
    else:
        f1 = fn(t1, (full_y0 + direction * h0 * full_f0).astype(full_y0.dtype))
    d2 = rms_norm((f1 - f0) / scale) / h0
    dmax = jnp.maximum(d1, d2)
    h1 = jnp.where(
        dmax <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.maximum(dmax, 1e-15)) ** (1.0 / (error_order + 1)),
    )
    h = jnp.minimum(100 * h0, h1)
    h = jnp.minimum(h, span)
    return jnp.where(jnp.isfinite(h) & (h > 0), h, span)


def step_factor(
    ratio: RealScalar,
    prev_ratio: RealScalar,
    accepted: BoolScalar,
    rejected_last: BoolScalar | bool,
    error_order: int,
    ctrl: PIController,
    default_beta: float = 0.04,
) -> RealScalar:
    """Factor ``h_new / h`` proposed by the PI controller (see module docstring).

    One ``log`` and one ``exp`` per step: the exponent is chosen first (accepted: PI,
    rejected: I only), then exponentiated.
    """
    k = 1.0 / (error_order + 1)
    beta = default_beta if ctrl.beta is None else ctrl.beta
    k_p = 5.0 * beta * k  # beta is quoted for fifth-order pairs (k = 1/5)
    log_r = jnp.log(jnp.maximum(ratio, 1e-10))
    # The proportional term only damps: it slows growth while errors rise and never adds
    # growth of its own (an undamped P term over-grows high-order pairs at loose tolerances).
    p_term = jnp.minimum(k_p * (jnp.log(prev_ratio) - log_r), 0.0)
    exponent = jnp.where(accepted, p_term - k * log_r, -k * log_r)
    factor = ctrl.safety * jnp.exp(exponent)
    upper = jnp.where(accepted & ~rejected_last, ctrl.factormax, 1.0)
    factor = jnp.clip(factor, ctrl.factormin, upper)
    return jnp.where(jnp.isfinite(ratio), factor, ctrl.factormin)


def dtmin_value(ctrl: PIController) -> float:
    return 0.0 if ctrl.dtmin is None else float(ctrl.dtmin)


def dtmax_value(ctrl: PIController) -> float:
    return math.inf if ctrl.dtmax is None else float(ctrl.dtmax)
