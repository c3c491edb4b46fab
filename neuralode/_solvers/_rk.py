"""The explicit Runge-Kutta step: stages, solution, error estimate and dense output of a tableau.

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
    DenseCoeffs,
    Direction,
    DType,
    FieldValue,
    QuadState,
    RealScalar,
    RealScalarLike,
    State,
    VectorField,
)
from ._step import StepResult

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


def _split(value: FieldValue, quad: bool) -> tuple[State, QuadState | None]:
    return value if quad else (value, None)


def rk_step(
    tab: ButcherTableau,
    g: VectorField,
    t: RealScalarLike,
    y: State,
    f0: FieldValue,
    h: RealScalarLike,
    t_hi: RealScalarLike | None = None,
    quad: bool = False,
    direction: Direction = 1.0,
) -> StepResult:
    """One step of the explicit method ``tab`` from ``(t, y)`` with first stage ``f0``.

    Solves ``dy/dt = direction · g(t, y)``: stage times are ``t + c h``, state combinations
    use the signed step ``direction · h`` (the sign never touches the stages, so XLA computes
    each stage once). Returns a :class:`StepResult`. With ``quad=True`` the field returns
    ``(dy, dq)`` and ``f0`` is such a pair; the result then carries the quadrature increment
    and its error.
    """
    hs = h if isinstance(direction, float) and direction == 1.0 else direction * h
    k0, d0 = _split(f0, quad)
    ks, ds, ys = [k0], [d0], [y]
    for i in range(1, tab.num_stages):
        yi = combine(y, hs, tab.a[i, :i], ks)
        k, d = _split(g(stage_time(t, tab.c[i], h, t_hi), yi), quad)
        ks.append(k)
        ds.append(d)
        ys.append(yi)
    y1 = combine(y, hs, tab.b, ks)
    nfe = tab.num_stages - 1
    if tab.fsal:
        f1 = (ks[-1], ds[-1]) if quad else ks[-1]
    else:
        t1 = t + h if t_hi is None else jnp.minimum(t + h, t_hi)
        f1 = g(t1, y1)
        nfe += 1
    # Error estimates in at least float32 (a half-precision estimate would round away).
    edtype = jnp.promote_types(y.dtype, jnp.float32)
    err = None if tab.b_err is None else combine(None, hs, tab.b_err, ks, edtype)
    err2 = None if tab.b_err2 is None else combine(None, hs, tab.b_err2, ks, edtype)
    q_inc = q_err = None
    if quad:
        q_inc = combine(None, hs, tab.b, ds)
        if tab.b_err is not None:
            q_err = combine(None, hs, tab.b_err, ds, jnp.promote_types(ds[0].dtype, jnp.float32))
    stages = list(ks) if tab.fsal else list(ks) + [_split(f1, quad)[0]]
    nodes = tuple((float(tab.c[i]), float(tab.b[i]), ys[i]) for i in range(tab.num_stages)
                  if tab.b[i] != 0.0)
    return StepResult(y1=y1, f1=f1, err=err, err2=err2, q_inc=q_inc, q_err=q_err,
                      stages=stages, nfe=nfe, nodes=nodes)


def rk_dense(
    tab: ButcherTableau,
    g: VectorField,
    t: RealScalarLike,
    y: State,
    h: RealScalarLike,
    stages: Sequence[State],
    t_hi: RealScalarLike | None = None,
    quad: bool = False,
    direction: Direction = 1.0,
) -> tuple[DenseCoeffs, int]:
    """Dense-output coefficients ``(P, n)`` of a step: ``y(t + θh) = y + Σ_p c_p θ^p``.

    Evaluates the tableau's extra dense-output stages first (Dopri8), so also returns their
    number of evaluations.
    """
    hs = h if isinstance(direction, float) and direction == 1.0 else direction * h
    full = list(stages)
    for i in range(tab.num_extra):
        row = tab.extra_a[i]
        yi = combine(y, hs, row[: len(full)], full)
        k, _ = _split(g(stage_time(t, tab.extra_c[i], h, t_hi), yi), quad)
        full.append(k)
    interp = tab.interp[: len(full)]
    coeffs = jnp.stack([combine(None, hs, interp[:, p], full, y.dtype)
                        for p in range(interp.shape[1])])
    return coeffs, tab.num_extra


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
