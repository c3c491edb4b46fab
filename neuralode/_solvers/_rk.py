"""The arithmetic of the explicit Runge-Kutta methods: stage combinations and stage times (for
the adaptive step of :class:`~neuralode._solvers._base.AbstractAdaptiveSolver`), the fixed step
and the evaluation of a dense-output polynomial.

Every explicit method of neuralode is a :class:`~neuralode._solvers._base.ButcherTableau`; the
functions here turn one into arithmetic. Stage combinations are unrolled sums with the constant
coefficients written into the program (zero coefficients skipped), which XLA fuses into one
elementwise kernel per stage; on small states this is much cheaper than a matrix product.

A vector field may carry a *quadrature* channel: ``g(t, y)`` then returns ``(dy, dq)`` where
``q`` does not feed back into ``g`` (the parameter adjoint ``a_θ`` of the backward solve is the
example). Stages are formed for ``y`` only; ``q`` is advanced with the solution weights alone,
which is exact for the augmented system and saves every stage combination of the (often long)
quadrature vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import (
    Direction,
    DType,
    RealScalar,
    RealScalarLike,
    State,
)

if TYPE_CHECKING:
    from ._base import ButcherTableau


def combine(
    base: Array | None,
    h: RealScalarLike,
    coeffs: Sequence[float],
    ks: Sequence[Array],
    dtype: DType | None = None,
) -> Array:
    """``base + h Σ_j coeffs[j] ks[j]`` with the zero terms left out (``base`` may be None).

    The result has ``dtype``, by default that of ``base`` (or of the stages): with a
    half-precision state and a float32 step size the sum is formed in float32 and rounded
    once.
    """
    acc = None
    for cj, kj in zip(coeffs, ks, strict=False):
        if cj == 0.0:
            continue
        term = kj if cj == 1.0 else float(cj) * kj
        acc = term if acc is None else acc + term
    if dtype is None:
        dtype = ks[0].dtype if base is None else base.dtype
    if acc is None:
        return jnp.zeros_like(ks[0]) if base is None else base
    out = acc * h if base is None else base + h * acc
    return out.astype(dtype)


def stage_time(
    t: RealScalarLike, c: float, h: RealScalarLike, t_hi: RealScalarLike | None
) -> RealScalar:
    """``t + c h``, never past ``t_hi`` (rounding may overshoot by an ulp)."""
    tc = t + float(c) * h
    return tc if t_hi is None else jnp.minimum(tc, t_hi)


def signed_step(h: RealScalarLike, direction: Direction) -> RealScalarLike:
    """``direction·h``, or ``h`` itself for the static direction ``1.0``."""
    return h if isinstance(direction, float) and direction == 1.0 else direction * h


def eval_dense(
    y0: Float[Array, "... n"], coeffs: Float[Array, "p ... n"], theta: Float[ArrayLike, "..."]
) -> Float[Array, "... n"]:
    """Evaluate ``y0 + Σ_p coeffs[p-1] θ^p`` by Horner's rule (broadcasts over ``theta``)."""
    acc = coeffs[-1]
    for p in range(coeffs.shape[0] - 2, -1, -1):
        acc = coeffs[p] + theta * acc
    return y0 + theta * acc


def rk_fixed_step(
    tab: ButcherTableau,
    fn: Callable[[RealScalar, State], State],
    t: RealScalarLike,
    y: State,
    h: RealScalarLike,
    t_lo: RealScalarLike,
    t_hi: RealScalarLike,
) -> State:
    """One fixed step (stage times clamped to ``[t_lo, t_hi]``); returns the new state."""
    ks = [fn(t, y)]
    for i in range(1, tab.num_stages):
        yi = combine(y, h, tab.a[i, :i], ks)
        tc = jnp.clip(t + float(tab.c[i]) * h, t_lo, t_hi)
        ks.append(fn(tc, yi))
    return combine(y, h, tab.b, ks)
