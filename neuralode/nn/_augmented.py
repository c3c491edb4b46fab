"""Augmented neural ODEs (Dupont, Doucet & Teh 2019)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._checks import check_instance, check_int
from .._solution import Solution
from ._neural_ode import NeuralODE


class Augmented(eqx.Module):
    """Pad the state with ``augment_dim`` zeros, solve, and project back.

    A flow of an ODE on ``R^D`` is a homeomorphism, so a plain 1-D neural ODE cannot map
    ``-1 ↦ 1`` and ``1 ↦ -1`` (trajectories cannot cross); in ``R^{D+A}`` they can pass each
    other. The wrapped :class:`NeuralODE`'s field must therefore act on states whose axis 0
    has size ``D + augment_dim``: features ``(D + A,)`` for vectors or channels
    ``(C + A, H, W)`` for images (the zero padding goes along axis 0 of one example).

    Args:
        node: The :class:`NeuralODE` on the augmented space.
        augment_dim: Number of zero entries (features or channels) appended along axis 0.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import Augmented, MLPField, NeuralODE

        field = MLPField(1 + 1, width=16, depth=1, key=jax.random.key(0))
        model = Augmented(NeuralODE(field), augment_dim=1)
        model(jnp.array([1.0])).shape  # (1,)
        ```
    """

    node: NeuralODE
    augment_dim: int = eqx.field(static=True)

    def __init__(self, node: NeuralODE, augment_dim: int):
        self.node = check_instance("Augmented", "node", node, NeuralODE, "a neuralode.nn.NeuralODE")
        self.augment_dim = check_int("Augmented", "augment_dim", augment_dim)

    def with_solve(self, **changes) -> Augmented:
        """A copy whose :class:`NeuralODE` has other solve settings (see
        :meth:`NeuralODE.with_solve`)."""
        return eqx.tree_at(lambda a: a.node, self, self.node.with_solve(**changes))

    def augment(self, y0: Float[ArrayLike, "dim ..."]) -> Float[Array, "dim_aug ..."]:
        """``y0`` with ``augment_dim`` zeros appended along axis 0."""
        y0 = jnp.asarray(y0)
        if y0.ndim < 1:
            raise ValueError(
                "Augmented: `y0` must have at least one axis (features or channels first), "
                f"got shape {y0.shape}."
            )
        pad = jnp.zeros((self.augment_dim,) + y0.shape[1:], y0.dtype)
        return jnp.concatenate([y0, pad], axis=0)

    def __call__(self, y0: Float[ArrayLike, "dim ..."], args: PyTree = None, **kwargs):
        """``y(t1)`` projected back to the first ``D`` entries of axis 0.

        Keyword arguments (``return_stats``, ``regularise``, ``key``, ``rtol``, ...) are those
        of :meth:`NeuralODE.__call__`; the regularisers are computed on the augmented state.
        """
        y0 = jnp.asarray(y0)
        out = self.node(self.augment(y0), args, **kwargs)
        d = y0.shape[0]
        if isinstance(out, tuple):
            return (out[0][:d],) + out[1:]
        return out[:d]

    def trajectory(
        self, y0: Float[ArrayLike, "dim ..."], ts: Float[ArrayLike, " times"], args=None, **kwargs
    ) -> Solution:
        """The :class:`~neuralode.Solution` at ``ts`` with ``ys`` projected back."""
        y0 = jnp.asarray(y0)
        sol = self.node.trajectory(self.augment(y0), ts, args, **kwargs)
        d = y0.shape[0]
        return eqx.tree_at(lambda s: s.ys, sol, sol.ys[:, :d])
