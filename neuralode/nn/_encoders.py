"""Recognition networks: read a sequence and output the posterior ``q(z0)`` of a latent ODE.

Both encoders read the observations *backwards in time* (the last input they see is the
earliest observation, nearest to ``z0``'s time ``times[0]``) and return the mean and
log-variance of a diagonal Gaussian. Sequences follow the conventions of
``neuralode/nn/_sequences.py`` (masked points are skipped).
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_bool, check_choice, check_int
from ._fields import AutonomousMLPField
from ._options import SolveOptions, SolvingModule, check_solve
from ._sequences import Mask, Posterior, Times, Values, check_sequence


class _RNNCell(eqx.Module):
    """The paper's plain recognition RNN cell: ``h' = tanh(W [x, h] + b)``."""

    linear: eqx.nn.Linear
    hidden_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, key: PRNGKeyArray):
        self.linear = eqx.nn.Linear(input_size + hidden_size, hidden_size, key=key)
        self.hidden_size = hidden_size

    def __call__(self, x: Float[Array, " i"], h: Float[Array, " h"]) -> Float[Array, " h"]:
        return jnp.tanh(self.linear(jnp.concatenate([x, h])))


def split_stats(out: Float[Array, " 2l"]) -> tuple[Float[Array, " l"], Float[Array, " l"]]:
    latent = out.shape[0] // 2
    return out[:latent], out[latent:]


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
        import jax, jax.numpy as jnp
        from neuralode.nn import RNNEncoder

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

    def __init__(self, data_size: int, latent_size: int, hidden_size: int = 25, *,
                 cell: Literal["rnn", "gru"] = "rnn", time_input: bool = True, key: PRNGKeyArray):
        who = "RNNEncoder"
        self.data_size = check_int(who, "data_size", data_size)
        self.latent_size = check_int(who, "latent_size", latent_size)
        self.hidden_size = check_int(who, "hidden_size", hidden_size)
        self.time_input = check_bool(who, "time_input", time_input)
        check_choice(who, "cell", cell, ("rnn", "gru"))
        k_cell, k_out = jax.random.split(key)
        input_size = data_size + int(time_input)
        if cell == "rnn":
            self.cell = _RNNCell(input_size, hidden_size, key=k_cell)
        else:
            self.cell = eqx.nn.GRUCell(input_size, hidden_size, key=k_cell)
        self.out = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k_out)

    def __call__(self, values: Values, times: Times, mask: Mask = None) -> Posterior:
        """Mean and log-variance of ``q(z0)`` for one sequence (``mask=None``: all observed)."""
        values, times, observed = check_sequence("RNNEncoder", self.data_size, values, times, mask)
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
        return split_stats(self.out(h))


class ODERNNEncoder(SolvingModule):
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
        solve: Settings of the between-observation solves, :class:`~neuralode.nn.SolveOptions`
            with an adaptive solver (the times are traced). Default: those of
            :func:`neuralode.odeint`.
        key: PRNG key for the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ODERNNEncoder

        enc = ODERNNEncoder(2, 4, key=jax.random.key(0))
        mean, logvar = enc(jnp.zeros((10, 2)), jnp.linspace(0.0, 1.0, 10), None)
        ```
    """

    cell: eqx.nn.GRUCell
    field: AutonomousMLPField
    out: eqx.nn.Linear
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    solve: SolveOptions = eqx.field(static=True)

    def __init__(self, data_size: int, latent_size: int, hidden_size: int = 25,
                 field_width: int = 20, *, solve: SolveOptions = SolveOptions(), key: PRNGKeyArray):
        who = "ODERNNEncoder"
        self.data_size = check_int(who, "data_size", data_size)
        self.latent_size = check_int(who, "latent_size", latent_size)
        self.hidden_size = check_int(who, "hidden_size", hidden_size)
        check_int(who, "field_width", field_width)
        self.solve = check_solve(who, solve, adaptive=True)
        k_cell, k_field, k_out = jax.random.split(key, 3)
        self.cell = eqx.nn.GRUCell(data_size, hidden_size, key=k_cell)
        self.field = AutonomousMLPField(hidden_size, field_width, 1, jnp.tanh, key=k_field)
        self.out = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k_out)


    def __call__(self, values: Values, times: Times, mask: Mask = None) -> Posterior:
        """Mean and log-variance of ``q(z0)`` for one sequence (``mask=None``: all observed)."""
        values, times, observed = check_sequence(
            "ODERNNEncoder", self.data_size, values, times, mask
        )
        h = jnp.zeros((self.hidden_size,), values.dtype)
        # The last grid point: no evolution before it, only the (masked) GRU update.
        h = jnp.where(observed[-1], self.cell(values[-1], h), h)
        if values.shape[0] == 1:
            return split_stats(self.out(h))

        def step(carry, inp):
            h, t_prev = carry
            x, t, obs = inp
            h = self.solve.odeint(self.field, h, jnp.stack([t_prev, t])).ys[-1]
            h = jnp.where(obs, self.cell(x, h), h)
            return (h, t), None

        xs = (values[:-1], times[:-1], observed[:-1])
        (h, _), _ = jax.lax.scan(step, (h, times[-1]), xs, reverse=True)
        return split_stats(self.out(h))


