"""The recurrent baseline of the paper's Table 2 (a GRU read forwards) and its batched loss.

Sequences follow the conventions of ``neuralode/nn/_sequences.py``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_array, check_bool, check_instance, check_int
from ._sequences import (
    BatchMask,
    BatchTimes,
    BatchValues,
    Mask,
    Times,
    Values,
    broadcast_batch,
    check_sequence,
)


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
        import jax, jax.numpy as jnp
        from neuralode.nn import RNNBaseline

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

    def __init__(self, data_size: int, hidden_size: int = 25, decoder_width: int = 20, *,
                 time_delta_input: bool = True, key: PRNGKeyArray):
        who = "RNNBaseline"
        self.data_size = check_int(who, "data_size", data_size)
        self.hidden_size = check_int(who, "hidden_size", hidden_size)
        decoder_width = check_int(who, "decoder_width", decoder_width)
        self.time_delta_input = check_bool(who, "time_delta_input", time_delta_input)
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

    def loss(self, values: Values, times: Times, mask: Mask = None) -> Float[Array, ""]:
        """Mean squared one-step-ahead error over the observed points after the first one."""
        values, times, observed = check_sequence(
            "RNNBaseline.loss", self.data_size, values, times, mask
        )
        _, (preds, seen) = self._read(values, times, observed)
        weight = (observed & seen).astype(values.dtype)
        sq = jnp.sum((preds - values) ** 2, axis=-1) * weight
        return jnp.sum(sq) / (jnp.maximum(jnp.sum(weight), 1.0) * self.data_size)

    def predict(self, values: Values, times: Times, mask: Mask,
                pred_times: Float[ArrayLike, " P"]) -> Float[Array, "P D"]:
        """Autoregressive predictions at ``pred_times`` after reading every observation.

        ``pred_times`` should follow the last observation (extrapolation); earlier times get
        negative gaps, which the model never saw in training.
        """
        values, times, observed = check_sequence(
            "RNNBaseline.predict", self.data_size, values, times, mask
        )
        pred_times = check_array("RNNBaseline.predict", "pred_times", pred_times, ndim=1)
        pred_times = pred_times.astype(values.dtype)
        (h, t_last, _), _ = self._read(values, times, observed)

        def step(carry, t):
            h, t_last = carry
            gap = t - t_last
            pred = self._decode(h, gap)
            return (self._update(h, pred, gap), t), pred

        _, preds = jax.lax.scan(step, (h, t_last), pred_times)
        return preds


def rnn_baseline_loss(model: RNNBaseline, values: BatchValues, times: BatchTimes,
                      mask: BatchMask = None) -> Float[Array, ""]:
    """Batch mean of :meth:`RNNBaseline.loss` (for ``eqx.filter_value_and_grad``).

    Example:
        ```python
        import equinox as eqx, jax, jax.numpy as jnp
        from neuralode.nn import RNNBaseline, rnn_baseline_loss

        rnn = RNNBaseline(2, key=jax.random.key(0))
        times = jnp.linspace(0.0, 1.0, 10)
        values = jnp.stack([jnp.cos(times), jnp.sin(times)], -1)[None]  # a batch of one
        loss, grads = eqx.filter_jit(eqx.filter_value_and_grad(rnn_baseline_loss))(
            rnn, values, times, None)
        ```
    """
    check_instance("rnn_baseline_loss", "model", model, RNNBaseline, "a neuralode.nn.RNNBaseline")
    values, times, mask = broadcast_batch("rnn_baseline_loss", values, times, mask)
    return jnp.mean(jax.vmap(model.loss)(values, times, mask))
