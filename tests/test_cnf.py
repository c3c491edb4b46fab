"""Continuous normalizing flows, planar flows and CNF regularisers of neuralode.nn."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import simpson
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import expm

import neuralode as nde
from neuralode import nn

TIGHT = nn.SolveOptions(rtol=1e-8, atol=1e-8)

# A 2-D grid for normalisation checks: the Riemann sum of a smooth, rapidly decaying density
# on a uniform grid converges much faster than the 1% the tests ask for.
_L, _N = 7.0, 71
_AXIS = jnp.linspace(-_L, _L, _N)
_GRID = jnp.stack(jnp.meshgrid(_AXIS, _AXIS, indexing="ij"), axis=-1).reshape(-1, 2)
_CELL = float(_AXIS[1] - _AXIS[0]) ** 2


def _mass(logp):
    return float(jnp.sum(jnp.exp(logp)) * _CELL)


@eqx.filter_jit
def _log_prob(cnf, x, key=None):
    return cnf.log_prob(x, key=key)


@pytest.fixture(scope="module")
def field():
    return nn.MLPField(2, width=8, depth=1, key=jax.random.key(0))


@pytest.fixture(scope="module")
def cnf(field):
    return nn.CNF(field, dim=2, trace="exact", solve=TIGHT)


def test_exact_trace_density_normalised(cnf):
    logp = _log_prob(cnf, _GRID)
    assert logp.shape == (_GRID.shape[0],)
    assert abs(_mass(logp) - 1.0) < 0.01
    # The flow is not the identity: the density differs from the base density.
    assert float(jnp.max(jnp.abs(logp - jax.vmap(cnf.base.log_prob)(_GRID)))) > 0.05


class Linear(eqx.Module):
    a: jax.Array

    def __call__(self, t, z, args):
        return self.a @ z


def test_linear_field_closed_form():
    a = jnp.array([[0.3, -0.8], [0.5, -0.1]])
    t0, t1 = 0.3, 1.1
    cnf = nn.CNF(
        Linear(a), base=nn.StandardNormal(2, scale=0.7), t0=t0, t1=t1,
        solve=TIGHT.replace(rtol=1e-10, atol=1e-10),
    )
    x = jnp.array([[0.4, -1.2], [2.0, 0.5]])

    @eqx.filter_jit
    def run(cnf):
        key = jax.random.key(1)
        return cnf.log_prob(x), cnf.sample_and_log_prob(key, 3), cnf.sample(key, 3), cnf.forward(x)

    logp, (samples, logq), samples_again, z1_of_x = run(cnf)
    T = t1 - t0
    flow = expm(a * T)  # data at t0 -> base at t1
    base = cnf.base.log_prob
    expected = jax.vmap(lambda xi: base(flow @ xi))(x) + T * jnp.trace(a)
    np.testing.assert_allclose(logp, expected, rtol=1e-8)
    # Sampling integrates backwards from base samples.
    z1 = cnf.base.sample(jax.random.split(jax.random.key(1))[0], 3)
    np.testing.assert_allclose(samples, z1 @ expm(-a * T).T, rtol=1e-8)
    np.testing.assert_allclose(logq, jax.vmap(base)(z1) + T * jnp.trace(a), rtol=1e-8)
    np.testing.assert_allclose(samples_again, samples, rtol=1e-8)
    np.testing.assert_allclose(z1_of_x, x @ flow.T, rtol=1e-8)


def test_hutchinson_unbiased(cnf):
    x = jnp.array([0.3, -0.5])
    keys = jax.random.split(jax.random.key(2), 400)
    exact = float(_log_prob(cnf, x))

    @eqx.filter_jit
    def estimates(cnfs):
        return [jax.vmap(lambda k, c=c: c.log_prob(x, key=k))(keys) for c in cnfs]

    kinds = ("gaussian", "rademacher")
    cnfs = [
        nn.CNF(cnf.field, dim=2, trace="hutchinson", noise=n, solve=TIGHT) for n in kinds
    ]
    for kind, est in zip(kinds, estimates(cnfs), strict=True):
        mean, se = float(jnp.mean(est)), float(jnp.std(est) / np.sqrt(est.shape[0]))
        assert se > 0, kind
        assert abs(mean - exact) < 3 * se, (kind, mean, exact, se)


def test_sample_then_log_prob_consistent(cnf):
    @eqx.filter_jit
    def run(cnf):
        x, logq = cnf.sample_and_log_prob(jax.random.key(3), 6)
        return x, logq, cnf.log_prob(x)

    x, logq, logp = run(cnf)
    assert x.shape == (6, 2) and logq.shape == (6,)
    np.testing.assert_allclose(logp, logq, rtol=1e-6, atol=1e-6)


def test_planar_cnf_normalised():
    cnf = nn.planar_cnf(2, 4, hyper_width=8, key=jax.random.key(4), solve=TIGHT)
    assert cnf.trace == "exact"

    @eqx.filter_jit
    def run(cnf):
        return cnf.log_prob(_GRID)

    logp_grid = run(cnf)
    assert abs(_mass(logp_grid) - 1.0) < 0.01
    assert float(jnp.max(jnp.abs(logp_grid - jax.vmap(cnf.base.log_prob)(_GRID)))) > 0.05


def test_planar_flow():
    flow = nn.PlanarFlow(2, 4, init="random", init_scale=0.8, key=jax.random.key(6))
    flow = eqx.tree_at(lambda f: f.b, flow, jnp.array([0.3, -0.5, 0.2, 0.0]))
    u_hat = flow.u_hat()
    assert bool(jnp.all(jnp.sum(u_hat * flow.w, axis=1) > -1))

    @eqx.filter_jit
    def run(flow):
        z = flow.base.sample(jax.random.key(7), 5)
        x, logq = flow.sample_and_log_prob(jax.random.key(7), 5)
        _, logdet = flow.transform(z)
        jac_logdet = jax.vmap(
            lambda zi: jnp.linalg.slogdet(jax.jacfwd(lambda v: flow.transform(v)[0])(zi))[1]
        )(z)
        return (
            z,
            x,
            logq,
            logdet,
            jac_logdet,
            flow.inverse(x),
            flow.log_prob(x),
            flow.log_prob(_GRID),
        )

    z, x, logq, logdet, jac_logdet, z_back, logp, logp_grid = run(flow)
    np.testing.assert_allclose(logdet, jac_logdet, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(z_back, z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logp, logq, rtol=1e-10, atol=1e-12)
    # A real normalisation check in data space (log_prob inverts the flow).
    assert abs(_mass(logp_grid) - 1.0) < 0.01
    assert float(jnp.max(jnp.abs(logp_grid - jax.vmap(flow.base.log_prob)(_GRID)))) > 0.05

    # Gradients through the root-finding inverse (implicit Newton step) are exact.
    theta, unravel = ravel_pytree((flow.u, flow.w, flow.b))

    def loss(theta):
        u, w, b = unravel(theta)
        f = eqx.tree_at(lambda f: (f.u, f.w, f.b), flow, (u, w, b))
        return jnp.sum(f.log_prob(x))

    grad = jax.jit(jax.grad(loss))(theta)
    loss = jax.jit(loss)
    v = jax.random.normal(jax.random.key(8), theta.shape)
    h = 1e-6
    fd = (loss(theta + h * v) - loss(theta - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.dot(grad, v), fd, rtol=1e-6)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_regularisers_equal_quadrature(field, trace):
    key = jax.random.key(9)
    t0, t1 = 0.0, 1.2
    cnf = nn.CNF(
        field, dim=2, trace=trace, t0=t0, t1=t1, solve=TIGHT.replace(rtol=1e-11, atol=1e-11)
    )
    x = jnp.array([0.7, -0.3])
    ts = jnp.linspace(t0, t1, 201)
    eps = nn.hutchinson_noise(key, x)

    @eqx.filter_jit
    def run(cnf):
        logp_reg, regs = cnf.log_prob(x, key=key, regularise=True)
        zs = nde.odeint(cnf.field, x, ts, rtol=1e-11, atol=1e-11).ys

        def integrands(t, z):
            jac = jax.jacfwd(lambda zz: cnf.field(t, zz, None))(z)
            frob = jnp.sum(jac**2) if trace == "exact" else jnp.sum((eps @ jac) ** 2)
            return jnp.sum(cnf.field(t, z, None) ** 2), frob

        return logp_reg, regs, jax.vmap(integrands)(ts, zs)

    logp_reg, regs, (kin, jac) = run(cnf)
    if trace == "exact":  # the extra states do not change the log density
        np.testing.assert_allclose(logp_reg, _log_prob(cnf, x), rtol=1e-8)
    np.testing.assert_allclose(regs["kinetic"], simpson(kin, ts), rtol=1e-7)
    np.testing.assert_allclose(regs["jacobian"], simpson(jac, ts), rtol=1e-7)


def test_regulariser_gradients_flow_under_both_adjoints():
    model = nn.ffjord_cnf(2, width=6, depth=1, key=jax.random.key(10))
    assert model.trace == "hutchinson"
    x = jnp.array([0.5, -0.2])
    key = jax.random.key(11)
    grads = []
    for adjoint in (nde.BacksolveAdjoint(), nde.CheckpointAdjoint()):
        # Bosh3 keeps the compilation small; the extra states are solver-agnostic.
        solve = nn.SolveOptions(solver=nde.Bosh3(), adjoint=adjoint, rtol=1e-10, atol=1e-10)
        cnf = nn.CNF(model.field, dim=2, trace="hutchinson", solve=solve)

        @eqx.filter_jit
        @eqx.filter_grad
        def grad(cnf):
            logp, regs = cnf.log_prob(x, key=key, regularise=True)
            return -jnp.mean(logp) + jnp.mean(regs["kinetic"] + regs["jacobian"])

        flat, _ = ravel_pytree(eqx.filter(grad(cnf), eqx.is_inexact_array))
        assert bool(jnp.all(jnp.isfinite(flat))) and float(jnp.linalg.norm(flat)) > 0
        grads.append(flat)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_validation_errors(field, cnf):
    hutch = nn.CNF(field, dim=2, trace="hutchinson")
    with pytest.raises(ValueError, match="key"):
        hutch.log_prob(jnp.zeros(2))
    with pytest.raises(ValueError, match="dimension"):
        cnf.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="trace"):
        nn.CNF(field, dim=2, trace="approximate")
    with pytest.raises(ValueError, match="dim"):
        nn.CNF(field)
    with pytest.raises(TypeError, match="base"):
        nn.CNF(field, base=object())
    with pytest.raises(ValueError, match="scale"):
        nn.StandardNormal(2, scale=-1.0)
    with pytest.raises(ValueError, match="`n`"):
        cnf.sample(jax.random.key(0), 0)
    with pytest.raises(TypeError, match="`n`"):
        cnf.sample(jax.random.key(0), 2.0)
    with pytest.raises(TypeError, match="solve"):
        nn.CNF(field, dim=2, solve=nde.Tsit5())
    # with_solve keeps the field, base and trace
    loose = cnf.with_solve(rtol=1e-3)
    assert loose.solve.rtol == 1e-3 and loose.field is cnf.field and loose.trace == cnf.trace


def test_planar_flow_default_init_is_volume_preserving():
    """Every layer starts with wᵀû = 0: det ∂f_k/∂z = 1 everywhere, so log q = log p_base ∘
    f⁻¹; the plain random draw instead contracts every layer (wᵀû < 0)."""
    key = jax.random.key(12)
    flow = nn.PlanarFlow(2, 64, key=key)
    random = nn.PlanarFlow(2, 64, init="random", key=key)
    np.testing.assert_array_equal(flow.w, random.w)  # the same draw, u shifted along w
    np.testing.assert_allclose(jnp.sum(flow.u_hat() * flow.w, axis=1), 0.0, atol=1e-12)
    assert float(jnp.mean(jnp.sum(random.u_hat() * random.w, axis=1))) < -0.1
    z = flow.base.sample(jax.random.key(13), 32)
    x, logdet = flow.transform(z)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-12)
    np.testing.assert_allclose(flow.log_prob(x), flow.base.log_prob(z), rtol=1e-9, atol=1e-9)
    # 64 random layers make the inverse ill-conditioned: far lower densities in data space
    data = nde.datasets.sample_circles(jax.random.key(14), 256, dtype=jnp.float64)
    assert float(jnp.mean(flow.log_prob(data))) > float(jnp.mean(random.log_prob(data))) + 5
    with pytest.raises(ValueError, match="init"):
        nn.PlanarFlow(2, 4, init="zeros", key=key)
