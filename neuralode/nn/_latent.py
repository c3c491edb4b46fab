"""Latent ODE time-series models (Chen et al. 2018, section 5; Rubanova et al. 2019).

The generative model: ``z(t_0) ~ N(0, I)``; ``z(t_1..t_N) = ODESolve(z(t_0), f, t_0..t_N)``;
``x_i ~ N(decoder(z(t_i)), σ² I)``. It is trained as a variational auto-encoder: a recognition
network reads the observations *backwards in time* and outputs the mean and log-variance of
the approximate posterior ``q(z(t_0) | x)``.

Conventions shared by every model in this module:

* One sequence is ``values`` of shape ``(T, D)``, ``times`` of shape ``(T,)`` and ``mask`` of
  shape ``(T,)`` (bool, or float where non-zero means observed). ``times`` must be strictly
  increasing *including* masked entries (they are output times of an ODE solve). Padding a
  ragged batch: put every sequence on a shared grid and mask the points it does not have, or
  append strictly increasing dummy times with mask ``False``.
* **Time origin**: ``z0`` is the latent state at ``t0 = times[0]``, the first entry of the
  time grid (observed or masked). With irregular samples (e.g.
  :func:`neuralode.datasets.subsample`) that is the first observation time; on a shared
  masked grid it is the start of the grid.
* **Masked points are skipped** by the encoders: the hidden state is carried through them
  unchanged by the recurrent update (the ODE-RNN still evolves it in time, see
  :class:`ODERNNEncoder`), and they contribute nothing to the likelihood. Changing the values
  at masked points therefore never changes any output.
* Methods work on a single sequence; batch with ``jax.vmap`` (one key per sequence), or use
  the batched losses :func:`latent_ode_loss` and :func:`rnn_baseline_loss`, which are pure
  functions of the model, made for ``eqx.filter_jit`` and ``eqx.filter_value_and_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, Scalar

from .._adjoint import AbstractAdjoint, BacksolveAdjoint
from .._odeint import odeint
from .._solvers import AbstractSolver, Tsit5

__all__ = [
    "LatentODE",
    "ODERNNEncoder",
    "PoissonProcessLikelihood",
    "RNNBaseline",
    "RNNEncoder",
    "diagonal_gaussian_kl",
    "gaussian_log_likelihood",
    "latent_ode_loss",
    "poisson_process_log_likelihood",
    "rnn_baseline_loss",
]

_LOG_2PI = float(np.log(2.0 * np.pi))
_DEFAULT_SOLVER = Tsit5()
_DEFAULT_ADJOINT = BacksolveAdjoint()


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_size(who: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{who}: `{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_positive(who: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{who}: `{name}` must be a positive number, got {value!r}.")
    if not float(value) > 0:
        raise ValueError(f"{who}: `{name}` must be positive, got {value!r}.")
    return float(value)


def _check_solver(who: str, solver: Any, adjoint: Any) -> None:
    if not isinstance(solver, AbstractSolver) or not solver.adaptive:
        raise ValueError(
            f"{who}: `solver` must be an adaptive solver instance such as nde.Tsit5() or "
            f"nde.Dopri5() (solve times are traced), got {solver!r}."
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise ValueError(
            f"{who}: `adjoint` must be nde.BacksolveAdjoint(), nde.InterpolatedAdjoint() or "
            f"nde.CheckpointAdjoint(), got {adjoint!r}."
        )


def _check_sequence(
    who: str, data_size: int, values: Any, times: Any, mask: Any
) -> tuple[Array, Array, Array]:
    """Validate one sequence; returns ``(values, times, observed)`` with ``observed`` bool."""
    values = jnp.asarray(values)
    times = jnp.asarray(times)
    if values.ndim != 2 or values.shape[-1] != data_size:
        extra = " (batch with jax.vmap or the batched losses)" if values.ndim == 3 else ""
        raise ValueError(
            f"{who}: `values` must have shape (T, {data_size}), got shape {values.shape}{extra}."
        )
    if not jnp.issubdtype(values.dtype, jnp.floating):
        raise ValueError(f"{who}: `values` must be floating point, got dtype {values.dtype}.")
    num_times = values.shape[0]
    if times.shape != (num_times,):
        raise ValueError(
            f"{who}: `times` must have shape (T,) = ({num_times},) to match `values`, got "
            f"shape {times.shape}."
        )
    if mask is None:
        observed = jnp.ones((num_times,), bool)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != (num_times,):
            raise ValueError(
                f"{who}: `mask` must have shape (T,) = ({num_times},) to match `values`, got "
                f"shape {mask.shape}."
            )
        observed = mask if mask.dtype == jnp.bool_ else mask != 0
    # Masked entries are replaced by zeros, so padding may hold anything (NaN included) without
    # reaching outputs or gradients.
    values = jnp.where(observed[:, None], values, jnp.zeros((), values.dtype))
    return values, times.astype(values.dtype), observed


def _check_mask(who: str, name: str, mask: Any, num_times: int) -> Array:
    mask = jnp.asarray(mask)
    if mask.shape != (num_times,):
        raise ValueError(
            f"{who}: `{name}` must have shape (T,) = ({num_times},) to match `values`, got "
            f"shape {mask.shape}."
        )
    return mask if mask.dtype == jnp.bool_ else mask != 0


def _check_key(who: str, key: Any) -> None:
    if key is None or not (
        isinstance(key, jax.Array)
        and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,))
    ):
        raise ValueError(f"{who}: `key` must be a PRNG key such as jax.random.key(0), got {key!r}.")


# ---------------------------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------------------------


class _MLPField(eqx.Module):
    """An autonomous vector field ``f(t, z, args) = mlp(z)`` for :func:`neuralode.odeint`."""

    mlp: eqx.nn.MLP

    def __init__(
        self,
        size: int,
        width: int,
        depth: int,
        activation: Callable[[Array], Array],
        *,
        key: PRNGKeyArray,
    ):
        self.mlp = eqx.nn.MLP(size, size, width, depth, activation=activation, key=key)

    def __call__(self, t: Scalar, z: Float[Array, " n"], args: Any) -> Float[Array, " n"]:
        return self.mlp(z)


class _RNNCell(eqx.Module):
    """The paper's plain recognition RNN cell: ``h' = tanh(W [x, h] + b)``."""

    linear: eqx.nn.Linear
    hidden_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, key: PRNGKeyArray):
        self.linear = eqx.nn.Linear(input_size + hidden_size, hidden_size, key=key)
        self.hidden_size = hidden_size

    def __call__(self, x: Float[Array, " i"], h: Float[Array, " h"]) -> Float[Array, " h"]:
        return jnp.tanh(self.linear(jnp.concatenate([x, h])))


def _split_stats(out: Float[Array, " 2l"]) -> tuple[Float[Array, " l"], Float[Array, " l"]]:
    latent = out.shape[0] // 2
    return out[:latent], out[latent:]


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------


class RNNEncoder(eqx.Module):
    """Recognition RNN run backwards in time; outputs the mean and log-variance of ``q(z0)``.

    The observations are read from the last to the first (so the last input the RNN sees is
    the earliest observation, nearest to ``z0``'s time ``times[0]``). Masked points are
    skipped: the hidden state is carried through them unchanged. With ``time_input=True`` the
    input at each observation is ``[x_i, Δ_i]`` with ``Δ_i = t_j - t_i ≥ 0`` the gap to the
    previously processed (later, unmasked) observation ``t_j`` (0 for the first one
    processed), which makes the encoder aware of irregular sampling.

    Args:
        data_size: Observation dimension ``D``.
        latent_size: Latent dimension (the paper uses 4).
        hidden_size: RNN units (the paper uses 25).
        cell: ``"rnn"`` (the paper's ``tanh(W[x, h] + b)``) or ``"gru"`` (``eqx.nn.GRUCell``).
        time_input: Feed the time gaps as an extra input feature.
        key: PRNG key for the initialisation.

    Example:
        ```python
        enc = RNNEncoder(2, 4, key=jax.random.key(0))
        mean, logvar = enc(jnp.zeros((10, 2)), jnp.linspace(0.0, 1.0, 10), None)
        mean.shape  # (4,)
        ```
    """

    cell: _RNNCell | eqx.nn.GRUCell
    out: eqx.nn.Linear
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    time_input: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        hidden_size: int = 25,
        *,
        cell: Literal["rnn", "gru"] = "rnn",
        time_input: bool = True,
        key: PRNGKeyArray,
    ):
        who = "RNNEncoder"
        self.data_size = _check_size(who, "data_size", data_size)
        self.latent_size = _check_size(who, "latent_size", latent_size)
        self.hidden_size = _check_size(who, "hidden_size", hidden_size)
        if not isinstance(time_input, bool):
            raise ValueError(f"{who}: `time_input` must be True or False, got {time_input!r}.")
        self.time_input = time_input
        k_cell, k_out = jax.random.split(key)
        input_size = data_size + int(time_input)
        if cell == "rnn":
            self.cell = _RNNCell(input_size, hidden_size, key=k_cell)
        elif cell == "gru":
            self.cell = eqx.nn.GRUCell(input_size, hidden_size, key=k_cell)
        else:
            raise ValueError(f"{who}: `cell` must be 'rnn' or 'gru', got {cell!r}.")
        self.out = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k_out)

    def __call__(
        self,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> tuple[Float[Array, " latent"], Float[Array, " latent"]]:
        """Mean and log-variance of ``q(z0)`` for one sequence (``mask=None``: all observed)."""
        values, times, observed = _check_sequence("RNNEncoder", self.data_size, values, times, mask)
        dtype = values.dtype
        h0 = jnp.zeros((self.hidden_size,), dtype)

        def step(carry, inp):
            h, t_next, seen = carry
            x, t, obs = inp
            if self.time_input:
                gap = jnp.where(seen, t_next - t, jnp.zeros((), dtype))
                x = jnp.concatenate([x, gap[None]])
            h_new = self.cell(x, h)
            h = jnp.where(obs, h_new, h)
            t_next = jnp.where(obs, t, t_next)
            return (h, t_next, seen | obs), None

        init = (h0, times[-1], jnp.zeros((), bool))
        (h, _, _), _ = jax.lax.scan(step, init, (values, times, observed), reverse=True)
        return _split_stats(self.out(h))


class ODERNNEncoder(eqx.Module):
    """ODE-RNN recognition network (Rubanova et al. 2019), run backwards in time.

    The hidden state starts at zero at ``times[-1]``. Going backwards through the grid, it is
    first evolved by the ODE ``dh/dt = f(h)`` (an MLP field solved with
    :func:`neuralode.odeint` from ``t_{i+1}`` back to ``t_i``) and then, if point ``i`` is
    observed, updated by a GRU cell with input ``x_i``. At masked points the time evolution
    still happens (the hidden state always describes time ``t_i``, so gaps are never lost)
    but the GRU update is skipped, so the masked values never enter. The state reached at
    ``times[0]`` is mapped linearly to the mean and log-variance of ``q(z0)``.

    Args:
        data_size: Observation dimension ``D``.
        latent_size: Latent dimension.
        hidden_size: GRU/ODE state size.
        field_width: Width of the hidden-state vector field MLP (one hidden layer, tanh).
        solver, rtol, atol, adjoint, max_steps: Settings of the between-observation solves
            (adaptive solvers only; the times are traced).
        throw: As for :func:`neuralode.odeint`: a failed between-observation solve raises
            (``True``) or yields NaN (``False``).
        key: PRNG key for the initialisation.

    Example:
        ```python
        enc = ODERNNEncoder(2, 4, key=jax.random.key(0))
        mean, logvar = enc(jnp.zeros((10, 2)), jnp.linspace(0.0, 1.0, 10), None)
        ```
    """

    cell: eqx.nn.GRUCell
    field: _MLPField
    out: eqx.nn.Linear
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    solver: AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    adjoint: AbstractAdjoint = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        hidden_size: int = 25,
        field_width: int = 20,
        *,
        solver: AbstractSolver = _DEFAULT_SOLVER,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        adjoint: AbstractAdjoint = _DEFAULT_ADJOINT,
        max_steps: int = 1024,
        throw: bool = True,
        key: PRNGKeyArray,
    ):
        who = "ODERNNEncoder"
        self.data_size = _check_size(who, "data_size", data_size)
        self.latent_size = _check_size(who, "latent_size", latent_size)
        self.hidden_size = _check_size(who, "hidden_size", hidden_size)
        _check_size(who, "field_width", field_width)
        _check_solver(who, solver, adjoint)
        self.solver, self.adjoint = solver, adjoint
        self.rtol = _check_positive(who, "rtol", rtol)
        self.atol = _check_positive(who, "atol", atol)
        self.max_steps = _check_size(who, "max_steps", max_steps)
        if not isinstance(throw, bool):
            raise ValueError(f"{who}: `throw` must be True or False, got {throw!r}.")
        self.throw = throw
        k_cell, k_field, k_out = jax.random.split(key, 3)
        self.cell = eqx.nn.GRUCell(data_size, hidden_size, key=k_cell)
        self.field = _MLPField(hidden_size, field_width, 1, jnp.tanh, key=k_field)
        self.out = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k_out)

    def __call__(
        self,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> tuple[Float[Array, " latent"], Float[Array, " latent"]]:
        """Mean and log-variance of ``q(z0)`` for one sequence (``mask=None``: all observed)."""
        values, times, observed = _check_sequence(
            "ODERNNEncoder", self.data_size, values, times, mask
        )
        h = jnp.zeros((self.hidden_size,), values.dtype)
        # The last grid point: no evolution before it, only the (masked) GRU update.
        h = jnp.where(observed[-1], self.cell(values[-1], h), h)
        if values.shape[0] == 1:
            return _split_stats(self.out(h))

        def step(carry, inp):
            h, t_prev = carry
            x, t, obs = inp
            sol = odeint(
                self.field,
                h,
                jnp.stack([t_prev, t]),
                solver=self.solver,
                rtol=self.rtol,
                atol=self.atol,
                adjoint=self.adjoint,
                max_steps=self.max_steps,
                throw=self.throw,
            )
            h = sol.ys[-1]
            h = jnp.where(obs, self.cell(x, h), h)
            return (h, t), None

        xs = (values[:-1], times[:-1], observed[:-1])
        (h, _), _ = jax.lax.scan(step, (h, times[-1]), xs, reverse=True)
        return _split_stats(self.out(h))


# ---------------------------------------------------------------------------------------------
# Likelihood terms
# ---------------------------------------------------------------------------------------------


def diagonal_gaussian_kl(
    mean: Float[ArrayLike, " n"], logvar: Float[ArrayLike, " n"]
) -> Float[Array, ""]:
    """``KL(N(mean, diag(exp(logvar))) ‖ N(0, I))`` in closed form.

    ``0.5 Σ_j (exp(logvar_j) + mean_j² − 1 − logvar_j)``.

    Example:
        ```python
        diagonal_gaussian_kl(jnp.zeros(4), jnp.zeros(4))  # 0.0
        ```
    """
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar)


def gaussian_log_likelihood(
    values: Float[ArrayLike, "T D"],
    pred: Float[ArrayLike, "T D"],
    mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None,
    std: float,
) -> Float[Array, ""]:
    """``Σ_i m_i Σ_d log N(values_id | pred_id, std²)`` (normalised Gaussian densities).

    Example:
        ```python
        gaussian_log_likelihood(jnp.zeros((3, 2)), jnp.zeros((3, 2)), None, 1.0)
        # -3 * log(2π)
        ```
    """
    values, pred = jnp.asarray(values), jnp.asarray(pred)
    var = jnp.asarray(std, values.dtype) ** 2
    logp = -0.5 * ((values - pred) ** 2 / var + jnp.log(var) + _LOG_2PI)
    if mask is not None:
        mask = jnp.asarray(mask)
        weight = (mask if mask.dtype == jnp.bool_ else mask != 0).astype(values.dtype)
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
        proc = PoissonProcessLikelihood(4, key=jax.random.key(0))
        proc.rate(jnp.zeros(4)) > 0  # True
        ```
    """

    net: Callable[[Array], Array]
    link: str = eqx.field(static=True)

    def __init__(
        self,
        latent_size: int,
        width: int = 20,
        depth: int = 1,
        link: Literal["softplus", "exp"] = "softplus",
        *,
        net: Callable[[Array], Array] | None = None,
        key: PRNGKeyArray | None = None,
    ):
        who = "PoissonProcessLikelihood"
        if link not in _LINKS:
            raise ValueError(f"{who}: `link` must be 'softplus' or 'exp', got {link!r}.")
        self.link = link
        if net is None:
            _check_size(who, "latent_size", latent_size)
            _check_size(who, "width", width)
            _check_size(who, "depth", depth, 0)
            if key is None:
                raise ValueError(f"{who}: `key` is required to initialise the rate network.")
            net = eqx.nn.MLP(latent_size, "scalar", width, depth, activation=jnp.tanh, key=key)
        elif not callable(net):
            raise ValueError(f"{who}: `net` must be callable z -> scalar, got {net!r}.")
        self.net = net

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

    def log_likelihood(
        self,
        zs: Float[Array, "T latent"],
        integral: Float[ArrayLike, ""],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> Float[Array, ""]:
        """``Σ_i m_i log λ(zs_i) − integral`` from the latent states at the event times."""
        log_rates = jax.vmap(self.log_rate)(zs)
        if mask is not None:
            mask = jnp.asarray(mask)
            observed = mask if mask.dtype == jnp.bool_ else mask != 0
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
    times: Float[ArrayLike, " T"],
    mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    args: Any = None,
    *,
    solver: AbstractSolver = _DEFAULT_SOLVER,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    adjoint: AbstractAdjoint = _DEFAULT_ADJOINT,
    max_steps: int = 4096,
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
        solver, rtol, atol, adjoint, max_steps: Passed to :func:`neuralode.odeint`.

    Returns:
        ``(log_likelihood, zs)`` with ``zs`` the latent states at ``times``.

    Example:
        ```python
        proc = PoissonProcessLikelihood(2, key=jax.random.key(0))
        ll, zs = poisson_process_log_likelihood(
            lambda t, z, args: -z, proc, jnp.ones(2), jnp.linspace(0.0, 1.0, 5)
        )
        ```
    """
    if not isinstance(process, PoissonProcessLikelihood):
        raise ValueError(
            f"poisson_process_log_likelihood: `process` must be a PoissonProcessLikelihood, "
            f"got {type(process).__name__}."
        )
    z0 = jnp.asarray(z0)
    times = jnp.asarray(times)
    if times.ndim != 1:
        raise ValueError(
            f"poisson_process_log_likelihood: `times` must be 1-D, got shape {times.shape}."
        )
    if mask is not None and jnp.shape(mask) != times.shape:
        raise ValueError(
            f"poisson_process_log_likelihood: `mask` must have shape {times.shape} like "
            f"`times`, got {jnp.shape(mask)}."
        )
    y0 = (z0, jnp.zeros((), z0.dtype))
    sol = odeint(
        process.augment(field),
        y0,
        times,
        args,
        solver=solver,
        rtol=rtol,
        atol=atol,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    zs, lam = sol.ys
    return process.log_likelihood(zs, lam[-1], mask), zs


# ---------------------------------------------------------------------------------------------
# Latent ODE
# ---------------------------------------------------------------------------------------------


class LatentODE(eqx.Module):
    """Latent ODE VAE for irregularly sampled time series (PAPER.md section 5).

    * Encoder (``encoder=``): ``"rnn"`` — the paper's recognition RNN (``hidden_size`` = 25
      units, plain ``tanh`` cell) run backwards in time; ``"gru"`` — the same with a GRU
      cell; ``"odernn"`` — the ODE-RNN of Rubanova et al. (2019); or any encoder module
      ``(values, times, mask) -> (mean, logvar)``.
    * Dynamics: ``dz/dt = MLP(z)`` (two hidden layers of ``field_width`` = 20 units, ELU),
      solved by :func:`neuralode.odeint` from ``z0`` at ``t0 = times[0]``.
    * Decoder: MLP (one hidden layer of ``decoder_width`` = 20 units, ReLU by default as in
      the paper's code; a ReLU decoder maps a smooth latent path to a piecewise-linear one,
      ``decoder_activation=jax.nn.elu`` or ``jnp.tanh`` gives smooth predictions) to ``D``.
    * Likelihood: Gaussian with fixed standard deviation ``obs_std``; with
      ``poisson=True`` the observation times are additionally modelled as events of a
      Poisson process with intensity ``λ(z(t))`` on ``[times[0], times[-1]]`` (the integral
      ``∫λ`` is one more state of the same solve).

    ``ELBO = Σ_i m_i log p(x_i | z(t_i)) [+ log p(event times)] − KL(q(z0) ‖ N(0, I))``, with
    one reparameterised sample of ``z0``.

    Args:
        data_size: Observation dimension ``D``.
        latent_size: Latent dimension (paper: 4).
        hidden_size: Encoder units (paper: 25).
        field_width: Units of the latent dynamics MLP (paper: 20).
        decoder_width: Units of the decoder MLP (paper: 20).
        decoder_activation: Activation of the decoder's hidden layer (default ``jax.nn.relu``).
        encoder: ``"rnn"``, ``"gru"``, ``"odernn"`` or an encoder module.
        obs_std: Observation noise standard deviation of the likelihood (paper: 0.3).
        poisson: Add the Poisson process likelihood of the observation times.
        solver, rtol, atol, adjoint, max_steps, throw: Settings of the latent solve (adaptive
            solvers; ``"odernn"`` uses the same ones for its hidden-state solves).
        key: PRNG key for the initialisation.

    Example:
        ```python
        model = LatentODE(2, 4, key=jax.random.key(0))
        ts = jnp.linspace(0.0, 1.0, 20)
        xs = jnp.stack([jnp.cos(ts), jnp.sin(ts)], -1)
        elbo, aux = model.elbo(jax.random.key(1), xs, ts, None)
        preds = model.predict(None, xs, ts, None, jnp.linspace(0.0, 2.0, 40))  # (40, 2)

        # Batched and jitted training loss (one key per sequence is split inside):
        loss_fn = eqx.filter_jit(eqx.filter_value_and_grad(latent_ode_loss, has_aux=True))
        (loss, aux), grads = loss_fn(model, jax.random.key(2), xs[None], ts, None)
        ```
    """

    encoder: eqx.Module
    field: _MLPField
    decoder: eqx.nn.MLP
    poisson: PoissonProcessLikelihood | None
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    solver: AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    adjoint: AbstractAdjoint = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int = 4,
        hidden_size: int = 25,
        field_width: int = 20,
        decoder_width: int = 20,
        *,
        encoder: Literal["rnn", "gru", "odernn"] | eqx.Module = "rnn",
        decoder_activation: Callable[[Array], Array] = jax.nn.relu,
        obs_std: float = 0.3,
        poisson: bool = False,
        solver: AbstractSolver = _DEFAULT_SOLVER,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        adjoint: AbstractAdjoint = _DEFAULT_ADJOINT,
        max_steps: int = 1024,
        throw: bool = True,
        key: PRNGKeyArray,
    ):
        who = "LatentODE"
        self.data_size = _check_size(who, "data_size", data_size)
        self.latent_size = _check_size(who, "latent_size", latent_size)
        _check_size(who, "hidden_size", hidden_size)
        _check_size(who, "field_width", field_width)
        _check_size(who, "decoder_width", decoder_width)
        self.obs_std = _check_positive(who, "obs_std", obs_std)
        _check_solver(who, solver, adjoint)
        self.solver, self.adjoint = solver, adjoint
        self.rtol = _check_positive(who, "rtol", rtol)
        self.atol = _check_positive(who, "atol", atol)
        self.max_steps = _check_size(who, "max_steps", max_steps)
        if not isinstance(throw, bool):
            raise ValueError(f"{who}: `throw` must be True or False, got {throw!r}.")
        if not isinstance(poisson, bool):
            raise ValueError(f"{who}: `poisson` must be True or False, got {poisson!r}.")
        self.throw = throw
        k_enc, k_field, k_dec, k_rate = jax.random.split(key, 4)
        if isinstance(encoder, str):
            if encoder in ("rnn", "gru"):
                encoder = RNNEncoder(data_size, latent_size, hidden_size, cell=encoder, key=k_enc)
            elif encoder == "odernn":
                encoder = ODERNNEncoder(
                    data_size,
                    latent_size,
                    hidden_size,
                    field_width,
                    solver=solver,
                    rtol=rtol,
                    atol=atol,
                    adjoint=adjoint,
                    max_steps=max_steps,
                    throw=throw,
                    key=k_enc,
                )
            else:
                raise ValueError(
                    f"{who}: `encoder` must be 'rnn', 'gru', 'odernn' or an encoder module, "
                    f"got {encoder!r}."
                )
        elif not (isinstance(encoder, eqx.Module) and callable(encoder)):
            raise ValueError(
                f"{who}: `encoder` must be 'rnn', 'gru', 'odernn' or an encoder module "
                f"(values, times, mask) -> (mean, logvar), got {encoder!r}."
            )
        self.encoder = encoder
        self.field = _MLPField(latent_size, field_width, 2, jax.nn.elu, key=k_field)
        if not callable(decoder_activation):
            raise ValueError(
                f"{who}: `decoder_activation` must be callable (e.g. jax.nn.elu), got "
                f"{decoder_activation!r}."
            )
        self.decoder = eqx.nn.MLP(
            latent_size, data_size, decoder_width, 1, activation=decoder_activation, key=k_dec
        )
        self.poisson = (
            PoissonProcessLikelihood(latent_size, field_width, key=k_rate) if poisson else None
        )

    # -- pieces ----------------------------------------------------------------------------

    def encode(
        self,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> tuple[Float[Array, " latent"], Float[Array, " latent"]]:
        """Mean and log-variance of ``q(z0)``, ``z0`` being the latent state at ``times[0]``."""
        values, times, observed = _check_sequence(
            "LatentODE.encode", self.data_size, values, times, mask
        )
        return self.encoder(values, times, observed)

    @staticmethod
    def sample_z0(
        key: PRNGKeyArray, mean: Float[Array, " latent"], logvar: Float[Array, " latent"]
    ) -> Float[Array, " latent"]:
        """Reparameterised sample ``mean + exp(logvar / 2) ε``, ``ε ~ N(0, I)``."""
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.exp(0.5 * logvar) * eps

    def _odeint(self, field, y0, ts):
        return odeint(
            field,
            y0,
            ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=self.throw,
        )

    def trajectory(
        self, z0: Float[ArrayLike, " latent"], t0: Float[ArrayLike, ""], ts: Float[ArrayLike, " P"]
    ) -> Float[Array, "P latent"]:
        """Latent states at ``ts`` starting from ``z0`` at time ``t0``.

        ``ts`` must be strictly increasing with ``ts[0] >= t0`` (``ts[0] == t0`` allowed).
        """
        z0 = jnp.asarray(z0)
        ts = jnp.asarray(ts, z0.dtype)
        t0 = jnp.asarray(t0, z0.dtype)
        if ts.ndim != 1:
            raise ValueError(f"LatentODE.trajectory: `ts` must be 1-D, got shape {ts.shape}.")
        if not isinstance(ts, jax.core.Tracer) and not isinstance(t0, jax.core.Tracer):
            if float(ts[0]) < float(t0):
                raise ValueError(
                    f"LatentODE.trajectory: the first requested time {float(ts[0])} lies "
                    f"before the start time t0 = {float(t0)}; requested times must be >= t0."
                )
        else:  # traced (jit/vmap): the same check at run time, never a silent time shift
            ts = eqx.error_if(
                ts,
                ts[0] < t0,
                "LatentODE.trajectory: the first requested time lies before the start time t0 "
                "(z0's time, the first observation time); requested times must be >= t0.",
            )
        # One solve on [t0, ts...]. If ts[0] == t0 the start is moved back by one machine
        # epsilon (relative to max(|t0|, 1); an error of ~eps·|f|, at rounding level) so the
        # grid stays strictly increasing. (Not nextafter: denormals are flushed to zero.)
        eps = jnp.finfo(ts.dtype).eps * jnp.maximum(jnp.abs(ts[0]), 1.0)
        start = jnp.minimum(t0, jax.lax.stop_gradient(ts[0] - eps))
        grid = jnp.concatenate([start[None], ts])
        return self._odeint(self.field, z0, grid).ys[1:]

    def decode(self, zs: Float[Array, "T latent"]) -> Float[Array, "T D"]:
        """Decoder applied to every latent state."""
        return jax.vmap(self.decoder)(zs)

    # -- objectives -------------------------------------------------------------------------

    def elbo(
        self,
        key: PRNGKeyArray,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
        *,
        encoder_mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """Single-sample ELBO of one sequence.

        Args:
            key: PRNG key of the reparameterised ``z0`` sample.
            values, times, mask: One sequence (see the module docstring); the likelihood
                covers the points where ``mask`` is true.
            encoder_mask: The points the recognition network reads (default: ``mask``).
                Giving it only the leading observations while ``mask`` also covers later
                points trains the model to *extrapolate*: ``z0`` is inferred from the first
                part and the likelihood scores the prediction of the rest (the
                extrapolation objective of Rubanova et al., 2019). ``z0`` stays at
                ``times[0]``.

        Returns:
            ``(elbo, aux)`` with ``aux`` holding ``"log_likelihood"`` (Gaussian term),
            ``"poisson"`` (0 unless ``poisson=True``), ``"kl"`` and ``"nfe"`` of the solve.
        """
        _check_key("LatentODE.elbo", key)
        values, times, observed = _check_sequence(
            "LatentODE.elbo", self.data_size, values, times, mask
        )
        if encoder_mask is None:
            mean, logvar = self.encoder(values, times, observed)
        else:
            read = _check_mask("LatentODE.elbo", "encoder_mask", encoder_mask, times.shape[0])
            mean, logvar = self.encoder(values, times, read & observed)
        z0 = self.sample_z0(key, mean, logvar)
        if self.poisson is None:
            sol = self._odeint(self.field, z0, times)
            zs = sol.ys
            poisson_ll = jnp.zeros((), values.dtype)
        else:
            y0 = (z0, jnp.zeros((), z0.dtype))
            sol = self._odeint(self.poisson.augment(self.field), y0, times)
            zs, lam = sol.ys
            poisson_ll = self.poisson.log_likelihood(zs, lam[-1], observed)
        loglik = gaussian_log_likelihood(values, self.decode(zs), observed, self.obs_std)
        kl = diagonal_gaussian_kl(mean, logvar)
        aux = {"log_likelihood": loglik, "poisson": poisson_ll, "kl": kl, "nfe": sol.stats["nfe"]}
        return loglik + poisson_ll - kl, aux

    def predict(
        self,
        key: PRNGKeyArray | None,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None,
        pred_times: Float[ArrayLike, " P"],
    ) -> Float[Array, "P D"]:
        """Decoded predictions at ``pred_times`` given the observations.

        Interpolation and extrapolation alike: ``pred_times`` must be strictly increasing
        with ``pred_times[0] >= times[0]`` (``z0``'s time); they may lie between, at or
        beyond the observation times.

        Args:
            key: PRNG key of a posterior sample of ``z0``, or ``None`` to use the posterior
                mean (deterministic; what an RMSE evaluation usually wants).
            values, times, mask: The observed sequence.
            pred_times: Times to predict at, shape ``(P,)``.

        Returns:
            Predicted means of the observations, shape ``(P, D)``.
        """
        values, times, observed = _check_sequence(
            "LatentODE.predict", self.data_size, values, times, mask
        )
        mean, logvar = self.encoder(values, times, observed)
        if key is None:
            z0 = mean
        else:
            _check_key("LatentODE.predict", key)
            z0 = self.sample_z0(key, mean, logvar)
        return self.decode(self.trajectory(z0, times[0], pred_times))


def _broadcast_batch(who: str, values, times, mask):
    values = jnp.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"{who}: `values` must have shape (B, T, D), got shape {values.shape}.")
    batch, num_times = values.shape[:2]
    if batch == 0:
        raise ValueError(
            f"{who}: `values` holds no sequences (shape {values.shape}); the batch mean over "
            "zero sequences is undefined. Pass at least one sequence."
        )
    times = jnp.asarray(times)
    if times.ndim == 1:
        times = jnp.broadcast_to(times, (batch, times.shape[0]))
    if times.shape != (batch, num_times):
        raise ValueError(
            f"{who}: `times` must have shape (T,) or (B, T) = {(batch, num_times)}, got shape "
            f"{times.shape}."
        )
    if mask is None:
        mask = jnp.ones((batch, num_times), bool)
    mask = jnp.asarray(mask)
    if mask.ndim == 1:
        mask = jnp.broadcast_to(mask, (batch, mask.shape[0]))
    if mask.shape != (batch, num_times):
        raise ValueError(
            f"{who}: `mask` must have shape (T,) or (B, T) = {(batch, num_times)}, got shape "
            f"{mask.shape}."
        )
    return values, times, mask


def latent_ode_loss(
    model: LatentODE,
    key: PRNGKeyArray,
    values: Float[ArrayLike, "B T D"],
    times: Float[ArrayLike, "B T"] | Float[ArrayLike, " T"],
    mask: Bool[ArrayLike, "B T"] | Float[ArrayLike, "B T"] | None = None,
    *,
    encoder_mask: Bool[ArrayLike, "B T"] | Float[ArrayLike, "B T"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Batch mean of the negative ELBO: ``-mean_b ELBO_b`` (one ``z0`` sample per sequence).

    ``vmap`` of :meth:`LatentODE.elbo` with ``jax.random.split(key, B)``. A pure function of
    the model: wrap it in ``eqx.filter_jit(eqx.filter_value_and_grad(..., has_aux=True))``.
    ``encoder_mask`` (shape ``(T,)`` or ``(B, T)``) restricts what the recognition network
    reads, for extrapolation training (see :meth:`LatentODE.elbo`).

    Returns:
        ``(loss, aux)``; ``aux`` holds the batch means of ``"log_likelihood"``,
        ``"poisson"`` and ``"kl"`` and the largest ``"nfe"``.

    Example:
        ```python
        @eqx.filter_jit
        def step(model, opt_state, key, values, times, mask):
            (loss, aux), grads = eqx.filter_value_and_grad(latent_ode_loss, has_aux=True)(
                model, key, values, times, mask)
            updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss
        ```
    """
    if not isinstance(model, LatentODE):
        raise ValueError(f"latent_ode_loss: `model` must be a LatentODE, got {type(model)}.")
    _check_key("latent_ode_loss", key)
    values, times, mask = _broadcast_batch("latent_ode_loss", values, times, mask)
    keys = jax.random.split(key, values.shape[0])
    if encoder_mask is None:
        elbos, aux = jax.vmap(model.elbo)(keys, values, times, mask)
    else:
        encoder_mask = jnp.asarray(encoder_mask)
        if encoder_mask.ndim == 1:
            encoder_mask = jnp.broadcast_to(encoder_mask, mask.shape)
        if encoder_mask.shape != mask.shape:
            raise ValueError(
                f"latent_ode_loss: `encoder_mask` must have shape (T,) or (B, T) = "
                f"{mask.shape}, got shape {encoder_mask.shape}."
            )
        elbos, aux = jax.vmap(lambda k, v, t, m, e: model.elbo(k, v, t, m, encoder_mask=e))(
            keys, values, times, mask, encoder_mask
        )
    out = {k: jnp.mean(v) for k, v in aux.items() if k != "nfe"}
    out["nfe"] = jnp.max(aux["nfe"])
    return -jnp.mean(elbos), out


# ---------------------------------------------------------------------------------------------
# RNN baseline (Table 2)
# ---------------------------------------------------------------------------------------------


class RNNBaseline(eqx.Module):
    """Recurrent baseline of the paper's Table 2: a GRU that reads observations forwards.

    Reading: at each observed point the GRU takes ``x_i`` (plus ``Δ_i = t_i − t_last``, the
    time since the previous observation, when ``time_delta_input=True``); masked points are
    skipped (state carried). Predicting: a decoder MLP maps ``[h, Δ]`` (or ``h`` alone without
    time inputs) to the next observation, ``Δ`` being the time from the last observation to
    the requested time. Training (:meth:`loss`) is one-step-ahead with teacher forcing;
    :meth:`predict` reads all observations and then rolls out autoregressively over
    ``pred_times`` (feeding its own predictions back), which is how it extrapolates.

    Args:
        data_size: Observation dimension ``D``.
        hidden_size: GRU units (25 as the paper's recognition RNN).
        decoder_width: Units of the decoder MLP (one hidden layer, ReLU).
        time_delta_input: Feed time gaps to the GRU and decoder (needed for irregular times).
        key: PRNG key for the initialisation.

    Example:
        ```python
        rnn = RNNBaseline(2, key=jax.random.key(0))
        ts = jnp.linspace(0.0, 1.0, 20)
        xs = jnp.stack([jnp.cos(ts), jnp.sin(ts)], -1)
        rnn.loss(xs, ts, None)
        rnn.predict(xs, ts, None, jnp.linspace(1.05, 2.0, 20)).shape  # (20, 2)
        ```
    """

    cell: eqx.nn.GRUCell
    decoder: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    time_delta_input: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        hidden_size: int = 25,
        decoder_width: int = 20,
        *,
        time_delta_input: bool = True,
        key: PRNGKeyArray,
    ):
        who = "RNNBaseline"
        self.data_size = _check_size(who, "data_size", data_size)
        self.hidden_size = _check_size(who, "hidden_size", hidden_size)
        _check_size(who, "decoder_width", decoder_width)
        if not isinstance(time_delta_input, bool):
            raise ValueError(
                f"{who}: `time_delta_input` must be True or False, got {time_delta_input!r}."
            )
        self.time_delta_input = time_delta_input
        k_cell, k_dec = jax.random.split(key)
        extra = int(time_delta_input)
        self.cell = eqx.nn.GRUCell(data_size + extra, hidden_size, key=k_cell)
        self.decoder = eqx.nn.MLP(hidden_size + extra, data_size, decoder_width, 1, key=k_dec)

    def _decode(self, h: Array, gap: Array) -> Array:
        if self.time_delta_input:
            return self.decoder(jnp.concatenate([h, gap[None]]))
        return self.decoder(h)

    def _update(self, h: Array, x: Array, gap: Array) -> Array:
        if self.time_delta_input:
            x = jnp.concatenate([x, gap[None]])
        return self.cell(x, h)

    def _read(self, values, times, observed):
        dtype = values.dtype

        def step(carry, inp):
            h, t_last, seen = carry
            x, t, obs = inp
            gap = jnp.where(seen, t - t_last, jnp.zeros((), dtype))
            pred = self._decode(h, gap)
            h = jnp.where(obs, self._update(h, x, gap), h)
            t_last = jnp.where(obs, t, t_last)
            return (h, t_last, seen | obs), (pred, seen)

        init = (jnp.zeros((self.hidden_size,), dtype), times[0], jnp.zeros((), bool))
        return jax.lax.scan(step, init, (values, times, observed))

    def loss(
        self,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None = None,
    ) -> Float[Array, ""]:
        """Mean squared one-step-ahead error over the observed points after the first one."""
        values, times, observed = _check_sequence(
            "RNNBaseline.loss", self.data_size, values, times, mask
        )
        _, (preds, seen) = self._read(values, times, observed)
        weight = (observed & seen).astype(values.dtype)
        sq = jnp.sum((preds - values) ** 2, axis=-1) * weight
        return jnp.sum(sq) / (jnp.maximum(jnp.sum(weight), 1.0) * self.data_size)

    def predict(
        self,
        values: Float[ArrayLike, "T D"],
        times: Float[ArrayLike, " T"],
        mask: Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None,
        pred_times: Float[ArrayLike, " P"],
    ) -> Float[Array, "P D"]:
        """Autoregressive predictions at ``pred_times`` after reading every observation.

        ``pred_times`` should follow the last observation (extrapolation); earlier times get
        negative gaps, which the model never saw in training.
        """
        values, times, observed = _check_sequence(
            "RNNBaseline.predict", self.data_size, values, times, mask
        )
        pred_times = jnp.asarray(pred_times, values.dtype)
        if pred_times.ndim != 1:
            raise ValueError(
                f"RNNBaseline.predict: `pred_times` must be 1-D, got shape {pred_times.shape}."
            )
        (h, t_last, _), _ = self._read(values, times, observed)

        def step(carry, t):
            h, t_last = carry
            gap = t - t_last
            pred = self._decode(h, gap)
            return (self._update(h, pred, gap), t), pred

        _, preds = jax.lax.scan(step, (h, t_last), pred_times)
        return preds


def rnn_baseline_loss(
    model: RNNBaseline,
    values: Float[ArrayLike, "B T D"],
    times: Float[ArrayLike, "B T"] | Float[ArrayLike, " T"],
    mask: Bool[ArrayLike, "B T"] | Float[ArrayLike, "B T"] | None = None,
) -> Float[Array, ""]:
    """Batch mean of :meth:`RNNBaseline.loss` (for ``eqx.filter_value_and_grad``).

    Example:
        ```python
        loss, grads = eqx.filter_jit(eqx.filter_value_and_grad(rnn_baseline_loss))(
            rnn, values, times, mask)
        ```
    """
    if not isinstance(model, RNNBaseline):
        raise ValueError(f"rnn_baseline_loss: `model` must be an RNNBaseline, got {type(model)}.")
    values, times, mask = _broadcast_batch("rnn_baseline_loss", values, times, mask)
    return jnp.mean(jax.vmap(model.loss)(values, times, mask))
