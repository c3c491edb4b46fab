"""Latent ODE, ODE-RNN encoder, Poisson process likelihood and the RNN baseline.

Mathematical checks first (closed forms, quadrature, masking and direction invariants), then
small training runs that show each model learns, compiled once per input shape.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import neuralode as nde
from neuralode import odeint
from neuralode.datasets import make_spirals, subsample
from neuralode.nn import (
    LatentODE,
    ODERNNEncoder,
    PoissonProcessLikelihood,
    RNNBaseline,
    RNNEncoder,
    SolveOptions,
    diagonal_gaussian_kl,
    gaussian_log_likelihood,
    latent_ode_loss,
    poisson_process_log_likelihood,
    rnn_baseline_loss,
)

# The loose tolerances of latent ODE training (the models' default is odeint's 1e-6).
LOOSE = SolveOptions(rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spirals():
    """16 spirals on a shared grid of 30 points; 15 kept per spiral (irregular, masked)."""
    key_data, key_sub = jax.random.split(jax.random.key(0))
    data = make_spirals(
        key_data, 16, num_points=30, total_points=100, noise_std=0.1, dtype=jnp.float64
    )
    # Irregular subsample: 15 of the 30 points of each spiral, without replacement.
    obs = subsample(key_sub, data.ts, data.ys, 15)
    return {
        "grid": (data.ys, data.ts, obs.mask),  # shared grid + mask
        "irregular": (obs.values, obs.times, jnp.ones(obs.times.shape, bool)),  # compact
    }


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _memoryless(encoder):
    """Make the recurrent update ignore the previous hidden state (depends on the input only)."""
    cell = encoder.cell
    if isinstance(cell, eqx.nn.GRUCell):
        hidden = cell.hidden_size
        w_ih = cell.weight_ih.at[hidden : 2 * hidden].set(0.0)
        bias = cell.bias.at[hidden : 2 * hidden].set(-1e3)  # update gate = 0: h' = candidate
        return eqx.tree_at(
            lambda e: (e.cell.weight_hh, e.cell.bias_n, e.cell.weight_ih, e.cell.bias),
            encoder,
            (jnp.zeros_like(cell.weight_hh), jnp.zeros_like(cell.bias_n), w_ih, bias),
        )
    weight = cell.linear.weight.at[:, -cell.hidden_size :].set(0.0)  # no h -> h' weights
    return eqx.tree_at(lambda e: e.cell.linear.weight, encoder, weight)


def _make_encoder(kind, key):
    if kind == "odernn":
        return ODERNNEncoder(2, 3, hidden_size=6, field_width=8, solve=LOOSE, key=key)
    return RNNEncoder(2, 3, hidden_size=6, cell=kind, key=key)


ENCODERS = ["rnn", "gru", "odernn"]


# ---------------------------------------------------------------------------------------------
# Encoders: masking and direction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENCODERS)
def test_masked_values_do_not_change_encoder(kind):
    encoder = _make_encoder(kind, jax.random.key(1))
    times = jnp.sort(jax.random.uniform(jax.random.key(2), (9,), maxval=3.0))
    values = jax.random.normal(jax.random.key(3), (9, 2))
    mask = jnp.array([1, 0, 1, 1, 0, 0, 1, 0, 1], bool)
    other = jnp.where(mask[:, None], values, 100.0 * jax.random.normal(jax.random.key(4), (9, 2)))
    nan = jnp.where(mask[:, None], values, jnp.nan)

    batch = jnp.stack([values, other, nan, values.at[2].add(1.0)])
    means, logvars = eqx.filter_jit(lambda e, v: jax.vmap(lambda x: e(x, times, mask))(v))(
        encoder, batch
    )
    for i in (1, 2):
        np.testing.assert_array_equal(means[i], means[0])
        np.testing.assert_array_equal(logvars[i], logvars[0])
    # ...while an observed value does matter.
    assert not np.allclose(means[3], means[0])
    if kind == "rnn":  # a float mask means the same as a bool one (same code path after it)
        m4, _ = eqx.filter_jit(lambda e, v: e(v, times, mask.astype(float)))(encoder, values)
        np.testing.assert_array_equal(m4, means[0])


@pytest.mark.parametrize("kind", ENCODERS)
def test_encoder_runs_backwards_in_time(kind):
    # With a memoryless recurrent update the output depends only on the last observation
    # processed. Running backwards, that is the earliest observed point (index 0, or index 1
    # when index 0 is masked); a forward encoder would depend on the last one instead.
    encoder = _memoryless(_make_encoder(kind, jax.random.key(5)))
    times = jnp.linspace(0.0, 2.0, 6)
    values = jax.random.normal(jax.random.key(6), (6, 2))
    enc = eqx.filter_jit(lambda e, v, m: e(v, times, m)[0])
    full = jnp.ones(6, bool)

    base = enc(encoder, values, full)
    np.testing.assert_allclose(enc(encoder, values.at[1:].add(3.0), full), base, atol=1e-12)
    assert not np.allclose(enc(encoder, values.at[0].add(3.0), full), base)

    first_masked = full.at[0].set(False)
    base = enc(encoder, values, first_masked)
    np.testing.assert_allclose(enc(encoder, values.at[2:].add(3.0), first_masked), base, atol=1e-12)
    assert not np.allclose(enc(encoder, values.at[1].add(3.0), first_masked), base)


# ---------------------------------------------------------------------------------------------
# ELBO pieces
# ---------------------------------------------------------------------------------------------


def test_kl_closed_form_matches_quadrature():
    mean = jnp.array([0.3, -1.2, 2.0, 0.0])
    logvar = jnp.array([-0.5, 0.7, -2.0, 0.0])
    # KL of diagonal Gaussians is a sum of 1-D KLs; integrate each numerically.
    total = 0.0
    for m, lv in zip(np.asarray(mean), np.asarray(logvar), strict=True):
        s = math.exp(0.5 * lv)
        x = np.linspace(m - 14 * s, m + 14 * s, 40001)
        logq = -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        logp = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
        total += np.trapezoid(np.exp(logq) * (logq - logp), x)
    np.testing.assert_allclose(diagonal_gaussian_kl(mean, logvar), total, rtol=1e-9)
    assert diagonal_gaussian_kl(jnp.zeros(4), jnp.zeros(4)) == 0.0


def test_elbo_is_loglik_minus_closed_form_kl():
    model = LatentODE(
        2, 3, hidden_size=6, field_width=8, decoder_width=8, solve=LOOSE, key=jax.random.key(7)
    )
    times = jnp.linspace(0.0, 2.0, 8)
    values = jax.random.normal(jax.random.key(8), (8, 2))
    mask = jnp.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    key = jax.random.key(9)

    @eqx.filter_jit
    def pieces(model):
        # Masked points may hold anything, NaN included (second batch entry).
        both = jnp.stack([values, jnp.where(mask[:, None], values, jnp.nan)])
        elbos, auxs = jax.vmap(lambda v: model.elbo(key, v, times, mask))(both)
        mean, logvar = model.encode(values, times, mask)
        z0 = model.sample_z0(key, mean, logvar)
        pred = model.decode(model.trajectory(z0, times[0], times))
        aux = {k: a[0] for k, a in auxs.items()}
        return elbos[0], aux, mean, logvar, pred, elbos[1]

    elbo, aux, mean, logvar, pred, elbo_nan = pieces(model)
    kl = 0.5 * np.sum(np.exp(logvar) + np.asarray(mean) ** 2 - 1.0 - logvar)
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-12)
    assert aux["kl"] > 0
    resid = (np.asarray(values) - np.asarray(pred))[np.asarray(mask)]
    loglik = np.sum(-0.5 * resid**2 / 0.09 - 0.5 * np.log(2 * np.pi * 0.09))
    np.testing.assert_allclose(aux["log_likelihood"], loglik, rtol=1e-6)
    np.testing.assert_allclose(elbo, aux["log_likelihood"] - aux["kl"], rtol=1e-12)
    assert aux["poisson"] == 0.0
    np.testing.assert_allclose(elbo_nan, elbo, rtol=1e-12)


def test_gaussian_log_likelihood_normalised():
    values = jnp.zeros((3, 2))
    np.testing.assert_allclose(
        gaussian_log_likelihood(values, values, None, 1.0), -3 * math.log(2 * math.pi)
    )
    masked = gaussian_log_likelihood(values, values + 1.0, jnp.array([1.0, 0.0, 1.0]), 2.0)
    np.testing.assert_allclose(masked, 4 * (-0.125 - 0.5 * math.log(8 * math.pi)))


# ---------------------------------------------------------------------------------------------
# Poisson process likelihood
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["softplus", "exp"])
def test_poisson_constant_rate_closed_form(link):
    # Rate network with zero output weights: λ(z) = c everywhere. Inside the latent ODE, the
    # events are the unmasked observation times on [times[0], times[-1]].
    c = 1.7
    model = LatentODE(
        2, 3, hidden_size=6, field_width=8, poisson=True, solve=LOOSE, key=jax.random.key(10)
    )
    model = eqx.tree_at(
        lambda m: m.poisson,
        model,
        PoissonProcessLikelihood(3, 8, link=link, key=jax.random.key(11)),
    )
    last = model.poisson.net.layers[-1]
    bias = math.log(c) if link == "exp" else math.log(math.expm1(c))
    model = eqx.tree_at(
        lambda m: (m.poisson.net.layers[-1].weight, m.poisson.net.layers[-1].bias),
        model,
        (jnp.zeros_like(last.weight), jnp.full_like(last.bias, bias)),
    )
    times = jnp.array([0.2, 0.5, 0.9, 1.4, 2.0, 2.7, 3.1])
    mask = jnp.array([0, 1, 1, 0, 1, 1, 0], bool)
    values = jax.random.normal(jax.random.key(12), (7, 2))
    _, aux = eqx.filter_jit(lambda m: m.elbo(jax.random.key(13), values, times, mask))(model)
    expected = 4 * math.log(c) - c * (3.1 - 0.2)
    np.testing.assert_allclose(aux["poisson"], expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("link", ["softplus", "exp"])
def test_poisson_integral_matches_quadrature(link):
    # Known latent trajectory: rotation, z(t) = (cos t, sin t). Rate λ(z) = link(z_0 + 0.5 z_1),
    # so λ(t) = link(cos t + 0.5 sin t); the integral is checked against Gauss-Legendre.
    def field(t, z, args):
        return jnp.stack([-z[1], z[0]])

    net = eqx.nn.Linear(2, "scalar", key=jax.random.key(14))
    net = eqx.tree_at(lambda n: (n.weight, n.bias), net, (jnp.array([[1.0, 0.5]]), jnp.zeros(())))
    process = PoissonProcessLikelihood(2, link=link, net=net)
    times = jnp.array([0.0, 0.3, 1.1, 1.7, 2.6, 3.0, 4.5])
    mask = jnp.array([0, 1, 1, 0, 1, 1, 0], bool)

    @eqx.filter_jit
    def run(process):
        return poisson_process_log_likelihood(
            field, process, jnp.array([1.0, 0.0]), times, mask,
            solve=SolveOptions(rtol=1e-11, atol=1e-11),
        )

    ll, zs = run(process)
    t = np.asarray(times)
    np.testing.assert_allclose(zs, np.stack([np.cos(t), np.sin(t)], -1), atol=1e-8)

    def rate(s):
        a = np.cos(s) + 0.5 * np.sin(s)
        return np.exp(a) if link == "exp" else np.log1p(np.exp(a))

    nodes, weights = np.polynomial.legendre.leggauss(200)
    s = 0.5 * (t[-1] - t[0]) * nodes + 0.5 * (t[-1] + t[0])
    integral = 0.5 * (t[-1] - t[0]) * np.sum(weights * rate(s))
    expected = np.sum(np.log(rate(t[np.asarray(mask)]))) - integral
    np.testing.assert_allclose(ll, expected, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Training (one compile per input shape)
# ---------------------------------------------------------------------------------------------


def _latent_trainer(lr):
    traces = []
    optim = optax.adam(lr)

    @eqx.filter_jit
    def step(model, opt_state, key, values, times, mask):
        traces.append(values.shape)
        grad_fn = eqx.filter_value_and_grad(latent_ode_loss, has_aux=True)
        (loss, aux), grads = grad_fn(model, key, values, times, mask)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    return optim, step, traces


def _best_constant_nll(values, mask, std=0.3):
    """Mean over sequences of the Gaussian NLL of the best per-sequence constant prediction."""
    v, m = np.asarray(values), np.asarray(mask)[..., None]
    centre = (v * m).sum(1, keepdims=True) / m.sum(1, keepdims=True)
    nll = 0.5 * ((v - centre) ** 2 / std**2 + np.log(2 * np.pi * std**2)) * m
    return nll.sum((1, 2)).mean()


@pytest.mark.parametrize(
    "encoder, layout, steps",
    [("rnn", "irregular", 250), ("odernn", "grid", 120)],
)
def test_latent_ode_trains_on_spirals(spirals, encoder, layout, steps):
    values, times, mask = spirals[layout]
    if layout == "grid":  # 20-point shared grid, about 10 observed points per spiral
        values, times, mask = values[:, :20], times[:20], mask[:, :20]
    model = LatentODE(2, 4, encoder=encoder, solve=LOOSE, key=jax.random.key(20))
    optim, step, traces = _latent_trainer(1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    eval_key = jax.random.key(21)

    # The step returns the loss at the model it is given: evaluate with the same compiled step.
    initial = step(model, opt_state, eval_key, values, times, mask)[2]
    for i in range(steps):
        model, opt_state, _ = step(model, opt_state, jax.random.key(100 + i), values, times, mask)
    final = step(model, opt_state, eval_key, values, times, mask)[2]
    assert len(traces) == 1, traces  # new keys and parameters every step, one compile
    assert np.isfinite(final)
    assert final < 0.3 * initial, (float(initial), float(final))
    # Better than the best per-spiral constant (which even a zero-information latent code
    # could reach): the model has learned the within-spiral motion.
    baseline = _best_constant_nll(values, mask)
    assert final < 0.7 * baseline, (float(final), baseline)

    # Interpolation and extrapolation beyond the observed range (pred_times[0] == times[0]).
    v0, t0, m0 = values[0], (times if times.ndim == 1 else times[0]), mask[0]
    pred_times = jnp.linspace(t0[0], t0[-1] + 2.0, 25)

    @eqx.filter_jit
    def predict(model):
        mean = model.predict(v0, t0, m0, pred_times)
        sample = model.predict(v0, t0, m0, pred_times, key=jax.random.key(3))
        z_mean, _ = model.encode(v0, t0, m0)
        direct = model.decode(odeint(model.field, z_mean, pred_times, rtol=1e-3, atol=1e-4).ys)
        return mean, sample, direct

    mean, sample, direct = predict(model)
    assert mean.shape == (25, 2) and np.all(np.isfinite(mean))
    np.testing.assert_allclose(mean, direct, atol=1e-6)
    assert not np.allclose(sample, mean)


def test_rnn_baseline_trains_and_compiles_once_per_shape(spirals):
    values, times, mask = spirals["irregular"]
    model = RNNBaseline(2, key=jax.random.key(30))
    optim = optax.adam(1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    traces = []

    @eqx.filter_jit
    def step(model, opt_state, values, times, mask):
        traces.append(values.shape)
        loss, grads = eqx.filter_value_and_grad(rnn_baseline_loss)(model, values, times, mask)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    initial = step(model, opt_state, values, times, mask)[2]
    for _ in range(200):
        model, opt_state, _ = step(model, opt_state, values, times, mask)
    final = step(model, opt_state, values, times, mask)[2]
    assert final < 0.3 * initial, (float(initial), float(final))
    assert len(traces) == 1
    # A new number of points is a new shape: exactly one more trace; then cached again.
    for _ in range(2):
        step(model, opt_state, values[:, :10], times[:, :10], mask[:, :10])
    assert len(traces) == 2, traces

    @eqx.filter_jit
    def predict(model):
        future = times[0, -1] + jnp.linspace(0.1, 1.0, 5)
        return model.predict(values[0], times[0], mask[0], future)

    preds = predict(model)
    assert preds.shape == (5, 2) and np.all(np.isfinite(preds))
    plain = RNNBaseline(2, time_delta_input=False, key=jax.random.key(31))
    assert plain.cell.input_size == 2 and model.cell.input_size == 3


def test_encoder_mask_trains_extrapolation():
    """``encoder_mask``: the encoder reads only the leading points, the likelihood scores all."""
    model = LatentODE(
        2, 3, hidden_size=6, field_width=6, decoder_width=6, solve=LOOSE, key=jax.random.key(3)
    )
    times = jnp.linspace(0.0, 2.0, 8)
    values = jnp.stack([jnp.cos(times), jnp.sin(times)], -1)
    head = jnp.arange(8) < 5
    key = jax.random.key(4)
    full, aux_full = model.elbo(key, values, times, None, encoder_mask=head)
    part, aux_part = model.elbo(key, values, times, head)
    # Same points read by the encoder -> same posterior (same KL, same z0 sample) ...
    np.testing.assert_allclose(aux_full["kl"], aux_part["kl"], rtol=1e-12)
    # ... and the future points enter the likelihood: changing them moves it ...
    moved = values.at[5:].add(1.0)
    _, aux_moved = model.elbo(key, moved, times, None, encoder_mask=head)
    np.testing.assert_allclose(aux_moved["kl"], aux_full["kl"], rtol=1e-12)
    assert abs(float(aux_moved["log_likelihood"] - aux_full["log_likelihood"])) > 1.0
    # ... by exactly their Gaussian log-likelihood change (the trajectory is unchanged).
    preds = model.decode(
        model.trajectory(
            model.sample_z0(key, *model.encode(values, times, head)), times[0], times
        )
    )
    expect = gaussian_log_likelihood(moved, preds, None, model.obs_std) - gaussian_log_likelihood(
        values, preds, None, model.obs_std
    )
    np.testing.assert_allclose(
        aux_moved["log_likelihood"] - aux_full["log_likelihood"], expect, rtol=1e-6
    )
    # The default (encoder_mask=None) reads every point: the posterior differs.
    _, aux_default = model.elbo(key, values, times, None)
    assert abs(float(aux_default["kl"] - aux_full["kl"])) > 1e-6
    # Batched loss: a (T,) encoder mask broadcasts and matches the per-sequence ELBO.
    loss, _ = latent_ode_loss(model, key, values[None], times, None, encoder_mask=head)
    one, _ = model.elbo(jax.random.split(key, 1)[0], values, times, None, encoder_mask=head)
    np.testing.assert_allclose(loss, -one, rtol=1e-10)
    with pytest.raises(ValueError, match="`encoder_mask`"):
        model.elbo(key, values, times, None, encoder_mask=head[:4])
    with pytest.raises(ValueError, match="`encoder_mask`"):
        latent_ode_loss(model, key, values[None], times, None, encoder_mask=jnp.ones((2, 8)))


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------


def test_odernn_encoder_honours_throw():
    """A failed between-observation solve raises with throw=True and gives NaN with False."""
    times = jnp.array([0.0, 5.0, 10.0])
    values = jnp.ones((3, 2))
    one_step = LOOSE.replace(max_steps=1)
    kw = dict(hidden_size=4, field_width=4, key=jax.random.key(0))
    quiet = ODERNNEncoder(2, 3, solve=one_step.replace(throw=False), **kw)
    mean, logvar = quiet(values, times, None)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(logvar))
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(ODERNNEncoder(2, 3, solve=one_step, **kw)(values, times, None))
    model = LatentODE(2, 3, 4, 4, 4, encoder="odernn", solve=one_step.replace(throw=False),
                      key=jax.random.key(1))
    assert model.encoder.solve.throw is False  # the ODE-RNN shares the latent solve settings
    assert model.with_solve(rtol=1e-5).encoder.solve.rtol == 1e-3  # ... but keeps its own
    with pytest.raises(ValueError, match="adaptive solver"):
        ODERNNEncoder(2, 3, solve=SolveOptions(solver=nde.RK4(), dt0=0.1), **kw)


def test_clear_errors():
    model = LatentODE(
        2, 3, hidden_size=4, field_width=4, decoder_width=4, solve=LOOSE, key=jax.random.key(0)
    )
    key, times, values = jax.random.key(1), jnp.linspace(0, 1, 5), jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="`values`"):
        model.elbo(key, jnp.zeros((5, 3)), times, None)
    with pytest.raises(ValueError, match="`times`"):
        model.elbo(key, values, times[:4], None)
    with pytest.raises(ValueError, match="`mask`"):
        model.elbo(key, values, times, jnp.ones(4, bool))
    with pytest.raises(TypeError, match="`key`"):
        model.elbo(None, values, times, None)
    with pytest.raises(TypeError, match="floating point"):
        model.elbo(key, jnp.zeros((5, 2), jnp.int32), times, None)
    with pytest.raises(ValueError, match="`encoder`"):
        LatentODE(2, encoder="lstm", key=key)
    with pytest.raises(ValueError, match="`obs_std`"):
        LatentODE(2, obs_std=0.0, key=key)
    with pytest.raises(TypeError, match="`decoder_activation`"):
        LatentODE(2, decoder_activation="elu", key=key)
    # predict takes the key as a keyword; the old order (key first) is refused clearly
    preds = model.predict(values, times, None, times)
    assert preds.shape == (5, 2)
    with pytest.raises(TypeError, match="key as a keyword"):
        model.predict(None, values, times, None, times)
    assert LatentODE(2, decoder_activation=jax.nn.elu, key=key).decoder.activation is jax.nn.elu
    with pytest.raises(ValueError, match="`link`"):
        PoissonProcessLikelihood(2, link="relu", key=key)
    with pytest.raises(ValueError, match="requested times"):
        model.trajectory(jnp.zeros(3), 1.0, jnp.array([0.5, 2.0]))
    # Under jit the same mistake is a runtime error, not a silent shift of z0's time.
    traj = eqx.filter_jit(model.trajectory)
    with pytest.raises(Exception, match="requested times must be >= t0"):
        jax.block_until_ready(traj(jnp.zeros(3), 1.0, jnp.array([0.5, 2.0])))
    assert traj(jnp.zeros(3), 1.0, jnp.array([1.0, 2.0])).shape == (2, 3)
    with pytest.raises(ValueError, match="`values`"):
        latent_ode_loss(model, key, values, times, None)
    with pytest.raises(ValueError, match=r"latent_ode_loss: `values` holds no sequences"):
        latent_ode_loss(model, key, jnp.zeros((0, 5, 2)), times, None)
    rnn = RNNBaseline(2, key=key)
    with pytest.raises(ValueError, match=r"rnn_baseline_loss: `values` holds no sequences"):
        rnn_baseline_loss(rnn, jnp.zeros((0, 5, 2)), times)


# ---------------------------------------------------------------------------------------------
# Slow checks (pytest -m slow)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["rnn", "odernn"])
def test_elbo_gradient_matches_finite_differences(encoder):
    # Gradient of the batched loss through encoder (ODE-RNN: odeint inside scan inside vmap),
    # latent solve and Poisson integral, against a central difference along a random direction.
    times = jnp.sort(jax.random.uniform(jax.random.key(0), (2, 8), maxval=3.0), axis=1)
    values = jax.random.normal(jax.random.key(1), (2, 8, 2))
    mask = jnp.array([[1, 0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1, 0, 1]], bool)
    model = LatentODE(
        2,
        3,
        5,
        6,
        6,
        encoder=encoder,
        poisson=True,
        solve=SolveOptions(rtol=1e-11, atol=1e-11, adjoint=nde.BacksolveAdjoint()),
        key=jax.random.key(2),
    )
    params, static = eqx.partition(model, eqx.is_array)
    flat, unravel = ravel_pytree(params)
    key = jax.random.key(3)

    @jax.jit
    def loss(p):
        return latent_ode_loss(eqx.combine(unravel(p), static), key, values, times, mask)[0]

    direction = jax.random.normal(jax.random.key(5), flat.shape)
    grad = jax.jit(jax.grad(loss))(flat)
    h = 1e-5
    fd = (loss(flat + h * direction) - loss(flat - h * direction)) / (2 * h)
    np.testing.assert_allclose(grad @ direction, fd, rtol=1e-5)


@pytest.mark.slow
def test_odernn_masked_points_only_split_the_evolution():
    # The hidden ODE is autonomous, so evolving t2 -> t1 -> t0 through a masked t1 equals
    # evolving t2 -> t0 directly: inserting masked points does not change q(z0).
    encoder = ODERNNEncoder(
        2, 3, hidden_size=6, field_width=8, solve=SolveOptions(rtol=1e-10, atol=1e-10),
        key=jax.random.key(1),
    )
    times = jnp.array([0.0, 0.4, 1.0, 1.7, 2.5])
    values = jax.random.normal(jax.random.key(2), (5, 2))
    keep = np.array([0, 2, 4])
    full = encoder(values, times, jnp.array([1, 0, 1, 0, 1], bool))
    short = encoder(values[keep], times[keep], None)
    np.testing.assert_allclose(full[0], short[0], atol=1e-8)
    np.testing.assert_allclose(full[1], short[1], atol=1e-8)
