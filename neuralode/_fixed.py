"""Fixed-step integration: equal steps of an explicit Runge-Kutta method inside each output
interval, differentiated by plain autodiff (the paper's RK-Net, and ``odeint`` with ``dt0`` and
a fixed-step solver)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import ArrayLike, Float

from ._custom_types import (
    Args,
    ArgsField,
    IntScalar,
    OutputBuffer,
    RealScalar,
    RealScalarLike,
    State,
    Times,
)
from ._solvers._rk import rk_fixed_step

if TYPE_CHECKING:
    from ._solvers._base import ButcherTableau


def integrate_fixed(
    fn: ArgsField, y0: State, ts: Times, params: Args, *, tab: ButcherTableau, num_sub: int
) -> tuple[OutputBuffer, int]:
    """``num_sub`` equal steps inside each output interval, as nested ``lax.scan``.

    Plain ``lax.scan`` loops, so reverse- and forward-mode autodiff differentiate the discrete
    solver exactly (memory grows with the number of steps). Returns ``(ys, nfe)``.
    """
    dtype = y0.dtype
    if ts.shape[0] == 1:
        return y0[None], 0

    def interval(y: State, t_pair: tuple[RealScalar, RealScalar]) -> tuple[State, State]:
        ta, tb = t_pair
        h = (tb - ta) / num_sub
        t_lo, t_hi = jnp.minimum(ta, tb), jnp.maximum(ta, tb)

        def sub(y: State, j: IntScalar) -> tuple[State, None]:
            t = jnp.clip(ta + j.astype(dtype) * h, t_lo, t_hi)
            return rk_fixed_step(tab, lambda tt, yy: fn(tt, yy, params), t, y, h, t_lo, t_hi), None

        y, _ = lax.scan(sub, y, jnp.arange(num_sub))
        return y, y

    _, ys = lax.scan(interval, y0, (ts[:-1], ts[1:]))
    ys = jnp.concatenate([y0[None], ys], axis=0)
    return ys, tab.num_stages * num_sub * (ts.shape[0] - 1)


def fixed_substeps(ts: Float[ArrayLike, " n_out"], dt0: RealScalarLike) -> int:
    """Number of equal sub-steps per output interval so that no step exceeds ``|dt0|``."""
    ts = np.asarray(ts, dtype=np.float64)
    if ts.shape[0] < 2:
        return 1
    span = np.max(np.abs(np.diff(ts)))
    return max(1, int(np.ceil(span / abs(float(dt0)) - 1e-9)))
