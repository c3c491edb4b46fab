"""Gradients of odeint: every gradient mode against closed forms, finite differences and
each other; memory behaviour; backward statistics; failure handling."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralode as nde

MODES = {
    "backsolve": nde.BacksolveAdjoint(),
    "backsolve_fullnorm": nde.BacksolveAdjoint(seminorm=False),
    "interpolated": nde.InterpolatedAdjoint(),
    "checkpoint": nde.CheckpointAdjoint(),
    "forward": nde.ForwardMode(),
}

# --------------------------------------------------------------------------------------
# y' = a sin(t) y: y(t) = y0 exp(a (cos t0 - cos t)); weighted squared loss at 5 times.

W = jnp.array([0.3, 1.0, -0.5, 2.0, 0.7])


def _sin_field(t, y, a):
    return a * jnp.sin(t) * y


def _closed_loss(y0, a, ts):
    ys = y0 * jnp.exp(a * (jnp.cos(ts[0]) - jnp.cos(ts)))
    return jnp.sum(W * ys**2)


@pytest.fixture(scope="module", params=list(MODES))
def sin_grad(request):
    adjoint = MODES[request.param]

    def loss(y0, a, ts):
        sol = nde.odeint(_sin_field, y0, ts, a, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        return jnp.sum(W * sol.ys**2)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize(
    "ts",
    [[0.1, 0.7, 1.5, 2.2, 3.0], [3.0, 2.2, 1.5, 0.7, 0.1], [-1.0, -0.2, 0.4, 1.9, 2.5]],
    ids=["increasing", "decreasing", "through-zero"],
)
def test_closed_form_gradients(sin_grad, ts):
    ts = jnp.asarray(ts)
    got = sin_grad(1.3, 0.8, ts)
    want = jax.grad(_closed_loss, argnums=(0, 1, 2))(1.3, 0.8, ts)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=0)
    # every one of the 5 time gradients is non-trivial, so the check has teeth
    assert np.all(np.abs(np.asarray(want[2])) > 1e-3)


# --------------------------------------------------------------------------------------
# Equinox MLP vector field: finite differences and agreement between modes.


class MLPField(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key, width=8):
        self.mlp = eqx.nn.MLP(3, 2, width, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(jnp.concatenate([y, jnp.atleast_1d(t)]))


@pytest.fixture(scope="module")
def mlp_problem():
    field = MLPField(jax.random.PRNGKey(0))
    field = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, field)
    y0 = jnp.array([0.5, -0.3])
    ts = jnp.array([0.0, 0.5, 1.0])
    return field, y0, ts


def _mlp_loss(field, y0, ts, adjoint, tol):
    sol = nde.odeint(field, y0, ts, rtol=tol, atol=tol, adjoint=adjoint)
    return jnp.sum(sol.ys[1:] ** 2) + jnp.sum(jnp.sin(sol.ys[-1]))


_mlp_grad = eqx.filter_jit(eqx.filter_grad(_mlp_loss))
_mlp_value = eqx.filter_jit(_mlp_loss)


@pytest.mark.parametrize("mode", ["backsolve", "interpolated", "checkpoint"])
def test_mlp_parameter_gradients_match_finite_differences(mlp_problem, mode):
    field, y0, ts = mlp_problem
    adjoint = MODES[mode]
    grads = _mlp_grad(field, y0, ts, adjoint, jnp.asarray(1e-12))
    params, static = eqx.partition(field, eqx.is_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    g_flat, _ = jax.flatten_util.ravel_pytree(eqx.filter(grads, eqx.is_array))
    rng = np.random.default_rng(0)
    eps = 1e-4
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=flat.shape))
        plus = eqx.combine(unravel(flat + eps * v), static)
        minus = eqx.combine(unravel(flat - eps * v), static)
        tol = jnp.asarray(1e-12)
        fd = (_mlp_value(plus, y0, ts, nde.CheckpointAdjoint(), tol)
              - _mlp_value(minus, y0, ts, nde.CheckpointAdjoint(), tol)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.dot(g_flat, v)), float(fd), rtol=1e-5)


def test_modes_agree_with_each_other(mlp_problem):
    field, y0, ts = mlp_problem
    flat = {}
    for name, adjoint in MODES.items():
        g = _mlp_grad(field, y0, ts, adjoint, jnp.asarray(1e-7))
        flat[name] = jax.flatten_util.ravel_pytree(eqx.filter(g, eqx.is_array))[0]
    ref = flat["checkpoint"]
    for name, g in flat.items():
        rel = float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref))
        assert rel < 1e-4, (name, rel)


# --------------------------------------------------------------------------------------
# Where gradients must reach: closed-over arrays, args pytrees, module leaves, y0 pytrees.


def _expm_loss(A, y0):
    return jnp.sum(jnp.sin(jax.scipy.linalg.expm(A) @ y0))


A0 = jnp.array([[-0.3, 1.0], [-1.2, 0.1]])
Y0 = jnp.array([1.0, 0.5])


@pytest.mark.parametrize("mode", list(MODES))
def test_gradient_reaches_closed_over_array(mode):
    def loss(A):
        sol = nde.odeint(lambda t, y, args: A @ y, Y0, jnp.array([0.0, 1.0]),
                         rtol=1e-10, atol=1e-10, adjoint=MODES[mode])
        return jnp.sum(jnp.sin(sol.ys[-1]))

    np.testing.assert_allclose(jax.grad(loss)(A0), jax.grad(_expm_loss)(A0, Y0), rtol=1e-6)


def test_gradient_reaches_args_pytree_and_skips_integer_leaves():
    def field(t, y, args):
        return (args["A"] @ y) * args["scale"][0] ** args["power"]

    def loss(args):
        sol = nde.odeint(field, Y0, jnp.array([0.0, 1.0]), args, rtol=1e-10, atol=1e-10)
        return jnp.sum(jnp.sin(sol.ys[-1]))

    args = {"A": A0, "scale": jnp.array([1.0]), "power": jnp.array(2)}
    g = jax.grad(loss, allow_int=True)(args)
    np.testing.assert_allclose(g["A"], jax.grad(_expm_loss)(A0, Y0), rtol=1e-6)
    # d/ds of expm(s^2 A) at s=1 is 2 <grad_A, A>
    np.testing.assert_allclose(g["scale"][0], 2 * jnp.sum(g["A"] * A0), rtol=1e-6)
    assert g["power"].dtype == jax.dtypes.float0


class LinearField(eqx.Module):
    A: jax.Array
    label: str = eqx.field(static=True, default="linear")

    def __call__(self, t, y, args):
        return {"u": self.A @ y["u"], "v": -y["v"]}


@pytest.mark.parametrize("mode", ["backsolve", "checkpoint"])
def test_gradient_reaches_module_leaves_and_pytree_state(mode):
    def loss(field, y0):
        sol = nde.odeint(field, y0, jnp.array([0.0, 1.0]), rtol=1e-10, atol=1e-10,
                         adjoint=MODES[mode])
        return jnp.sum(jnp.sin(sol.ys["u"][-1])) + jnp.sum(sol.ys["v"][-1] ** 2)

    y0 = {"u": Y0, "v": jnp.array([2.0, 3.0, 4.0])}
    g_field, g_y0 = jax.grad(loss, argnums=(0, 1))(LinearField(A0), y0)
    np.testing.assert_allclose(g_field.A, jax.grad(_expm_loss)(A0, Y0), rtol=1e-6)
    np.testing.assert_allclose(g_y0["u"], jax.grad(_expm_loss, argnums=1)(A0, Y0), rtol=1e-6)
    np.testing.assert_allclose(g_y0["v"], 2 * np.exp(-2.0) * y0["v"], rtol=1e-6)


# --------------------------------------------------------------------------------------
# Transformations: jit, vmap(grad), grad(vmap), float32.


def test_vmap_of_grad_and_grad_of_vmap_match_loop():
    def loss(y0, a):
        sol = nde.odeint(_sin_field, y0, jnp.array([0.0, 1.0, 2.0]), a, rtol=1e-9, atol=1e-9)
        return jnp.sum(sol.ys**2)

    y0s = jnp.array([0.5, 1.0, 2.0])
    per_sample = jnp.stack([jax.grad(loss, argnums=(0, 1))(y, 0.7)[0] for y in y0s])
    vg = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)))(y0s, 0.7)
    np.testing.assert_allclose(vg, per_sample, rtol=1e-8)
    gv_a = jax.grad(lambda a: jnp.sum(jax.vmap(loss, in_axes=(0, None))(y0s, a)))(0.7)
    closed = jax.grad(
        lambda a: jnp.sum(
            jax.vmap(lambda y: _closed_loss_sq(y, a, jnp.array([0.0, 1.0, 2.0])))(y0s)
        )
    )(0.7)
    np.testing.assert_allclose(gv_a, closed, rtol=1e-6)


def _closed_loss_sq(y0, a, ts):
    return jnp.sum((y0 * jnp.exp(a * (jnp.cos(ts[0]) - jnp.cos(ts)))) ** 2)


@pytest.mark.parametrize("mode", ["backsolve", "interpolated"])
def test_buffered_and_in_loop_parameter_adjoints_agree(mode):
    """Under ``vmap`` the seminorm modes integrate ``a_θ`` from buffered quadrature nodes
    (flushed by filled chunks), unbatched inside the loop. Both are the same quadrature of the
    same steps: the gradients of shared parameters agree to rounding, on a solve long enough
    to fill the node buffer several times and to end with a partly filled one."""
    adjoint = MODES[mode]
    ts = jnp.linspace(0.0, 40.0, 7)

    def loss(y0, w):
        sol = nde.odeint(lambda t, y, w: jnp.tanh(w @ y), y0, ts, w, rtol=1e-9, atol=1e-9,
                         adjoint=adjoint)
        return jnp.sum(sol.ys**2), sol.stats["num_accepted"]

    w = jnp.array([[0.0, 1.0], [-1.0, -0.05]])
    y0s = jnp.array([[1.0, 0.0], [0.3, -0.8]])
    grad = jax.jit(jax.grad(loss, argnums=1, has_aux=True))
    looped = [grad(y0, w) for y0 in y0s]
    # more backward steps than one buffer holds (64 steps of Tsit5 nodes)
    assert min(int(n) for _, n in looped) > 150
    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=1, has_aux=True), in_axes=(0, None)))
    g_vmap, _ = batched(y0s, w)
    np.testing.assert_allclose(g_vmap, jnp.stack([g for g, _ in looped]), rtol=1e-7)
    g_shared = jax.jit(jax.grad(lambda w: jnp.sum(jax.vmap(loss, (0, None))(y0s, w)[0])))(w)
    np.testing.assert_allclose(g_shared, sum(g for g, _ in looped), rtol=1e-7)


def test_float32_gradients():
    y0 = jnp.float32(1.3)
    ts = jnp.array([0.1, 0.7, 1.5, 2.2, 3.0], jnp.float32)

    def loss(y0, a):
        sol = nde.odeint(_sin_field, y0, ts, a, rtol=1e-5, atol=1e-5)
        return jnp.sum(W.astype(jnp.float32) * sol.ys**2)

    g = jax.grad(loss, argnums=(0, 1))(y0, jnp.float32(0.8))
    assert g[0].dtype == jnp.float32 and g[1].dtype == jnp.float32
    want = jax.grad(_closed_loss, argnums=(0, 1))(1.3, 0.8, ts.astype(jnp.float64))
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-3)


# --------------------------------------------------------------------------------------
# Fixed-step solvers: plain autodiff through lax.scan (RK-Net), exact discrete gradient.


def test_fixed_step_gradient_is_exact_derivative_of_discrete_map():
    lam = -0.7
    h = 0.1
    n = 10
    # RK4 on y' = lam y multiplies by R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24 per step.

    def loss(y0, lam):
        sol = nde.odeint(lambda t, y, a: a * y, y0, jnp.array([0.0, 1.0]), lam,
                         solver=nde.RK4(), dt0=h)
        return sol.ys[-1]

    def discrete(y0, lam):
        z = lam * h
        return y0 * (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** n

    got = jax.grad(loss, argnums=(0, 1))(2.0, lam)
    want = jax.grad(discrete, argnums=(0, 1))(2.0, lam)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


# --------------------------------------------------------------------------------------
# Memory: O(1) in the number of steps for BacksolveAdjoint, bounded checkpoints for the others.


def _temp_bytes(adjoint, max_steps):
    field = MLPField(jax.random.PRNGKey(1))

    def loss(field, y0):
        sol = nde.odeint(field, y0, jnp.array([0.0, 1.0]), adjoint=adjoint, max_steps=max_steps)
        return jnp.sum(sol.ys[-1] ** 2)

    params, static = eqx.partition(field, eqx.is_array)
    grad = jax.jit(jax.grad(lambda p, y0: loss(eqx.combine(p, static), y0)))
    compiled = grad.lower(params, jnp.ones(2)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_backsolve_memory_does_not_grow_with_max_steps():
    small = _temp_bytes(nde.BacksolveAdjoint(), 100)
    large = _temp_bytes(nde.BacksolveAdjoint(), 100_000)
    assert large == small


@pytest.mark.parametrize("adjoint", [nde.CheckpointAdjoint(), nde.InterpolatedAdjoint()],
                         ids=["checkpoint", "interpolated"])
def test_checkpointed_memory_does_not_follow_max_steps(adjoint):
    """The record holds `checkpoints` states per level and log_C(max_steps) levels: going from
    1e3 to 1e5 steps adds one level, never a max_steps-sized buffer."""
    small = _temp_bytes(adjoint, 1_000)
    large = _temp_bytes(adjoint, 100_000)
    assert large <= 1.5 * small, (small, large)
    # a buffer of one float64 state (2 entries) per possible step would be 1.6 MB
    assert large < 2 * 8 * 100_000 / 4, large


# --------------------------------------------------------------------------------------
# Backward statistics through the stats probe; the seminorm saves backward steps.


def _probe_loss(field, y0, probe, adjoint):
    sol = nde.odeint(field, y0, jnp.linspace(0.0, 1.0, 3), rtol=1e-6, atol=1e-6,
                     adjoint=adjoint, stats_probe=probe)
    return jnp.sum(sol.ys[-1] ** 2)


_probe_grad = eqx.filter_jit(eqx.filter_grad(_probe_loss))


def _backward_stats(adjoint, wide=False):
    field = MLPField(jax.random.PRNGKey(2), width=64 if wide else 8)
    field = jax.tree.map(lambda x: 3.0 * x if eqx.is_array(x) else x, field)
    # differentiate w.r.t. the probe only: its gradient is the backward statistics
    return jax.grad(_probe_loss, argnums=2)(field, jnp.array([0.3, -0.2]), jnp.zeros(4),
                                            adjoint)


def test_backward_stats_probe_under_jit():
    field = MLPField(jax.random.PRNGKey(2))
    stats = eqx.filter_jit(jax.grad(_probe_loss, argnums=2))(
        field, jnp.array([0.3, -0.2]), jnp.zeros(4), nde.BacksolveAdjoint()
    )
    steps, accepted, rejected, nfe = (float(s) for s in stats)
    assert steps > 0 and nfe > steps
    assert steps == accepted + rejected
    assert all(float(s).is_integer() for s in stats)


@pytest.mark.parametrize("mode", [nde.BacksolveAdjoint, nde.InterpolatedAdjoint])
def test_seminorm_never_costs_more_backward_steps(mode):
    """The seminorm leaves the parameter channel out of error control (and out of the step
    loop): it never needs more backward evaluations than the full norm, same gradient."""
    semi = _backward_stats(mode(seminorm=True), wide=True)
    full = _backward_stats(mode(seminorm=False), wide=True)
    assert float(semi[3]) <= float(full[3]), (semi, full)


def test_full_adjoint_norm_is_the_larger_of_the_channel_norms():
    """seminorm=False controls [z, a] and a_θ each on its own (a mixed norm): many small
    parameter entries cannot dilute the state error, so the seminorm never sees a larger ratio.
    """
    from neuralode._integrate import LoopConfig, error_ratio
    from neuralode._solvers import Tsit5
    from neuralode._solvers._step import StepResult

    key_y, key_q = jax.random.split(jax.random.key(0))
    n, m = 4, 400
    err_y = 1e-6 * jax.random.normal(key_y, (n,))
    err_q = 1e-9 * jax.random.normal(key_q, (m,))  # tiny errors in the big parameter block
    y0, q0 = jnp.ones(n), jnp.ones(m)
    y1, q1 = y0 + 0.1, q0 + 0.1

    def ratio(norm, q_err=err_q, y1=y1):
        res = StepResult(y1, None, err_y, None, q1 - q0, q_err, None, 0)
        cfg = LoopConfig(Tsit5(), nde.PIController(), 10, quad=True, norm=norm)
        return error_ratio(res, y0, y1, q0, q1, 1e-6, 1e-6, cfg)

    def rms(e, a, b):
        return jnp.sqrt(jnp.mean((e / (1e-6 + 1e-6 * jnp.maximum(jnp.abs(a), jnp.abs(b)))) ** 2))

    head, tail = rms(err_y, y0, y1), rms(err_q, q0, q1)
    np.testing.assert_allclose(ratio("semi"), head, rtol=1e-12)
    np.testing.assert_allclose(ratio("mixed"), max(head, tail), rtol=1e-12)
    big_q = 1e-3 * err_q / jnp.max(jnp.abs(err_q))  # now the parameter channel dominates
    np.testing.assert_allclose(ratio("mixed", big_q), rms(big_q, q0, q1), rtol=1e-12)
    assert float(ratio("mixed", big_q)) > 10 * float(ratio("semi"))
    # one RMS over everything would dilute the state error 100x; the mixed norm does not
    assert float(ratio("mixed")) >= float(head)
    assert np.isnan(ratio("semi", y1=y1.at[-1].set(jnp.nan)))


def test_tighter_adjoint_tolerance_costs_more_backward_steps():
    loose = _backward_stats(nde.BacksolveAdjoint())
    tight = _backward_stats(nde.BacksolveAdjoint(rtol=1e-9, atol=1e-9))
    assert float(tight[3]) > float(loose[3])


# --------------------------------------------------------------------------------------
# Gradient accuracy where backsolve reconstruction is unstable: never a silent wrong answer.


def _vdp(t, y, mu):
    return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_loss(y0, ts, adjoint, tol, throw=True):
    sol = nde.odeint(_vdp, y0, ts, 1.0, rtol=tol, atol=tol, adjoint=adjoint,
                     max_steps=100_000, throw=throw)
    return jnp.sum(sol.ys[-1] ** 2)


_vdp_grad = jax.jit(jax.grad(_vdp_loss), static_argnums=(2, 3, 4))
VDP_Y0 = jnp.array([2.0, 0.0])
VDP_TS = jnp.array([0.0, 20.0])


@pytest.fixture(scope="module")
def vdp_reference():
    return _vdp_grad(VDP_Y0, VDP_TS, nde.CheckpointAdjoint(), 1e-12)


@pytest.mark.parametrize("mode", ["interpolated", "checkpoint"])
def test_van_der_pol_gradient_accuracy(vdp_reference, mode):
    g = _vdp_grad(VDP_Y0, VDP_TS, MODES[mode], 1e-6)
    rel = float(jnp.linalg.norm(g - vdp_reference) / jnp.linalg.norm(vdp_reference))
    assert rel < 1e-2


def test_van_der_pol_backsolve_raises_instead_of_wrong_gradient():
    # Either the backward solve itself breaks down (step size underflow) or the drift check
    # catches the diverging reconstruction first; both are errors that name the cause.
    with pytest.raises(
        Exception, match="backward .*solve of the gradient failed|drifted away from the forward"
    ):
        jax.block_until_ready(_vdp_grad(VDP_Y0, VDP_TS, nde.BacksolveAdjoint(), 1e-6))
    g = _vdp_grad(VDP_Y0, VDP_TS, nde.BacksolveAdjoint(), 1e-6, False)
    assert np.all(np.isnan(np.asarray(g)))


def test_van_der_pol_backsolve_remedy_more_checkpoints(vdp_reference):
    ts = jnp.linspace(0.0, 20.0, 21)
    g = _vdp_grad(VDP_Y0, ts, nde.BacksolveAdjoint(), 1e-6)
    rel = float(jnp.linalg.norm(g - vdp_reference) / jnp.linalg.norm(vdp_reference))
    assert rel < 1e-2


def test_drift_check_flags_reconstruction_drift():
    # A decaying problem reconstructed backwards amplifies its forward error e^{λT}: with a
    # small drift threshold the check must fire, with the default it must not.
    ts = jnp.array([0.0, 6.0])

    def loss(y0, adjoint):
        sol = nde.odeint(lambda t, y, a: -2.0 * y, y0, ts, rtol=1e-4, atol=1e-8,
                         adjoint=adjoint, throw=False)
        return jnp.sum(sol.ys[-1])

    g_ok = jax.grad(loss)(jnp.array([1.0, 2.0]), nde.BacksolveAdjoint())
    assert np.all(np.isfinite(np.asarray(g_ok)))
    g_bad = jax.grad(loss)(jnp.array([1.0, 2.0]), nde.BacksolveAdjoint(drift_check=1e-3))
    assert np.all(np.isnan(np.asarray(g_bad)))
    with pytest.raises(Exception, match="drifted away from the forward trajectory"):

        def loss_throw(y0):
            sol = nde.odeint(lambda t, y, a: -2.0 * y, y0, ts, rtol=1e-4, atol=1e-8,
                             adjoint=nde.BacksolveAdjoint(drift_check=1e-3))
            return jnp.sum(sol.ys[-1])

        jax.block_until_ready(jax.grad(loss_throw)(jnp.array([1.0, 2.0])))


def test_adjoint_arguments_are_validated():
    with pytest.raises(ValueError, match="rtol"):
        nde.BacksolveAdjoint(rtol=-1.0)
    with pytest.raises(ValueError, match="atol"):
        nde.InterpolatedAdjoint(atol=0.0)
    with pytest.raises(ValueError, match="drift_check"):
        nde.BacksolveAdjoint(drift_check=0.0)


def _lorenz(t, y, args):
    sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0
    return jnp.stack([sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1], y[0] * y[1] - beta * y[2]])


def _lorenz_loss(y0, adjoint, tol):
    sol = nde.odeint(_lorenz, y0, jnp.array([0.0, 10.0]), rtol=tol, atol=tol, adjoint=adjoint,
                     max_steps=50_000)
    return jnp.sum(sol.ys[-1] ** 2)


_lorenz_grad = jax.jit(jax.grad(_lorenz_loss), static_argnums=(1,))


def test_lorenz_gradient_is_accurate_or_raises():
    y0 = jnp.array([1.0, 1.0, 1.0])
    ref = _lorenz_grad(y0, nde.CheckpointAdjoint(), jnp.asarray(1e-12))
    for adjoint in (nde.InterpolatedAdjoint(), nde.CheckpointAdjoint()):
        g = _lorenz_grad(y0, adjoint, jnp.asarray(1e-8))
        assert float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref)) < 1e-3
    try:
        g = jax.block_until_ready(_lorenz_grad(y0, nde.BacksolveAdjoint(), jnp.asarray(1e-8)))
    except Exception as err:  # a clear error is acceptable ...
        msg = str(err)
        assert "solve of the gradient failed" in msg or "drifted away" in msg
    else:  # ... a wrong gradient is not
        assert float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref)) < 1e-3


def test_failed_backward_solve_raises_whichever_gradient_is_used():
    # Only the gradient w.r.t. args is requested: the failure must still raise.
    def loss(y0, mu):
        sol = nde.odeint(_vdp, y0, VDP_TS, mu, rtol=1e-6, atol=1e-6, max_steps=100_000,
                         adjoint=nde.BacksolveAdjoint())
        return jnp.sum(sol.ys[-1] ** 2)

    with pytest.raises(
        Exception, match="backward .*solve of the gradient failed|drifted away from the forward"
    ):
        jax.block_until_ready(jax.jit(jax.grad(loss, argnums=1))(VDP_Y0, 1.0))


# --------------------------------------------------------------------------------------
# args is any pytree; failed samples masked out; zero-size states; bounded checkpoints.

FOUR_MODES = ["backsolve", "interpolated", "checkpoint", "forward"]


def _net_field(t, y, args):
    scale = 2.0 if args["name"] == "double" else 1.0
    return scale * args["act"](args["net"](y)) * args["power"] - args["decay"] * y


@pytest.mark.parametrize("mode", FOUR_MODES)
def test_args_holding_a_module_strings_functions_and_ints(mode):
    """An eqx.nn.MLP (with its activation function), a string, an int and a function in
    `args`: arrays traced and differentiated, the rest static; same under filter_jit/vmap."""
    net = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(3))
    args = {"net": net, "name": "double", "act": jnp.sin, "power": 2, "decay": jnp.array(0.3)}
    ts = jnp.array([0.0, 0.4, 1.0])

    def loss(args, y0):
        sol = nde.odeint(_net_field, y0, ts, args, rtol=1e-10, atol=1e-10,
                         adjoint=MODES[mode])
        return jnp.sum(jnp.sin(sol.ys))

    y0 = jnp.array([0.5, -0.2])
    closure = nde.odeint(lambda t, y, a: _net_field(t, y, args), y0, ts, rtol=1e-10, atol=1e-10)
    value = eqx.filter_jit(loss)(args, y0)
    np.testing.assert_allclose(value, jnp.sum(jnp.sin(closure.ys)), rtol=1e-12)
    grads = eqx.filter_jit(eqx.filter_grad(loss))(args, y0)
    # finite differences on one weight of the network and on `decay`
    eps = 1e-6
    w = args["net"].layers[0].weight

    def with_w(delta):
        bumped = eqx.tree_at(lambda a: a["net"].layers[0].weight, args, w.at[1, 0].add(delta))
        return loss(bumped, y0)

    fd_w = (with_w(eps) - with_w(-eps)) / (2 * eps)
    np.testing.assert_allclose(grads["net"].layers[0].weight[1, 0], fd_w, rtol=1e-5)
    fd_decay = (loss({**args, "decay": args["decay"] + eps}, y0)
                - loss({**args, "decay": args["decay"] - eps}, y0)) / (2 * eps)
    np.testing.assert_allclose(grads["decay"], fd_decay, rtol=1e-5)
    # under vmap: per-sample gradients equal the one-at-a-time ones
    y0s = jnp.stack([y0, -y0])
    per = jax.vmap(lambda y: eqx.filter_grad(loss)(args, y)["decay"])(y0s)
    one = eqx.filter_grad(loss)(args, -y0)["decay"]
    np.testing.assert_allclose(per[0], grads["decay"], rtol=1e-10)
    np.testing.assert_allclose(per[1], one, rtol=1e-10)


def _blowup(t, y, a):
    return a * y**2  # y(t) = y0 / (1 - a y0 t): finite-time blow-up at t = 1/(a y0)


@pytest.mark.parametrize("mode", FOUR_MODES)
def test_masked_failures_give_finite_gradients_of_the_successful_samples(mode):
    ts = jnp.array([0.0, 0.5, 1.0])
    y0s = jnp.array([0.3, 4.0, 0.6])  # the middle sample blows up at t = 0.25

    def losses(a, y0s):
        def one(y0):
            sol = nde.odeint(_blowup, y0, ts, a, rtol=1e-8, atol=1e-8, throw=False,
                             adjoint=MODES[mode], max_steps=500)
            ok = sol.result == nde.Result.successful
            return jnp.where(ok, jnp.sum(sol.ys**2), 0.0), ok

        return jax.vmap(one)(y0s)

    def masked(a):
        return jnp.sum(losses(a, y0s)[0])

    _, ok = losses(1.0, y0s)
    assert ok.tolist() == [True, False, True]
    g = jax.jit(jax.grad(masked))(1.0)
    good = jax.grad(lambda a: jnp.sum(losses(a, y0s[jnp.array([0, 2])])[0]))(1.0)
    assert np.isfinite(g)
    np.testing.assert_allclose(g, good, rtol=1e-10)
    # the closed form of the successful samples
    def closed(a):
        y = y0s[jnp.array([0, 2])][:, None] / (1 - a * y0s[jnp.array([0, 2])][:, None] * ts)
        return jnp.sum(y**2)

    np.testing.assert_allclose(g, jax.grad(closed)(1.0), rtol=1e-5)


@pytest.mark.parametrize("mode", FOUR_MODES)
def test_zero_size_state(mode):
    def loss(y0, a):
        sol = nde.odeint(lambda t, y, a: {"x": -a * y["x"], "e": y["e"]}, y0,
                         jnp.array([0.0, 0.5, 1.0]), a, adjoint=MODES[mode])
        return jnp.sum(sol.ys["x"][-1])

    y0 = {"x": jnp.array([1.0]), "e": jnp.zeros((0,))}
    g_y0, g_a = jax.grad(loss, argnums=(0, 1))(y0, 2.0)
    np.testing.assert_allclose(g_a, -np.exp(-2.0), rtol=1e-5)
    assert g_y0["e"].shape == (0,)
    empty = nde.odeint(lambda t, y, a: -y, jnp.zeros((0,)), jnp.array([0.0, 1.0]),
                       adjoint=MODES[mode])
    assert empty.ys.shape == (2, 0) and int(empty.result) == 0
    jax.grad(lambda y0: jnp.sum(nde.odeint(lambda t, y, a: -y, y0, jnp.array([0.0, 1.0]),
                                           adjoint=MODES[mode]).ys))(jnp.zeros((0,)))


@pytest.mark.parametrize("checkpoints", [2, pytest.param(4, marks=pytest.mark.slow),
                                         pytest.param(16, marks=pytest.mark.slow)])
def test_replayed_checkpoints_give_the_same_gradients(checkpoints):
    """With fewer checkpoints than steps the backward pass replays segments from the record
    (several levels deep): CheckpointAdjoint's gradient is unchanged to the last bit, the
    interpolated adjoint's to its tolerance; also for decreasing ts and under vmap, where each
    sample takes a different number of steps."""
    ts = jnp.array([2.0, 1.3, 0.6, 0.0])  # decreasing

    def loss(y0, a, adjoint):
        sol = nde.odeint(_sin_field, y0, ts, a, rtol=1e-8, atol=1e-8, adjoint=adjoint,
                         max_steps=300)
        return jnp.sum(W[:4] * sol.ys**2)

    y0s = jnp.array([0.4, 1.3, 2.0])
    grad = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None, None)),
                   static_argnums=2)
    exact = grad(y0s, 0.8, nde.CheckpointAdjoint())
    replayed = grad(y0s, 0.8, nde.CheckpointAdjoint(checkpoints=checkpoints))
    for a, b in zip(exact, replayed, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    interp = grad(y0s, 0.8, nde.InterpolatedAdjoint(checkpoints=checkpoints))
    closed = jax.vmap(jax.grad(lambda y, a: jnp.sum(
        W[:4] * (y * jnp.exp(a * (jnp.cos(ts[0]) - jnp.cos(ts)))) ** 2), argnums=(0, 1)),
        in_axes=(0, None))(y0s, 0.8)
    for a, b in zip(interp, closed, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_eager_calls_compile_once_and_see_reassigned_globals():
    traces = []

    def field(t, y, args):
        traces.append(None)
        return args * y

    ts = jnp.linspace(0.0, 1.0, 4)
    nde.odeint(field, jnp.ones(2), ts, jnp.asarray(-1.0))
    first = len(traces)
    for k in range(3):
        nde.odeint(field, jnp.full((2,), float(k)), ts + k, jnp.asarray(-1.0 - k), rtol=1e-5)
    assert len(traces) == first  # new values of y0, ts, args and rtol: no retrace

    global _GLOBAL_RATE
    _GLOBAL_RATE = jnp.asarray(-1.0)
    a = nde.odeint(_global_field, jnp.ones(2), ts).ys[-1]
    _GLOBAL_RATE = jnp.asarray(-2.0)  # reassigned between eager calls: must not be stale
    b = nde.odeint(_global_field, jnp.ones(2), ts).ys[-1]
    np.testing.assert_allclose(a, np.exp(-1.0), rtol=1e-5)
    np.testing.assert_allclose(b, np.exp(-2.0), rtol=1e-5)


_GLOBAL_RATE = jnp.asarray(-1.0)


def _global_field(t, y, args):
    return _GLOBAL_RATE * y
