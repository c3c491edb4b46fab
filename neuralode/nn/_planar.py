"""Planar flows: the paper's planar CNF (section 4) and the planar normalizing flow
(Rezende & Mohamed 2015) it is compared with in Figures 4 and 5."""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_array, check_choice, check_int, check_real
from ._cnf import CNF, StandardNormal


class PlanarCNFField(eqx.Module):
    """The paper's width-``M`` planar CNF field with a hypernetwork of time.

    ``dz/dt = Σ_n σ_n(t) u_n tanh(w_nᵀ z + b_n)``, where ``u_n, w_n ∈ R^D``, ``b_n`` and the
    gates ``σ_n(t) ∈ (0, 1)`` are produced by a small MLP of ``t`` (two ``tanh`` hidden layers
    of width ``hyper_width``). The divergence is exact and cheap (linear in ``M``):
    ``tr ∂f/∂z = Σ_n σ_n tanh'(w_nᵀz + b_n) u_nᵀw_n``, exposed as
    :meth:`value_and_divergence`, which :class:`~neuralode.nn.CNF` uses for
    ``trace="exact"``.

    Args:
        dim: Dimension ``D``.
        width: Number of planar units ``M``.
        hyper_width: Width of the hypernetwork (64 in the paper's recipe).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import PlanarCNFField

        field = PlanarCNFField(2, width=4, hyper_width=16, key=jax.random.key(0))
        f, div = field.value_and_divergence(0.5, jnp.ones(2), None)
        ```
    """

    hyper: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)

    def __init__(self, dim: int, width: int, *, hyper_width: int = 32, key: PRNGKeyArray):
        owner = "PlanarCNFField"
        dim, width = check_int(owner, "dim", dim), check_int(owner, "width", width)
        hyper_width = check_int(owner, "hyper_width", hyper_width)
        self.hyper = eqx.nn.MLP(
            "scalar", 2 * width * dim + 2 * width, hyper_width, 2, activation=jnp.tanh, key=key
        )
        self.dim = dim
        self.width = width

    def parameters(self, t: Float[ArrayLike, ""], dtype=None):
        """``(W, U, b, σ)`` at time ``t``: shapes ``(M, D)``, ``(M, D)``, ``(M,)``, ``(M,)``."""
        m, d = self.width, self.dim
        dtype = jnp.result_type(float) if dtype is None else dtype
        p = self.hyper(jnp.asarray(t, dtype)).astype(dtype)
        w = p[: m * d].reshape(m, d)
        u = p[m * d : 2 * m * d].reshape(m, d)
        b = p[2 * m * d : 2 * m * d + m]
        gate = jax.nn.sigmoid(p[2 * m * d + m :])
        return w, u, b, gate

    def value_and_divergence(
        self, t: Float[ArrayLike, ""], z: Float[Array, " dim"], args: PyTree = None
    ) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        """``(f(t, z), tr ∂f/∂z)`` in one evaluation of the hypernetwork."""
        z = check_array("PlanarCNFField", "z", z, shape=(self.dim,), hint=_VMAP_HINT)
        w, u, b, gate = self.parameters(t, z.dtype)
        h = jnp.tanh(w @ z + b)
        f = (gate * h) @ u
        div = jnp.sum(gate * (1 - h * h) * jnp.sum(u * w, axis=1))
        return f, div

    def __call__(
        self, t: Float[ArrayLike, ""], z: Float[Array, " dim"], args: PyTree = None
    ) -> Float[Array, " dim"]:
        return self.value_and_divergence(t, z, args)[0]


def planar_cnf(dim: int, width: int, *, hyper_width: int = 32, base=None, key: PRNGKeyArray,
               **cnf_kwargs) -> CNF:
    """The paper's planar CNF: a :class:`CNF` with a :class:`PlanarCNFField` and exact trace.

    Args:
        dim: Dimension ``D``.
        width: Number of planar units ``M``.
        hyper_width: Width of the hypernetwork of ``t``.
        base: Base distribution (default ``StandardNormal(dim)``; the paper's
            maximum-likelihood recipe uses the covariance ``0.1·I``, i.e.
            ``StandardNormal(dim, scale=0.1 ** 0.5)``, with ``t1=10``).
        key: PRNG key of the initialisation.
        **cnf_kwargs: Further :class:`CNF` options (``t0``, ``t1``, ``rtol``, ...).

    Example:
        ```python
        import jax
        from neuralode.nn import StandardNormal, planar_cnf

        base = StandardNormal(2, scale=0.1**0.5)  # N(0, 0.1 I)
        cnf = planar_cnf(2, 8, base=base, t1=10.0, key=jax.random.key(0))
        x, logp = cnf.sample_and_log_prob(jax.random.key(1), 16)
        ```
    """
    field = PlanarCNFField(dim, width, hyper_width=hyper_width, key=key)
    cnf_kwargs.setdefault("trace", "exact")
    return CNF(field, base=base, dim=dim, **cnf_kwargs)


_VMAP_HINT = " For a batch, jax.vmap the field (or the solve)."
_NEUTRAL_WU = math.log(math.e - 1.0)  # m(a) = 0 at a = log(e - 1): wᵀû = 0


def _softplus_m1(x):
    return -1.0 + jax.nn.softplus(x)


class PlanarFlow(eqx.Module):
    """A planar normalizing flow of ``K`` layers (Rezende & Mohamed 2015).

    Sampling pushes ``z_0 ~ p_base`` through ``f_k(z) = z + û_k tanh(w_kᵀz + b_k)``,
    ``k = 1..K``, with ``û = u + (m(wᵀu) − wᵀu) w/‖w‖²``, ``m(a) = −1 + softplus(a)``, which
    makes ``wᵀû > −1`` and every layer invertible; ``log|det ∂f_k/∂z| = log|1 + ûᵀψ(z)|``,
    ``ψ(z) = tanh'(wᵀz + b) w``, so ``log q(x) = log p_base(z_0) − Σ_k log|det|``.

    Direction. The flow is defined in the sampling direction: :meth:`sample_and_log_prob` is
    exact and cheap, the natural direction for density matching (reverse KL, the paper's
    Figure 4). Planar layers have no closed-form inverse, but each reduces to a scalar
    monotone equation for ``α = wᵀz`` (``wᵀx = α + wᵀû tanh(α + b)``), which :meth:`inverse`
    solves by bisection (with one Newton step that makes gradients exact by the implicit
    function theorem); :meth:`log_prob` at arbitrary points uses it, so maximum likelihood
    works too, at ``K × bisection_steps`` scalar iterations.

    Initialisation. ``u`` and ``w`` are drawn i.i.d. ``N(0, init_scale²)`` and ``b = 0``.
    With ``init="volume_preserving"`` (default) each ``u`` is then shifted along ``w`` so that
    ``wᵀu = log(e − 1)``, where ``m(wᵀu) = 0``: every layer starts with ``wᵀû = 0``, a shear
    with ``det ∂f_k/∂z = 1`` everywhere, so the initial flow neither contracts nor expands and
    ``log q = log p_base`` at initialisation whatever ``K``. With ``init="random"`` (Rezende and
    Mohamed's plain draw) the constraint turns ``wᵀu ≈ 0`` into ``wᵀû ≈ m(0) ≈ −0.31``: every
    layer contracts along its ``w`` by up to 31%, ``K`` layers compound it, and for large
    ``K`` the inverse (data → base) blows up: an initial NLL of thousands of nats on the
    paper's Two Circles with ``K = 64``.

    Args:
        dim: Dimension ``D``.
        num_layers: Number of layers ``K``.
        base: Base distribution (default ``StandardNormal(dim)``).
        init: ``"volume_preserving"`` (default) or ``"random"`` (see above).
        init_scale: Standard deviation of the initial ``u`` and ``w`` entries (``b`` starts at
            zero).
        bisection_steps: Iterations of the scalar root find of :meth:`inverse`.
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import PlanarFlow

        flow = PlanarFlow(2, 8, key=jax.random.key(0))
        x, logq = flow.sample_and_log_prob(jax.random.key(1), 5)   # (5, 2), (5,)
        flow.log_prob(x)                                            # equals logq
        ```
    """

    u: Float[Array, "layers dim"]
    w: Float[Array, "layers dim"]
    b: Float[Array, " layers"]
    base: eqx.Module
    bisection_steps: int = eqx.field(static=True)

    def __init__(self, dim: int, num_layers: int, *, base=None,
                 init: Literal["volume_preserving", "random"] = "volume_preserving",
                 init_scale: float = 0.5, bisection_steps: int = 60, key: PRNGKeyArray):
        owner = "PlanarFlow"
        dim, num_layers = check_int(owner, "dim", dim), check_int(owner, "num_layers", num_layers)
        bisection_steps = check_int(owner, "bisection_steps", bisection_steps)
        check_choice(owner, "init", init, ("volume_preserving", "random"))
        init_scale = check_real(owner, "init_scale", init_scale, positive=True)
        base = StandardNormal(dim) if base is None else base
        if not (hasattr(base, "log_prob") and hasattr(base, "sample")):
            raise TypeError("PlanarFlow: `base` must have methods log_prob(z) and sample(key, n).")
        ku, kw = jax.random.split(key)
        dtype = jnp.result_type(float)
        u = init_scale * jax.random.normal(ku, (num_layers, dim), dtype)
        w = init_scale * jax.random.normal(kw, (num_layers, dim), dtype)
        if init == "volume_preserving":
            wu = jnp.sum(w * u, axis=1, keepdims=True)
            wn = jnp.sum(w * w, axis=1, keepdims=True)
            u = u + (_NEUTRAL_WU - wu) * w / wn
        self.u, self.w = u, w
        self.b = jnp.zeros((num_layers,), dtype)
        self.base = base
        self.bisection_steps = bisection_steps

    @property
    def dim(self) -> int:
        return self.u.shape[1]

    @property
    def num_layers(self) -> int:
        return self.u.shape[0]

    def u_hat(self) -> Float[Array, "layers dim"]:
        """The constrained ``û`` of every layer (``wᵀû > −1``)."""
        wu = jnp.sum(self.w * self.u, axis=1, keepdims=True)
        wnorm2 = jnp.sum(self.w * self.w, axis=1, keepdims=True)
        safe = jnp.where(wnorm2 > 0, wnorm2, 1.0)
        return self.u + jnp.where(wnorm2 > 0, (_softplus_m1(wu) - wu) / safe, 0.0) * self.w

    def _check_points(self, name, x):
        x = jnp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(
                f"PlanarFlow: `{name}` must be one point ({self.dim},) or a batch "
                f"(N, {self.dim}), got shape {x.shape}."
            )
        return x

    def transform(
        self, z: Float[ArrayLike, "*batch dim"]
    ) -> tuple[Float[Array, "*batch dim"], Float[Array, "*batch"]]:
        """Push base points through the ``K`` layers: ``(x, Σ_k log|det ∂f_k/∂z|)``."""
        z = self._check_points("z", z)
        if z.ndim == 2:
            return jax.vmap(self.transform)(z)
        u_hat = self.u_hat()

        def layer(carry, p):
            z, logdet = carry
            u, w, b = p
            h = jnp.tanh(jnp.dot(w, z) + b)
            det = 1.0 + (1.0 - h * h) * jnp.dot(w, u)
            return (z + u * h, logdet + jnp.log(jnp.abs(det))), None

        (x, logdet), _ = lax.scan(layer, (z, jnp.zeros((), z.dtype)), (u_hat, self.w, self.b))
        return x, logdet

    def inverse(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Invert the flow: data points ``x`` → base points ``z_0`` (scalar root finds)."""
        x = self._check_points("x", x)
        if x.ndim == 2:
            return jax.vmap(self.inverse)(x)
        u_hat = self.u_hat()

        def layer(x, p):
            u, w, b = p
            c = jnp.dot(w, u)  # > -1
            s = jnp.dot(w, x)

            def g(alpha):
                return alpha + c * jnp.tanh(alpha + b) - s

            # α + c tanh(α + b) = s is strictly increasing in α; |c tanh| ≤ |c| brackets it.
            def bisect(_, lohi):
                lo, hi = lohi
                mid = 0.5 * (lo + hi)
                up = g(mid) > 0
                return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

            width = jnp.abs(c) + 1.0
            lo, hi = lax.fori_loop(
                0, self.bisection_steps, bisect, lax.stop_gradient((s - width, s + width))
            )
            alpha = lax.stop_gradient(0.5 * (lo + hi))
            # One Newton step: exact value to rounding, exact derivatives (implicit function).
            h = jnp.tanh(alpha + b)
            alpha = alpha - g(alpha) / (1.0 + c * (1.0 - h * h))
            return x - u * jnp.tanh(alpha + b), None

        rev = jax.tree.map(lambda a: a[::-1], (u_hat, self.w, self.b))
        z, _ = lax.scan(layer, x, rev)
        return z

    def log_prob(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch"]:
        """Log density at arbitrary points (via :meth:`inverse`); shape ``()`` or ``(N,)``."""
        x = self._check_points("x", x)
        z0 = self.inverse(x)
        _, logdet = self.transform(z0)
        return self.base.log_prob(z0) - logdet

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n dim"]:
        """``n`` samples, shape ``(n, D)``."""
        return self.sample_and_log_prob(key, n)[0]

    def sample_and_log_prob(
        self, key: PRNGKeyArray, n: int
    ) -> tuple[Float[Array, "n dim"], Float[Array, " n"]]:
        """``n`` samples and their exact log densities (no root finding)."""
        check_int("PlanarFlow", "n", n)
        z0 = jnp.asarray(self.base.sample(key, n)).astype(self.u.dtype)
        x, logdet = self.transform(z0)
        return x, self.base.log_prob(z0) - logdet
