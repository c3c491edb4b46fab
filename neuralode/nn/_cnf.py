"""Continuous normalizing flows (Chen et al. 2018, section 4; FFJORD, Grathwohl et al. 2019).

Density convention (FFJORD's): **data live at ``t0``, the base distribution at ``t1``.**
``log_prob(x)`` integrates the augmented state ``[z, ℓ]`` from ``(x, 0)`` at ``t0`` to ``t1``
with ``dz/dt = f(t, z)`` and ``dℓ/dt = tr(∂f/∂z)``; by the instantaneous change of variables
(``d log p(z(t))/dt = -tr(∂f/∂z)``)

    log p(x) = log p_base(z(t1)) + ∫_{t0}^{t1} tr(∂f/∂z(t)) dt.

Sampling draws ``z ~ p_base`` and integrates backwards from ``t1`` to ``t0``; the same
augmented ODE then gives the log density of each sample without a second solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_callable, check_choice, check_int, check_real
from ._fields import ConcatSquashField
from ._options import SolveOptions, SolvingModule, Tolerance, check_interval, check_solve
from ._regularisers import NOISE_KINDS, hutchinson_noise, sum_squares, value_and_vjp_noise

Points = Float[ArrayLike, "*batch dim"]  # one point (D,) or a batch (N, D)


class StandardNormal(eqx.Module):
    """An isotropic normal base distribution ``N(0, scale² I)`` on ``R^dim``.

    Any object with ``log_prob(z)`` (one example ``(dim,)`` → scalar) and ``sample(key, n)``
    (→ ``(n, dim)``) can serve as a base distribution of :class:`CNF` and
    :class:`~neuralode.nn.PlanarFlow`; an Equinox module's arrays are then trained too.

    Args:
        dim: Dimension.
        scale: Standard deviation (the paper's maximum-likelihood recipe has covariance
            ``0.1·I``, i.e. ``scale=0.1 ** 0.5``).

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import StandardNormal

        base = StandardNormal(2, scale=0.1)
        base.sample(jax.random.key(0), 5).shape  # (5, 2)
        base.log_prob(jnp.zeros(2))               # log(1 / (2π · 0.01))
        ```
    """

    dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, dim: int, scale: float = 1.0):
        self.dim = check_int("StandardNormal", "dim", dim)
        self.scale = check_real("StandardNormal", "scale", scale, positive=True)

    def log_prob(self, z: Float[Array, " dim"]) -> Float[Array, ""]:
        """Log density of one point (sum over the last axis; leading axes are batch axes)."""
        z = jnp.asarray(z)
        if z.shape[-1:] != (self.dim,):
            raise ValueError(
                f"StandardNormal: `z` must have last axis {self.dim}, got shape {z.shape}."
            )
        u = z / self.scale
        const = self.dim * (0.5 * math.log(2 * math.pi) + math.log(self.scale))
        return -0.5 * jnp.sum(u * u, axis=-1) - const

    def sample(self, key: PRNGKeyArray, n: int, dtype=None) -> Float[Array, "n dim"]:
        """``n`` independent samples, shape ``(n, dim)``."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.scale * jax.random.normal(key, (n, self.dim), dtype)


class _CNFDynamics(eqx.Module):
    """The augmented field ``[z, ℓ(, K, J)] ↦ [f, tr ∂f/∂z(, ‖f‖², ‖J‖²)]``.

    ``args = (field_args, eps)``; ``eps`` is the Hutchinson noise (unused for exact traces).
    """

    field: Callable
    trace: str = eqx.field(static=True)
    with_logp: bool = eqx.field(static=True)
    regularise: bool = eqx.field(static=True)

    def __call__(self, t, state, args):
        field_args, eps = args
        z = state[0]
        dtype = z.dtype

        def fn(zz):
            return self.field(t, zz, field_args)

        if not (self.with_logp or self.regularise):
            return (fn(z),)
        if self.trace == "hutchinson":
            fz, e_j = value_and_vjp_noise(fn, z, eps)
            div = jnp.vdot(e_j, eps)
            frob = sum_squares(e_j)
        elif hasattr(self.field, "value_and_divergence") and not self.regularise:
            fz, div = self.field.value_and_divergence(t, z, field_args)
            frob = None
        else:
            fz, lin = jax.linearize(fn, z)
            cols = jax.vmap(lin)(jnp.eye(z.shape[0], dtype=dtype))  # cols[i] = J e_i
            div = jnp.trace(cols)
            frob = jnp.sum(jnp.square(cols))
        out = (fz,)
        if self.with_logp:
            out = out + (jnp.asarray(div, dtype),)
        if self.regularise:
            regs = {"kinetic": sum_squares(fz).astype(dtype), "jacobian": frob.astype(dtype)}
            out = out + (regs,)
        return out


def _pack_outputs(main, regs, stats, regularise, return_stats):
    out = main
    if regularise:
        out = out + (regs,)
    if return_stats:
        out = out + (stats,)
    return out[0] if len(out) == 1 else out


class CNF(SolvingModule):
    """A continuous normalizing flow: data at ``t0``, base distribution at ``t1``.

    ``log_prob(x)`` solves the state and the log-density change (instantaneous change of
    variables, Theorem 1 of the paper) in one ``odeint`` call from ``t0`` to ``t1``;
    ``sample``/``sample_and_log_prob`` integrate backwards from base samples at ``t1``.

    Traces ``tr(∂f/∂z)``:

    * ``trace="exact"``: the full Jacobian (``D`` forward-mode products per evaluation), fine
      for small ``D``. If the field has a method ``value_and_divergence(t, z, args) -> (f,
      tr ∂f/∂z)`` (e.g. :class:`~neuralode.nn.PlanarCNFField`) that is used instead.
    * ``trace="hutchinson"``: FFJORD's unbiased estimate ``εᵀ(∂f/∂z)ε`` with one noise draw
      ``ε`` (``noise="gaussian"`` or ``"rademacher"``) held fixed for the whole solve, from
      the ``key`` passed to the call (:func:`~neuralode.nn.hutchinson_noise`).

    ``regularise=True`` adds the RNODE regularisers as extra states of the same solve and
    returns ``{"kinetic": ∫‖f‖² dt, "jacobian": ...}`` over ``[t0, t1]``: with the Hutchinson
    trace the Jacobian term is ``∫‖εᵀ∂f/∂z‖² dt`` (same ``ε``), with the exact trace it is the
    exact ``∫‖∂f/∂z‖²_F dt``.

    Every method takes one example ``(D,)`` or a batch ``(N, D)``; batches are ``vmap``-ed
    (each sample gets its own step sizes; with a key, each gets its own noise). The methods
    are themselves ``vmap``-able over single examples.

    Args:
        field: Vector field ``field(t, z, args)`` on ``z`` of shape ``(D,)``.
        base: Base distribution at ``t1``: default ``StandardNormal(dim)``; any object with
            ``log_prob(z)`` and ``sample(key, n)``.
        dim: Dimension ``D``, used for the default base (else taken from ``base.dim``).
        t0, t1: Integration interval (the paper's maximum-likelihood recipe: ``[0, 10]``).
        trace: ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson noise kind.
        solve: The solver settings, :class:`~neuralode.nn.SolveOptions` (default: those of
            :func:`neuralode.odeint`).

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import CNF, MLPField

        field = MLPField(2, width=8, depth=1, key=jax.random.key(0))
        cnf = CNF(field, dim=2, trace="exact")
        cnf.log_prob(jnp.zeros(2))                                  # scalar
        x, logp = cnf.sample_and_log_prob(jax.random.key(1), 4)    # (4, 2), (4,)
        logp, regs = cnf.log_prob(x, regularise=True)               # regs["kinetic"]: (4,)
        ```
    """

    field: Callable
    base: eqx.Module
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    solve: SolveOptions = eqx.field(static=True)

    def __init__(self, field: Callable, *, base=None, dim: int | None = None, t0: float = 0.0,
                 t1: float = 1.0, trace: Literal["exact", "hutchinson"] = "exact",
                 noise: Literal["gaussian", "rademacher"] = "gaussian",
                 solve: SolveOptions = SolveOptions()):
        owner = "CNF"
        self.field = check_callable(owner, "field", field, "field(t, z, args)")
        if base is None:
            if dim is None:
                raise ValueError("CNF: pass `dim` (for the default StandardNormal base) or `base`.")
            base = StandardNormal(dim)
        has_methods = callable(getattr(base, "log_prob", None)) and callable(
            getattr(base, "sample", None)
        )
        if not has_methods:
            raise TypeError(
                "CNF: `base` must have methods log_prob(z) and sample(key, n), got "
                f"{type(base).__name__}."
            )
        base_dim = getattr(base, "dim", None)
        if dim is not None and base_dim is not None and dim != base_dim:
            raise ValueError(f"CNF: `dim` ({dim}) differs from `base.dim` ({base_dim}).")
        self.base = base
        self.t0, self.t1 = check_interval(owner, t0, t1)
        self.trace = check_choice(owner, "trace", trace, ("exact", "hutchinson"))
        self.noise = check_choice(owner, "noise", noise, NOISE_KINDS)
        self.solve = check_solve(owner, solve)


    # ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """The dimension ``D`` if the base distribution knows it, else ``None``."""
        return getattr(self.base, "dim", None)

    def _check_points(self, name: str, x) -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if x.ndim not in (1, 2):
            raise ValueError(
                f"CNF: `{name}` must be one point (D,) or a batch (N, D), got shape {x.shape}."
            )
        if self.dim is not None and x.shape[-1] != self.dim:
            raise ValueError(
                f"CNF: `{name}` has dimension {x.shape[-1]} but the flow has dimension {self.dim}."
            )
        return x

    def _check_key(self, key, with_trace: bool):
        if key is None and with_trace and self.trace == "hutchinson":
            raise ValueError(
                "CNF: the Hutchinson trace needs `key` (one noise draw per solve); pass "
                "key=jax.random.key(...) or build the CNF with trace='exact'."
            )

    def _solve(self, z0, forward, args, key, with_logp, regularise, rtol, atol):
        """One solve of a single example: data→base (``forward``) or base→data."""
        dtype = z0.dtype
        t_start, t_end = (self.t0, self.t1) if forward else (self.t1, self.t0)
        needs_noise = self.trace == "hutchinson" and (with_logp or regularise)
        eps = hutchinson_noise(key, z0, self.noise) if needs_noise else None
        zero = jnp.zeros((), dtype)
        state = (z0,)
        if with_logp:
            state = state + (zero,)
        if regularise:
            state = state + ({"kinetic": zero, "jacobian": zero},)
        dyn = _CNFDynamics(self.field, self.trace, with_logp, regularise)
        sol = self.solve.odeint(dyn, state, [t_start, t_end], (args, eps), rtol=rtol, atol=atol)
        out = jax.tree.map(lambda x: x[-1], sol.ys)
        z1 = out[0]
        ell = out[1] if with_logp else None
        regs = None
        if regularise:
            sign = 1.0 if t_end > t_start else -1.0
            regs = {k: sign * v for k, v in out[-1].items()}
        return z1, ell, regs, sol.stats

    def _map(self, single, x, key):
        """Apply ``single(x_i, key_i)`` to one point or vmap it over a batch."""
        if x.ndim == 1:
            return single(x, key)
        keys = None if key is None else jax.random.split(key, x.shape[0])
        return jax.vmap(single)(x, keys)

    # ----------------------------------------------------------------------------------

    def log_prob(self, x: Points, *, key: PRNGKeyArray | None = None, args: PyTree = None,
                 regularise: bool = False, return_stats: bool = False, rtol: Tolerance = None,
                 atol: Tolerance = None):
        """Log density of data points ``x`` (one ``(D,)`` or a batch ``(N, D)``).

        Args:
            x: Points at ``t0`` (the data side).
            key: PRNG key of the Hutchinson noise (required for ``trace="hutchinson"``;
                split over a batch).
            args: Passed to the field.
            regularise: Also return the RNODE regularisers ``{"kinetic", "jacobian"}``.
            return_stats: Also return the solve statistics (``stats["nfe"]``, ...).
            rtol, atol: Override the tolerances for this call.

        Returns:
            ``logp`` (shape ``()`` or ``(N,)``), followed by ``regs`` if ``regularise`` and
            ``stats`` if ``return_stats``.
        """
        x = self._check_points("x", x)
        self._check_key(key, True)

        def single(xi, ki):
            z1, ell, regs, stats = self._solve(xi, True, args, ki, True, regularise, rtol, atol)
            return self.base.log_prob(z1) + ell, regs, stats

        logp, regs, stats = self._map(single, x, key)
        return _pack_outputs((logp,), regs, stats, regularise, return_stats)

    def forward(self, x: Points, *, args: PyTree = None, rtol: Tolerance = None,
                atol: Tolerance = None) -> Float[Array, "*batch dim"]:
        """Map data points (at ``t0``) to the base space (at ``t1``), without log densities."""
        return self._transport("x", x, True, args, rtol, atol)

    def inverse(self, z: Points, *, args: PyTree = None, rtol: Tolerance = None,
                atol: Tolerance = None) -> Float[Array, "*batch dim"]:
        """Map base-space points (at ``t1``) to data space (at ``t0``)."""
        return self._transport("z", z, False, args, rtol, atol)

    def _transport(self, name, x, forward, args, rtol, atol):
        x = self._check_points(name, x)
        return self._map(
            lambda xi, _: self._solve(xi, forward, args, None, False, False, rtol, atol)[0], x, None
        )

    def sample(self, key: PRNGKeyArray, n: int, *, args: PyTree = None, rtol: Tolerance = None,
               atol: Tolerance = None) -> Float[Array, "n dim"]:
        """``n`` samples, shape ``(n, D)``: base samples integrated from ``t1`` back to ``t0``.

        Uses the same base draw as :meth:`sample_and_log_prob` with the same key.
        """
        _check_n(n)
        z1 = self.base.sample(jax.random.split(key)[0], n)
        return self.inverse(z1, args=args, rtol=rtol, atol=atol)

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int, *, args: PyTree = None,
                            regularise: bool = False, return_stats: bool = False,
                            rtol: Tolerance = None, atol: Tolerance = None):
        """``n`` samples and their log densities from one backward solve each.

        The natural direction for density matching (reverse KL, the paper's Figure 4):
        ``E_q[log q(x) - log p̃(x)]`` needs samples and their densities only.

        Returns:
            ``(x, logp)`` with shapes ``(n, D)`` and ``(n,)``, followed by ``regs`` if
            ``regularise`` and ``stats`` if ``return_stats``.
        """
        _check_n(n)
        k_base, k_noise = jax.random.split(key)
        z1 = self.base.sample(k_base, n)
        z1 = self._check_points("base sample", z1)

        def single(zi, ki):
            x, ell, regs, stats = self._solve(zi, False, args, ki, True, regularise, rtol, atol)
            # ell = ∫_{t1}^{t0} tr dt = -∫_{t0}^{t1} tr dt.
            return x, self.base.log_prob(zi) - ell, regs, stats

        x, logp, regs, stats = self._map(single, z1, k_noise)
        return _pack_outputs((x, logp), regs, stats, regularise, return_stats)


def _check_n(n):
    check_int("CNF", "n", n)


def ffjord_cnf(dim: int, *, width: int = 64, depth: int = 3, activation: Callable = jnp.tanh,
               base=None, trace: Literal["exact", "hutchinson"] = "hutchinson", key: PRNGKeyArray,
               **cnf_kwargs) -> CNF:
    """An FFJORD-style CNF: a :class:`~neuralode.nn.ConcatSquashField` MLP and the
    Hutchinson trace (Grathwohl et al. 2019).

    Args:
        dim: Data dimension ``D``.
        width, depth: Hidden width and number of hidden layers of the field.
        activation: Nonlinearity of the field.
        base: Base distribution (default ``StandardNormal(dim)``).
        trace: ``"hutchinson"`` (default) or ``"exact"``.
        key: PRNG key of the initialisation.
        **cnf_kwargs: Further :class:`CNF` options (``t0``, ``t1``, ``noise``, ``solve``).

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ffjord_cnf

        cnf = ffjord_cnf(2, width=16, depth=2, key=jax.random.key(0))
        logp = cnf.log_prob(jnp.zeros((3, 2)), key=jax.random.key(1))  # (3,)
        ```
    """
    field = ConcatSquashField(dim, width, depth, activation=activation, key=key)
    return CNF(field, base=base, dim=dim, trace=trace, **cnf_kwargs)
