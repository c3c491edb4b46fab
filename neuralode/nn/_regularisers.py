"""RNODE regularisers (Finlay et al. 2020) integrated as extra states of the same solve.

Two integrals along the trajectory ``z(t)``, ``t ∈ [t0, t1]``:

* kinetic energy ``∫ ‖f(t, z)‖² dt``;
* Jacobian Frobenius norm ``∫ ‖εᵀ ∂f/∂z‖² dt``, a Hutchinson estimate of ``∫ ‖∂f/∂z‖²_F dt``
  with one noise draw ``ε`` (``E[εεᵀ] = I``) held fixed during the solve.

They are appended to the ODE state (``dK/dt = ‖f‖²``, ``dJ/dt = ‖εᵀ∂f/∂z‖²``), so the solver
integrates them with the same steps and error control as the state, and every gradient mode
(:class:`~neuralode.BacksolveAdjoint`, :class:`~neuralode.CheckpointAdjoint`, ...)
differentiates them like any other output. Note there is no factor ``1/2`` on either term.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_callable, check_choice

NoiseKind = Literal["gaussian", "rademacher"]
NOISE_KINDS = ("gaussian", "rademacher")


def hutchinson_noise(key: PRNGKeyArray, like: PyTree[ArrayLike], kind: NoiseKind = "gaussian"):
    """One Hutchinson noise draw ``ε`` with the structure, shapes and dtypes of ``like``.

    ``kind="gaussian"`` draws ``ε ~ N(0, I)``, ``kind="rademacher"`` draws ``ε ∈ {-1, +1}``
    uniformly; both satisfy ``E[εεᵀ] = I``, so ``E[εᵀAε] = tr(A)`` and
    ``E[‖εᵀA‖²] = ‖A‖²_F``. This is exactly the draw that :class:`~neuralode.nn.CNF` and
    :class:`~neuralode.nn.NeuralODE` make from the ``key`` they are given.

    Args:
        key: PRNG key.
        like: Array or pytree of arrays; the noise copies its shapes and (floating) dtypes.
        kind: ``"gaussian"`` or ``"rademacher"``.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import hutchinson_noise

        eps = hutchinson_noise(jax.random.key(0), jnp.zeros(3), "rademacher")
        eps.shape  # (3,)
        ```
    """
    check_choice("hutchinson_noise", "kind", kind, NOISE_KINDS)
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, leaf in zip(keys, leaves, strict=False):
        leaf = jnp.asarray(leaf)
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else float
        if kind == "gaussian":
            out.append(jax.random.normal(k, leaf.shape, dtype))
        else:
            out.append(jax.random.rademacher(k, leaf.shape, dtype))
    return jax.tree.unflatten(treedef, out)


def sum_squares(tree) -> Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def value_and_vjp_noise(fn, y, eps):
    """``f(y)`` and ``εᵀ ∂f/∂y`` from one reverse-mode linearisation."""
    fy, vjp = jax.vjp(fn, y)
    (e_j,) = vjp(eps)
    return fy, e_j


class RegularisedField(eqx.Module):
    """Wrap a vector field so that ``odeint`` integrates the RNODE regularisers alongside it.

    The wrapped field acts on the state ``(y, {"kinetic": K, "jacobian": J})`` and takes
    ``args = (field_args, eps)`` where ``eps`` is a Hutchinson noise draw shaped like ``y``
    (see :func:`hutchinson_noise`). It returns ``(f, {"kinetic": ‖f‖², "jacobian":
    ‖εᵀ∂f/∂y‖²})``; ``y`` may be any pytree of arrays. Start ``K`` and ``J`` at zero with
    :meth:`initial_state`. :class:`~neuralode.nn.NeuralODE` uses it for
    ``regularise=True``; use it directly with :func:`neuralode.odeint` for custom models.

    Args:
        field: The vector field ``field(t, y, args)``.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import MLPField, RegularisedField, hutchinson_noise

        field = MLPField(2, width=8, depth=1, key=jax.random.key(0))
        reg = RegularisedField(field)
        y0 = jnp.ones(2)
        eps = hutchinson_noise(jax.random.key(1), y0)
        sol = nde.odeint(reg, reg.initial_state(y0), jnp.array([0.0, 1.0]), (None, eps))
        y1, regs = jax.tree.map(lambda x: x[-1], sol.ys)
        regs["kinetic"], regs["jacobian"]
        ```
    """

    field: eqx.Module

    def __init__(self, field):
        self.field = check_callable("RegularisedField", "field", field, "field(t, y, args)")

    @staticmethod
    def initial_state(y0: PyTree[Array]):
        """``(y0, {"kinetic": 0, "jacobian": 0})`` with zeros of ``y0``'s dtype."""
        dtype = jnp.result_type(*[jnp.asarray(x) for x in jax.tree.leaves(y0)])
        zero = jnp.zeros((), dtype)
        return y0, {"kinetic": zero, "jacobian": zero}

    def __call__(self, t: Float[ArrayLike, ""], state, args):
        y, regs = state
        field_args, eps = args
        fy, e_j = value_and_vjp_noise(lambda yy: self.field(t, yy, field_args), y, eps)
        dtype = regs["kinetic"].dtype
        d_regs = {
            "kinetic": sum_squares(fy).astype(dtype),
            "jacobian": sum_squares(e_j).astype(dtype),
        }
        return fy, d_regs
