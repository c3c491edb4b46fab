"""NeuralODE, Augmented and the RNODE regularisers of neuralode.nn."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import fd_check, simpson
from jax.flatten_util import ravel_pytree

import neuralode as nde
from neuralode import nn

TIGHT = nn.SolveOptions(rtol=1e-8, atol=1e-8)


@pytest.fixture(scope="module")
def field():
    return nn.MLPField(2, width=6, depth=1, key=jax.random.key(0))


@pytest.fixture(scope="module")
def y0():
    return jnp.array([0.6, -0.4])


@pytest.fixture(scope="module")
def model(field):
    return nn.NeuralODE(field, t0=0.2, t1=1.3, solve=TIGHT)


@eqx.filter_jit
def _solve_both_ways(model, y0, ts):
    y1, stats = model(y0, return_stats=True)
    kw = dict(rtol=model.solve.rtol, atol=model.solve.atol)
    direct = nde.odeint(model.field, y0, jnp.array([model.t0, model.t1]), **kw)
    return y1, stats, model.trajectory(y0, ts), direct, nde.odeint(model.field, y0, ts, **kw)


def test_matches_odeint(model, y0):
    ts = jnp.linspace(0.2, 1.3, 5)
    y1, stats, traj, direct, direct_ts = _solve_both_ways(model, y0, ts)
    np.testing.assert_allclose(y1, direct.ys[-1], rtol=1e-13, atol=1e-13)
    assert int(stats["nfe"]) == int(direct.stats["nfe"]) > 0
    np.testing.assert_allclose(traj.ys, direct_ts.ys, rtol=1e-13, atol=1e-13)
    assert traj.ys.shape == (5, 2)


def test_compiles_once_per_shape_and_vmaps(model, y0):
    traces = []

    @eqx.filter_jit
    def run(model, y):
        traces.append(y.shape)
        return jax.vmap(model)(y)

    batches = [jax.random.normal(jax.random.key(i), (3, 2)) for i in range(3)]
    outs = [run(model, b) for b in batches]
    assert len(traces) == 1 and run._cached._cache_size() == 1
    run(model, jnp.ones((4, 2)))
    assert len(traces) == 2
    # The vmapped batch (own step sizes per sample) agrees with single solves.
    ts = jnp.linspace(0.2, 1.3, 5)
    for i in range(3):
        single = _solve_both_ways(model, batches[0][i], ts)[0]
        np.testing.assert_allclose(outs[0][i], single, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("mode", ["backsolve", "checkpoint", "rk4"])
def test_gradients_match_finite_differences(mode, y0):
    """Gradients of a loss on y(t1) *and* the RNODE regularisers, in float64."""
    small = nn.MLPField(2, width=3, depth=1, key=jax.random.key(1))
    model = nn.NeuralODE(small, solve=nn.SolveOptions(rtol=1e-10, atol=1e-10))  # checkpoint
    if mode == "backsolve":  # Tsit5 + the paper's continuous adjoint
        model = model.with_solve(adjoint=nde.BacksolveAdjoint())
    elif mode == "rk4":  # RK-Net: plain autodiff through the fixed steps, exact up to rounding.
        model = model.with_solve(solver=nde.RK4(), dt0=0.1)
    theta, unravel = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
    key = jax.random.key(2)

    def loss(theta):
        m = eqx.combine(unravel(theta), static)
        y1, regs = m(y0, regularise=True, key=key)
        return jnp.sum(y1**2) + regs["kinetic"] + regs["jacobian"]

    fd_check(loss, theta, jax.random.key(3), rtol=1e-7 if mode == "rk4" else 1e-5)


def test_regularisers_equal_quadrature(field, y0):
    key = jax.random.key(3)
    model = nn.NeuralODE(field, t0=0.0, t1=1.5, solve=TIGHT.replace(rtol=1e-11, atol=1e-11))
    ts = jnp.linspace(0.0, 1.5, 201)
    eps = nn.hutchinson_noise(key, y0)

    @eqx.filter_jit
    def run(model):
        y1, regs, stats = model(y0, regularise=True, key=key, return_stats=True)
        sol = model.trajectory(y0, ts)

        def integrands(t, y):
            f, vjp = jax.vjp(lambda yy: model.field(t, yy, None), y)
            return jnp.sum(f**2), jnp.sum(vjp(eps)[0] ** 2)

        return y1, regs, stats, sol.ys, jax.vmap(integrands)(ts, sol.ys)

    y1, regs, stats, ys, (kin, jac) = run(model)
    np.testing.assert_allclose(y1, ys[-1], rtol=1e-9)
    assert int(stats["nfe"]) > 0
    np.testing.assert_allclose(regs["kinetic"], simpson(kin, ts), rtol=1e-7)
    np.testing.assert_allclose(regs["jacobian"], simpson(jac, ts), rtol=1e-7)
    assert float(regs["kinetic"]) > 0 and float(regs["jacobian"]) > 0


def _train(model, steps=200, lr=3e-2):
    xs, targets = jnp.array([[-1.0], [1.0]]), jnp.array([[1.0], [-1.0]])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(lr)

    def loss_fn(p):
        return jnp.mean((jax.vmap(eqx.combine(p, static))(xs) - targets) ** 2)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            grads = jax.grad(loss_fn)(p)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return loss_fn(p), eqx.combine(p, static)

    return train(params)


def test_augmented_fits_sign_flip_plain_cannot():
    k1, k2 = jax.random.split(jax.random.key(5))
    # Bosh3 and the checkpointed adjoint keep the compilation small.
    solve = nn.SolveOptions(solver=nde.Bosh3(), rtol=1e-4, atol=1e-4)
    plain = nn.NeuralODE(nn.MLPField(1, 16, 1, key=k1), solve=solve)
    augmented = nn.Augmented(nn.NeuralODE(nn.MLPField(2, 16, 1, key=k2), solve=solve), 1)
    plain_loss, _ = _train(plain)
    aug_loss, trained = _train(augmented)
    # A 1-D flow preserves order, so y(-1) <= y(1): the loss is at least 1 (both at 0).
    assert float(plain_loss) > 0.95
    assert float(aug_loss) < 1e-2
    out = jax.vmap(trained)(jnp.array([[-1.0], [1.0]]))
    assert out.shape == (2, 1) and float(out[0, 0]) > 0.8 and float(out[1, 0]) < -0.8


def test_augmented_pads_and_projects():
    node = nn.NeuralODE(nn.MLPField(3, 4, 1, key=jax.random.key(6)))
    model = nn.Augmented(node, augment_dim=2)
    np.testing.assert_array_equal(model.augment(jnp.array([1.0])), [1.0, 0.0, 0.0])
    images = nn.Augmented(nn.NeuralODE(nn.ConvField(3, groups=1, key=jax.random.key(7))), 1)
    assert images.augment(jnp.ones((2, 4, 4))).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="augment_dim"):
        nn.Augmented(node, augment_dim=0)
    with pytest.raises(TypeError, match="node"):
        nn.Augmented(nn.MLPField(3, 4, 1, key=jax.random.key(6)), augment_dim=1)
    # with_solve reaches the wrapped NeuralODE
    assert model.with_solve(rtol=1e-3).node.solve.rtol == 1e-3 and node.solve.rtol == 1e-6


def test_validation_errors(field):
    # One rule: TypeError for a wrong type, ValueError for a wrong value.
    with pytest.raises(ValueError, match="dt0"):
        nn.SolveOptions(solver=nde.RK4())
    with pytest.raises(ValueError, match="t1"):
        nn.NeuralODE(field, t0=1.0, t1=1.0)
    with pytest.raises(TypeError, match="solver"):
        nn.SolveOptions(solver="tsit5")
    with pytest.raises(TypeError, match=r"pass an instance, solver=Tsit5\(\)"):
        nn.SolveOptions(solver=nde.Tsit5)
    with pytest.raises(ValueError, match="rtol"):
        nn.SolveOptions(rtol=0.0)
    with pytest.raises(TypeError, match="adjoint"):
        nn.SolveOptions(adjoint="backsolve")
    with pytest.raises(TypeError, match="max_steps"):
        nn.SolveOptions(max_steps=10.0)
    with pytest.raises(TypeError, match="throw"):
        nn.SolveOptions(throw=1)
    with pytest.raises(TypeError, match="solve"):
        nn.NeuralODE(field, solve=dict(rtol=1e-3))
    with pytest.raises(TypeError, match="unknown option.*'rtl'"):
        nn.NeuralODE(field).with_solve(rtl=1e-3)
    with pytest.raises(TypeError, match="field"):
        nn.NeuralODE(None)
    with pytest.raises(ValueError, match="noise"):
        nn.NeuralODE(field, noise="uniform")
    with pytest.raises(ValueError, match="key"):
        nn.NeuralODE(field)(jnp.ones(2), regularise=True)


def test_solve_options_defaults_are_odeints_and_with_solve_copies(field, y0):
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(nde.odeint).parameters.items()}
    opts = nn.SolveOptions()
    for name in ("solver", "controller", "rtol", "atol", "adjoint", "max_steps", "dt0", "throw"):
        assert getattr(opts, name) == defaults[name], name
    model = nn.NeuralODE(field)
    assert model.solve == opts and hash(model.solve) == hash(nn.SolveOptions())
    loose = model.with_solve(rtol=1e-3, atol=1e-3)
    assert loose.solve == opts.replace(rtol=1e-3, atol=1e-3) and model.solve == opts
    assert loose.field is model.field  # the same parameters
    _, stats_tight = model(y0, return_stats=True)
    _, stats_loose = loose(y0, return_stats=True)
    assert int(stats_loose["nfe"]) < int(stats_tight["nfe"])
    assert isinstance(model.solve.rtol, float) and nn.SolveOptions(rtol=1).rtol == 1.0


def test_odeint_fixed_step_constant_ts_under_jit():
    @jax.jit
    def solve(y0):
        ts = np.array([0.0, 1.0])
        return nde.odeint(lambda t, y, a: -y, y0, ts, solver=nde.RK4(), dt0=0.1).ys[-1]

    np.testing.assert_allclose(solve(jnp.ones(2)), np.exp(-1.0), rtol=1e-6)
