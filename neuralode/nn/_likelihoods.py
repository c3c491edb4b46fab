"""Likelihood terms of the latent ODE: Gaussian observations, the KL term, Poisson events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from .._checks import (
    check_array,
    check_callable,
    check_choice,
    check_instance,
    check_int,
    check_key,
)
from ._options import SolveOptions, check_solve
from ._sequences import Mask, Times, Values, as_observed, check_mask

_LOG_2PI = float(np.log(2.0 * np.pi))


def diagonal_gaussian_kl(
    mean: Float[ArrayLike, " n"], logvar: Float[ArrayLike, " n"]
) -> Float[Array, ""]:
    """``KL(N(mean, diag(exp(logvar))) ‖ N(0, I))`` in closed form.

    ``0.5 Σ_j (exp(logvar_j) + mean_j² − 1 − logvar_j)``.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import diagonal_gaussian_kl

        diagonal_gaussian_kl(jnp.zeros(4), jnp.zeros(4))  # 0.0
        ```
    """
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar)


def gaussian_log_likelihood(values: Values, pred: Values, mask: Mask,
                            std: float) -> Float[Array, ""]:
    """``Σ_i m_i Σ_d log N(values_id | pred_id, std²)`` (normalised Gaussian densities).

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import gaussian_log_likelihood

        gaussian_log_likelihood(jnp.zeros((3, 2)), jnp.zeros((3, 2)), None, 1.0)
        # -3 * log(2π)
        ```
    """
    values, pred = jnp.asarray(values), jnp.asarray(pred)
    var = jnp.asarray(std, values.dtype) ** 2
    logp = -0.5 * ((values - pred) ** 2 / var + jnp.log(var) + _LOG_2PI)
    if mask is not None:
        mask = jnp.asarray(mask)
        weight = as_observed(mask).astype(values.dtype)
        logp = logp * weight[:, None]
    return jnp.sum(logp)


_LINKS: dict[str, Callable[[Array], Array]] = {"softplus": jax.nn.softplus, "exp": jnp.exp}


class PoissonProcessLikelihood(eqx.Module):
    """Inhomogeneous Poisson process with intensity ``λ(z(t)) = link(net(z(t)))``.

    For events ``t_1..t_N`` in ``[t_start, t_end]``::

        log p(t_1..t_N | t_start, t_end) = Σ_i log λ(z(t_i)) − ∫_{t_start}^{t_end} λ(z(t)) dt.

    The integral is carried as one more ODE state ``Λ(t) = ∫_{t_start}^t λ(z(s)) ds`` in the
    same solve as the latent trajectory (:meth:`augment` builds the augmented vector field of
    ``(z, Λ)``); see :func:`poisson_process_log_likelihood`.

    Args:
        latent_size: Dimension of ``z``.
        width: Hidden width of the default rate network (an MLP with ``depth`` hidden layers,
            tanh, scalar output).
        depth: Number of hidden layers of the default rate network.
        link: ``"softplus"`` (default) or ``"exp"``: maps the network output to a positive
            rate.
        net: Optional custom rate network ``z -> scalar`` (an ``eqx.Module``) used instead of
            the default MLP.
        key: PRNG key for the default network's initialisation (may be ``None`` with ``net``).

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import PoissonProcessLikelihood

        proc = PoissonProcessLikelihood(4, key=jax.random.key(0))
        proc.rate(jnp.zeros(4)) > 0  # True
        ```
    """

    net: Callable[[Array], Array]
    link: str = eqx.field(static=True)

    def __init__(self, latent_size: int, width: int = 20, depth: int = 1,
                 link: Literal["softplus", "exp"] = "softplus", *,
                 net: Callable[[Array], Array] | None = None, key: PRNGKeyArray | None = None):
        who = "PoissonProcessLikelihood"
        self.link = check_choice(who, "link", link, tuple(_LINKS))
        if net is None:
            latent_size = check_int(who, "latent_size", latent_size)
            width, depth = check_int(who, "width", width), check_int(who, "depth", depth, minimum=0)
            key = check_key(who, "key", key)
            net = eqx.nn.MLP(latent_size, "scalar", width, depth, activation=jnp.tanh, key=key)
        self.net = check_callable(who, "net", net, "net(z) -> scalar")

    def rate(self, z: Float[Array, " latent"]) -> Float[Array, ""]:
        """The intensity ``λ(z) > 0`` (a scalar)."""
        out = jnp.asarray(self.net(z))
        if out.shape not in ((), (1,)):
            raise ValueError(
                "PoissonProcessLikelihood: the rate network must return a scalar, got shape "
                f"{out.shape}."
            )
        return _LINKS[self.link](out.reshape(())).astype(z.dtype)

    def log_rate(self, z: Float[Array, " latent"]) -> Float[Array, ""]:
        """``log λ(z)``, computed stably for both links."""
        out = jnp.asarray(self.net(z)).reshape(()).astype(z.dtype)
        if self.link == "exp":
            return out
        return jnp.log(jax.nn.softplus(out))

    def augment(self, field: Callable[..., Array]) -> _PoissonAugmentedField:
        """The vector field of ``(z, Λ)``: ``(f(t, z, args), λ(z))``."""
        return _PoissonAugmentedField(field, self)

    def log_likelihood(self, zs: Float[Array, "T latent"], integral: Float[ArrayLike, ""],
                       mask: Mask = None) -> Float[Array, ""]:
        """``Σ_i m_i log λ(zs_i) − integral`` from the latent states at the event times."""
        log_rates = jax.vmap(self.log_rate)(zs)
        if mask is not None:
            mask = jnp.asarray(mask)
            observed = as_observed(mask)
            log_rates = jnp.where(observed, log_rates, 0.0)
        return jnp.sum(log_rates) - integral


class _PoissonAugmentedField(eqx.Module):
    field: Callable[..., Array]
    process: PoissonProcessLikelihood

    def __call__(self, t: Scalar, y: tuple[Array, Array], args: Any) -> tuple[Array, Array]:
        z, _ = y
        return self.field(t, z, args), self.process.rate(z)


def poisson_process_log_likelihood(
    field: Callable[..., Array],
    process: PoissonProcessLikelihood,
    z0: Float[ArrayLike, " latent"],
    times: Times,
    mask: Mask = None,
    args: Any = None,
    *,
    solve: SolveOptions = SolveOptions(),
) -> tuple[Float[Array, ""], Float[Array, "T latent"]]:
    """Poisson process log-likelihood of events along the latent ODE ``dz/dt = field``.

    One :func:`neuralode.odeint` solve of the augmented state ``(z, Λ)`` from
    ``t_start = times[0]`` (where ``z = z0`` and ``Λ = 0``) to ``t_end = times[-1]``. The
    events are the unmasked entries of ``times``; masked entries are only output times (use
    them to put ``t_start``/``t_end`` away from the first/last event).

    Args:
        field: Latent vector field ``f(t, z, args)``.
        process: The intensity model.
        z0: Latent state at ``times[0]``.
        times: Strictly increasing times, shape ``(T,)``.
        mask: Which entries of ``times`` are events (default: all).
        args: Passed to ``field``.
        solve: The solver settings, :class:`~neuralode.nn.SolveOptions` (default: those of
            :func:`neuralode.odeint`).

    Returns:
        ``(log_likelihood, zs)`` with ``zs`` the latent states at ``times``.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import PoissonProcessLikelihood, poisson_process_log_likelihood

        proc = PoissonProcessLikelihood(2, key=jax.random.key(0))
        ll, zs = poisson_process_log_likelihood(
            lambda t, z, args: -z, proc, jnp.ones(2), jnp.linspace(0.0, 1.0, 5)
        )
        ```
    """
    who = "poisson_process_log_likelihood"
    check_instance(who, "process", process, PoissonProcessLikelihood,
                   "a PoissonProcessLikelihood")
    check_solve(who, solve)
    z0 = jnp.asarray(z0)
    times = check_array(who, "times", times, ndim=1)
    if mask is not None:
        mask = check_mask(who, "mask", mask, times.shape[0])
    y0 = (z0, jnp.zeros((), z0.dtype))
    sol = solve.odeint(process.augment(field), y0, times, args)
    zs, lam = sol.ys
    return process.log_likelihood(zs, lam[-1], mask), zs


