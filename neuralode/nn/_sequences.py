"""Time series as the sequence models of :mod:`neuralode.nn` take them, and their checks.

Conventions shared by the encoders, the latent ODE and the RNN baseline:

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
  :class:`~neuralode.nn.ODERNNEncoder`), and they contribute nothing to the likelihood.
  Changing the values at masked points therefore never changes any output.
* Methods work on a single sequence; batch with ``jax.vmap`` (one key per sequence), or use
  the batched losses :func:`~neuralode.nn.latent_ode_loss` and
  :func:`~neuralode.nn.rnn_baseline_loss`, which are pure functions of the model, made for
  ``eqx.filter_jit`` and ``eqx.filter_value_and_grad``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._checks import check_array

# One sequence: values (T, D), times (T,), mask (T,) (bool, or float with non-zero = observed).
Values = Float[ArrayLike, "T D"]
Times = Float[ArrayLike, " T"]
Mask = Bool[ArrayLike, " T"] | Float[ArrayLike, " T"] | None
# A batch of sequences: values (B, T, D); times and mask (B, T) or shared (T,).
BatchValues = Float[ArrayLike, "B T D"]
BatchTimes = Float[ArrayLike, "B T"] | Float[ArrayLike, " T"]
BatchMask = Bool[ArrayLike, "B T"] | Float[ArrayLike, "B T"] | Bool[ArrayLike, " T"] | None
# The mean and log-variance of the posterior q(z0).
Posterior = tuple[Float[Array, " latent"], Float[Array, " latent"]]


def as_observed(mask: Array) -> Array:
    """A mask as booleans (non-zero means observed)."""
    return mask if mask.dtype == jnp.bool_ else mask != 0


def check_mask(owner: str, name: str, mask: Any, num_times: int) -> Array:
    """A ``(T,)`` mask as booleans."""
    return as_observed(check_array(owner, name, mask, shape=(num_times,)))


def check_sequence(
    owner: str, data_size: int, values: Any, times: Any, mask: Any
) -> tuple[Array, Array, Array]:
    """Validate one sequence; returns ``(values, times, observed)`` with ``observed`` bool.

    Masked entries of ``values`` are replaced by zeros, so padding may hold anything (NaN
    included) without reaching outputs or gradients; ``times`` is cast to the values' dtype.
    """
    hint = " (batch with jax.vmap or the batched losses)" if jnp.ndim(values) == 3 else ""
    values = check_array(owner, "values", values, shape=(None, data_size), hint=hint)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        raise TypeError(f"{owner}: `values` must be floating point, got dtype {values.dtype}.")
    num_times = values.shape[0]
    times = check_array(owner, "times", times, shape=(num_times,))
    if mask is None:
        observed = jnp.ones((num_times,), bool)
    else:
        observed = check_mask(owner, "mask", mask, num_times)
    values = jnp.where(observed[:, None], values, jnp.zeros((), values.dtype))
    return values, times.astype(values.dtype), observed


def broadcast_batch(owner: str, values: Any, times: Any, mask: Any) -> tuple[Array, Array, Array]:
    """A batch ``(B, T, D)`` with ``times``/``mask`` of shape ``(T,)`` broadcast to ``(B, T)``."""
    values = check_array(owner, "values", values, ndim=3)
    batch, num_times = values.shape[:2]
    if batch == 0:
        raise ValueError(
            f"{owner}: `values` holds no sequences (shape {values.shape}); the batch mean over "
            "zero sequences is undefined. Pass at least one sequence."
        )
    times = jnp.asarray(times)
    if times.ndim == 1:
        times = jnp.broadcast_to(times, (batch, times.shape[0]))
    times = check_array(owner, "times", times, shape=(batch, num_times))
    mask = jnp.ones((batch, num_times), bool) if mask is None else jnp.asarray(mask)
    if mask.ndim == 1:
        mask = jnp.broadcast_to(mask, (batch, mask.shape[0]))
    mask = check_array(owner, "mask", mask, shape=(batch, num_times))
    return values, times, mask
