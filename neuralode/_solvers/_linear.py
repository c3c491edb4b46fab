"""Dense linear algebra shared by the stiff solvers: Jacobians, LU factorisation, dtypes.

The stiff solvers form one matrix ``I - hγJ`` per step attempt, factorise it once with JAX's
own LU (``jax.scipy.linalg.lu_factor``, partial pivoting) and reuse the factors for every stage
(Rosenbrock) or Newton iteration (ESDIRK) of that attempt. Everything here is a composition of
JAX primitives with derivative rules in forward and reverse mode (``lu``,
``triangular_solve``), so steps built from it can be differentiated to second order.

``lineax`` would add operator abstractions and iterative solvers; for the dense, small to
medium systems these methods target, the two JAX calls are all that is needed, so neuralode
does not take on the dependency.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

from ._step import StepContext


def work_dtype(dtype):
    """The dtype the stiff solvers compute in: the state's, but at least float32.

    An LU factorisation in half precision loses every digit a stiff problem needs; states in
    float16/bfloat16 are promoted for the step and rounded once at the end.
    """
    return jnp.promote_types(dtype, jnp.float32)


def field_in(g: Callable, dtype, wd, quad: bool) -> Callable:
    """``g`` taking and returning work-dtype arrays (the integrator's ``g`` takes ``dtype``)."""

    def gw(t, y):
        out = g(t, y.astype(dtype))
        return jax.tree.map(lambda a: a.astype(wd), out)

    return gw


def in_work_dtype(ctx: StepContext, y: Float[Array, " n"], f0):
    """What a stiff step starts from, in the work dtype ``wd`` (:func:`work_dtype`).

    Returns ``(wd, gw, yw, k0, d0)``: the field ``gw`` of :func:`field_in`, the state, and the
    two parts of ``f0 = g(t, y)`` (``k0`` in ``wd``; ``d0``, the quadrature channel, as given,
    or ``None``).
    """
    wd = work_dtype(y.dtype)
    k0, d0 = ctx.split(f0)
    return wd, field_in(ctx.g, y.dtype, wd, ctx.quad), y.astype(wd), k0.astype(wd), d0


def jacobians(gw: Callable, t, y: Float[Array, " n"], quad: bool, with_t: bool):
    """Jacobians of the field at ``(t, y)`` by forward mode (one batched pass).

    Returns ``(J, f_t, G_y, G_t)``: ``J = ∂dy/∂y`` (``n × n``), ``f_t = ∂dy/∂t`` (or ``None``
    unless ``with_t``), and with a quadrature channel ``G_y = ∂dq/∂y``, ``G_t = ∂dq/∂t``
    (``None`` otherwise). With ``with_t`` the time direction is one more tangent of the same
    pass (``n + 1`` tangents in all).
    """
    if with_t:
        # Output-major: (∂/∂t, ∂/∂y) for each output (dy, and dq with a quadrature channel).
        out = jax.jacfwd(gw, argnums=(0, 1))(t, y)
        (f_t, jac), (g_t, g_y) = out if quad else (out, (None, None))
    else:
        out = jax.jacfwd(gw, argnums=1)(t, y)
        (jac, g_y), f_t, g_t = (out if quad else (out, None)), None, None
    return jac, f_t, g_y, g_t


def lu_factor(m: Float[Array, "n n"]):
    """LU factors (with pivots) of a square matrix."""
    return jsl.lu_factor(m)


def lu_solve(factors, b: Float[Array, " n"]) -> Float[Array, " n"]:
    """Solve ``m x = b`` from the factors of :func:`lu_factor`."""
    return jsl.lu_solve(factors, b)


def iteration_matrix(jac: Float[Array, "n n"], hg) -> Float[Array, "n n"]:
    """``I - hγ J``: the matrix every stage of a step solves with (well conditioned as
    ``h → 0``, unlike ``I/(hγ) - J``)."""
    return jnp.eye(jac.shape[0], dtype=jac.dtype) - hg * jac


def rms(x: Float[Array, " n"]) -> Float[Array, ""]:
    """Root-mean-square of a flat array (0 for an empty one)."""
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    return jnp.sqrt(jnp.mean(jnp.square(x)))
