"""The latent ODE (Chen et al. 2018, section 5; Rubanova et al. 2019) and its batched loss.

The generative model: ``z(t_0) ~ N(0, I)``; ``z(t_1..t_N) = ODESolve(z(t_0), f, t_0..t_N)``;
``x_i ~ N(decoder(z(t_i)), σ² I)``. It is trained as a variational auto-encoder: a recognition
network (``neuralode/nn/_encoders.py``) reads the observations *backwards in time* and outputs
the mean and log-variance of the approximate posterior ``q(z(t_0) | x)``. Sequences follow the
conventions of ``neuralode/nn/_sequences.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import (
    check_array,
    check_bool,
    check_callable,
    check_choice,
    check_instance,
    check_int,
    check_key,
    check_real,
)
from ._encoders import ODERNNEncoder, RNNEncoder
from ._fields import AutonomousMLPField
from ._likelihoods import PoissonProcessLikelihood, diagonal_gaussian_kl, gaussian_log_likelihood
from ._options import SolveOptions, SolvingModule, check_solve
from ._sequences import (
    BatchMask,
    BatchTimes,
    BatchValues,
    Mask,
    Posterior,
    Times,
    Values,
    broadcast_batch,
    check_mask,
    check_sequence,
)


class LatentODE(SolvingModule):
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
        solve: Settings of the latent solve, :class:`~neuralode.nn.SolveOptions` with an
            adaptive solver (the solve times are traced); ``"odernn"`` uses the same ones for
            its hidden-state solves. Default: those of :func:`neuralode.odeint`.
        key: PRNG key for the initialisation.

    Example:
        ```python
        import equinox as eqx
        import jax, jax.numpy as jnp
        from neuralode.nn import LatentODE, latent_ode_loss

        model = LatentODE(2, 4, key=jax.random.key(0))
        ts = jnp.linspace(0.0, 1.0, 20)
        xs = jnp.stack([jnp.cos(ts), jnp.sin(ts)], -1)
        elbo, aux = model.elbo(jax.random.key(1), xs, ts, None)
        preds = model.predict(xs, ts, None, jnp.linspace(0.0, 2.0, 40))  # (40, 2)

        # Batched and jitted training loss (one key per sequence is split inside):
        loss_fn = eqx.filter_jit(eqx.filter_value_and_grad(latent_ode_loss, has_aux=True))
        (loss, aux), grads = loss_fn(model, jax.random.key(2), xs[None], ts, None)
        ```
    """

    encoder: eqx.Module
    field: AutonomousMLPField
    decoder: eqx.nn.MLP
    poisson: PoissonProcessLikelihood | None
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    solve: SolveOptions = eqx.field(static=True)

    def __init__(self, data_size: int, latent_size: int = 4, hidden_size: int = 25,
                 field_width: int = 20, decoder_width: int = 20, *,
                 encoder: Literal["rnn", "gru", "odernn"] | eqx.Module = "rnn",
                 decoder_activation: Callable[[Array], Array] = jax.nn.relu, obs_std: float = 0.3,
                 poisson: bool = False, solve: SolveOptions = SolveOptions(), key: PRNGKeyArray):
        who = "LatentODE"
        self.data_size = check_int(who, "data_size", data_size)
        self.latent_size = check_int(who, "latent_size", latent_size)
        hidden_size = check_int(who, "hidden_size", hidden_size)
        field_width = check_int(who, "field_width", field_width)
        decoder_width = check_int(who, "decoder_width", decoder_width)
        self.obs_std = check_real(who, "obs_std", obs_std, positive=True)
        self.solve = check_solve(who, solve, adaptive=True)
        poisson = check_bool(who, "poisson", poisson)
        check_callable(who, "decoder_activation", decoder_activation, "activation(x)")
        k_enc, k_field, k_dec, k_rate = jax.random.split(key, 4)
        if isinstance(encoder, str):
            check_choice(who, "encoder", encoder, ("rnn", "gru", "odernn"))
            if encoder == "odernn":
                encoder = ODERNNEncoder(
                    data_size, latent_size, hidden_size, field_width, solve=solve, key=k_enc
                )
            else:
                encoder = RNNEncoder(data_size, latent_size, hidden_size, cell=encoder, key=k_enc)
        elif not (isinstance(encoder, eqx.Module) and callable(encoder)):
            raise TypeError(
                f"{who}: `encoder` must be 'rnn', 'gru', 'odernn' or an encoder module "
                f"(values, times, mask) -> (mean, logvar), got {encoder!r}."
            )
        self.encoder = encoder
        self.field = AutonomousMLPField(latent_size, field_width, 2, jax.nn.elu, key=k_field)
        self.decoder = eqx.nn.MLP(
            latent_size, data_size, decoder_width, 1, activation=decoder_activation, key=k_dec
        )
        self.poisson = (
            PoissonProcessLikelihood(latent_size, field_width, key=k_rate) if poisson else None
        )


    # -- pieces ----------------------------------------------------------------------------

    def encode(self, values: Values, times: Times, mask: Mask = None) -> Posterior:
        """Mean and log-variance of ``q(z0)``, ``z0`` being the latent state at ``times[0]``."""
        values, times, observed = check_sequence(
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
        return self.solve.odeint(self.field, z0, grid).ys[1:]

    def decode(self, zs: Float[Array, "T latent"]) -> Float[Array, "T D"]:
        """Decoder applied to every latent state."""
        return jax.vmap(self.decoder)(zs)

    # -- objectives -------------------------------------------------------------------------

    def elbo(self, key: PRNGKeyArray, values: Values, times: Times, mask: Mask = None, *,
             encoder_mask: Mask = None) -> tuple[Float[Array, ""], dict[str, Array]]:
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
        check_key("LatentODE.elbo", "key", key)
        values, times, observed = check_sequence(
            "LatentODE.elbo", self.data_size, values, times, mask
        )
        if encoder_mask is None:
            mean, logvar = self.encoder(values, times, observed)
        else:
            read = check_mask("LatentODE.elbo", "encoder_mask", encoder_mask, times.shape[0])
            mean, logvar = self.encoder(values, times, read & observed)
        z0 = self.sample_z0(key, mean, logvar)
        if self.poisson is None:
            sol = self.solve.odeint(self.field, z0, times)
            zs = sol.ys
            poisson_ll = jnp.zeros((), values.dtype)
        else:
            y0 = (z0, jnp.zeros((), z0.dtype))
            sol = self.solve.odeint(self.poisson.augment(self.field), y0, times)
            zs, lam = sol.ys
            poisson_ll = self.poisson.log_likelihood(zs, lam[-1], observed)
        loglik = gaussian_log_likelihood(values, self.decode(zs), observed, self.obs_std)
        kl = diagonal_gaussian_kl(mean, logvar)
        aux = {"log_likelihood": loglik, "poisson": poisson_ll, "kl": kl, "nfe": sol.stats["nfe"]}
        return loglik + poisson_ll - kl, aux

    def predict(self, values: Values, times: Times, mask: Mask, pred_times: Float[ArrayLike, " P"],
                *old_order: Any, key: PRNGKeyArray | None = None) -> Float[Array, "P D"]:
        """Decoded predictions at ``pred_times`` given the observations.

        Interpolation and extrapolation alike: ``pred_times`` must be strictly increasing
        with ``pred_times[0] >= times[0]`` (``z0``'s time); they may lie between, at or
        beyond the observation times.

        Args:
            values, times, mask: The observed sequence.
            pred_times: Times to predict at, shape ``(P,)``.
            key: PRNG key of a posterior sample of ``z0`` (keyword only), or ``None``
                (default) to use the posterior mean (deterministic; what an RMSE evaluation
                usually wants).

        Returns:
            Predicted means of the observations, shape ``(P, D)``.
        """
        if old_order:
            raise TypeError(
                "LatentODE.predict takes the key as a keyword: predict(values, times, mask, "
                "pred_times, key=key), with key=None (the default) for the posterior mean. "
                "It was called with five positional arguments, the old order "
                "predict(key, values, times, mask, pred_times)."
            )
        values, times, observed = check_sequence(
            "LatentODE.predict", self.data_size, values, times, mask
        )
        mean, logvar = self.encoder(values, times, observed)
        if key is None:
            z0 = mean
        else:
            z0 = self.sample_z0(check_key("LatentODE.predict", "key", key), mean, logvar)
        return self.decode(self.trajectory(z0, times[0], pred_times))


def latent_ode_loss(model: LatentODE, key: PRNGKeyArray, values: BatchValues, times: BatchTimes,
                    mask: BatchMask = None, *,
                    encoder_mask: BatchMask = None) -> tuple[Float[Array, ""], dict[str, Array]]:
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
        import equinox as eqx, jax, jax.numpy as jnp, optax
        from neuralode.nn import LatentODE, SolveOptions, latent_ode_loss

        model = LatentODE(2, 4, solve=SolveOptions(rtol=1e-3, atol=1e-4), key=jax.random.key(0))
        optim = optax.adam(1e-2)
        opt_state = optim.init(eqx.filter(model, eqx.is_array))

        @eqx.filter_jit
        def step(model, opt_state, key, values, times, mask):
            (loss, aux), grads = eqx.filter_value_and_grad(latent_ode_loss, has_aux=True)(
                model, key, values, times, mask)
            updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        times = jnp.linspace(0.0, 1.0, 10)
        values = jnp.stack([jnp.cos(times), jnp.sin(times)], -1)[None]  # a batch of one
        model, opt_state, loss = step(model, opt_state, jax.random.key(1), values, times, None)
        ```
    """
    who = "latent_ode_loss"
    check_instance(who, "model", model, LatentODE, "a neuralode.nn.LatentODE")
    check_key(who, "key", key)
    values, times, mask = broadcast_batch(who, values, times, mask)
    keys = jax.random.split(key, values.shape[0])
    if encoder_mask is None:
        elbos, aux = jax.vmap(model.elbo)(keys, values, times, mask)
    else:
        encoder_mask = jnp.asarray(encoder_mask)
        if encoder_mask.ndim == 1:
            encoder_mask = jnp.broadcast_to(encoder_mask, mask.shape)
        encoder_mask = check_array(who, "encoder_mask", encoder_mask, shape=mask.shape)
        elbos, aux = jax.vmap(lambda k, v, t, m, e: model.elbo(k, v, t, m, encoder_mask=e))(
            keys, values, times, mask, encoder_mask
        )
    out = {k: jnp.mean(v) for k, v in aux.items() if k != "nfe"}
    out["nfe"] = jnp.max(aux["nfe"])
    return -jnp.mean(elbos), out


