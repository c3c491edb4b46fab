"""Every derivative of odeint: forward mode, second order in every mode, half precision.

Linear systems ``y' = A(θ) y`` have the matrix exponential as closed form, differentiable to
any order, so Jacobians, Hessians, grad-of-grad and Hessian-vector products are checked
against exact values; a nonlinear (MLP) field is checked against finite differences of its
gradient. One compiled function per mode computes all the derivatives (compiles dominate).
"""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import neuralode as nde

MODES = {
    "checkpoint": nde.CheckpointAdjoint(),
    "backsolve": nde.BacksolveAdjoint(),
    "interpolated": nde.InterpolatedAdjoint(),
    "forward": nde.ForwardMode(),
}
REVERSE = ["checkpoint", "backsolve", "interpolated"]
# Every mode runs every test; in the default (fast) suite the costly second-order tests run
# for the default mode and ForwardMode, the closed-form test of every order for all four.
SLOW = pytest.mark.slow


def _modes(names, fast=("checkpoint", "forward")):
    return [n if n in fast else pytest.param(n, marks=SLOW) for n in names]

A1 = jnp.array([[-0.4, 1.0], [-1.0, -0.2]])
A2 = jnp.array([[0.3, 0.0], [0.5, -0.6]])
TS = jnp.array([0.0, 0.6, 1.3, 2.0])
Y0 = jnp.array([1.0, -0.4])
THETA = jnp.array([0.9, 0.4])
TOL = 1e-11


def _field(t, y, theta):
    return (theta[0] * A1 + theta[1] * A2) @ y


def _exact_ys(theta, y0, ts):
    a = theta[0] * A1 + theta[1] * A2
    return jax.vmap(lambda t: jax.scipy.linalg.expm(a * (t - ts[0])) @ y0)(ts)


def _loss(ys):
    return jnp.sum(jnp.sin(ys) * jnp.arange(1.0, ys.size + 1).reshape(ys.shape))


def _derivatives(solve):
    """All the derivatives of ``solve(theta, y0, ts) -> ys`` that the tests compare."""

    def loss(theta, y0, ts):
        return _loss(solve(theta, y0, ts))

    def grad_norm(theta, y0):  # for grad(grad): a gradient penalty
        return jnp.sum(jax.grad(loss, argnums=1)(theta, y0, TS) ** 2)

    v = jnp.array([0.3, -0.7])
    return {
        "jac_theta": jax.jacfwd(solve, argnums=0)(THETA, Y0, TS),
        "jac_y0": jax.jacrev(solve, argnums=1)(THETA, Y0, TS),
        "jac_ts": jax.jacfwd(solve, argnums=2)(THETA, Y0, TS),
        "hessian": jax.hessian(loss, argnums=(0, 1))(THETA, Y0, TS),
        "grad_grad": jax.grad(grad_norm, argnums=(0, 1))(THETA, Y0),
        "hvp": jax.jvp(lambda th: jax.grad(loss)(th, Y0, TS), (THETA,), (v,))[1],
        "linearize": jax.linearize(lambda y0: solve(THETA, y0, TS), Y0)[1](v),
    }


@pytest.fixture(scope="module")
def exact():
    return jax.jit(lambda: _derivatives(_exact_ys))()


@pytest.fixture(scope="module", params=list(MODES))
def computed(request):
    mode = MODES[request.param]

    def solve(theta, y0, ts):
        return nde.odeint(_field, y0, ts, theta, rtol=TOL, atol=TOL, adjoint=mode).ys

    return request.param, jax.jit(lambda: _derivatives(solve))()


def test_derivatives_of_a_linear_system_match_the_matrix_exponential(computed, exact):
    name, got = computed
    for key, want in exact.items():
        for g, w in zip(jax.tree.leaves(got[key]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8, err_msg=f"{name}: {key}")
    # the second derivatives are not trivially zero, so the comparison has teeth
    assert float(jnp.max(jnp.abs(exact["hessian"][0][0]))) > 0.1


@pytest.mark.parametrize("mode", _modes(["checkpoint", "backsolve"]))
def test_second_order_under_vmap(mode):
    """Per-sample Hessians under vmap (each sample its own steps) and the Hessian of a
    vmapped loss with shared parameters."""

    def loss(theta, y0):
        sol = nde.odeint(_field, y0, TS, theta, rtol=TOL, atol=TOL, adjoint=MODES[mode])
        return _loss(sol.ys)

    def exact_loss(theta, y0):
        return _loss(_exact_ys(theta, y0, TS))

    y0s = jnp.stack([Y0, 2.0 * Y0, jnp.array([0.1, 0.9])])

    @jax.jit
    def both(theta, y0s):
        per = jax.vmap(jax.hessian(loss), in_axes=(None, 0))(theta, y0s)
        shared = jax.hessian(lambda th: jnp.sum(jax.vmap(loss, in_axes=(None, 0))(th, y0s)))(
            theta
        )
        return per, shared

    per, shared = both(THETA, y0s)
    np.testing.assert_allclose(
        per, jax.vmap(jax.hessian(exact_loss), in_axes=(None, 0))(THETA, y0s), rtol=1e-6
    )
    np.testing.assert_allclose(
        shared,
        jax.hessian(lambda th: jnp.sum(jax.vmap(exact_loss, in_axes=(None, 0))(th, y0s)))(THETA),
        rtol=1e-6,
    )


class _MLPField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(jnp.concatenate([y, jnp.atleast_1d(t)]))


@pytest.mark.parametrize("mode", _modes(list(MODES)))
def test_hessian_of_a_neural_field_matches_finite_differences_of_its_gradient(mode):
    field = _MLPField(eqx.nn.MLP(3, 2, 6, 1, activation=jnp.tanh, key=jax.random.key(1)))
    params, static = eqx.partition(field, eqx.is_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    ts = jnp.array([0.0, 0.5, 1.0])

    def loss(p, y0):
        sol = nde.odeint(eqx.combine(unravel(p), static), y0, ts, rtol=1e-12, atol=1e-12,
                         adjoint=MODES[mode])
        return jnp.sum(sol.ys**2)

    y0 = jnp.array([0.4, -0.3])
    grad = jax.jit(jax.grad(loss))
    hess_rows = jax.jit(lambda p, y0, idx: jax.hessian(loss)(p, y0)[idx])(
        flat, y0, jnp.array([0, 7, 20])
    )
    eps = 1e-5
    for row, i in zip(hess_rows, [0, 7, 20], strict=True):
        e = jnp.zeros_like(flat).at[i].set(eps)
        fd = (grad(flat + e, y0) - grad(flat - e, y0)) / (2 * eps)
        np.testing.assert_allclose(row, fd, rtol=1e-5, atol=1e-7)


def _small_loss(mode):
    def loss(theta, y0):
        sol = nde.odeint(_field, y0, jnp.array([0.0, 0.8, 1.5]), theta, rtol=1e-12, atol=1e-12,
                         adjoint=mode)
        return jnp.sum(sol.ys**2)

    return loss


@pytest.mark.parametrize("mode", _modes(REVERSE))
def test_check_grads_second_order_reverse(mode):
    """The check jax.experimental.ode's own tests make: reverse mode, to second order."""
    check_grads(_small_loss(MODES[mode]), (THETA, Y0), order=2, modes=["rev"], atol=1e-4,
                rtol=1e-4, eps=1e-4)


def test_check_grads_forward_and_reverse_with_forward_mode():
    check_grads(_small_loss(MODES["forward"]), (THETA, Y0), order=1, modes=["fwd", "rev"],
                atol=1e-5, rtol=1e-5, eps=1e-4)


# ---------------------------------------------------------------------------------------------
# ForwardMode's cost: jax.jacfwd is one loop carrying the solve and its tangents, and only the
# inputs that have a tangent are differentiated.

TS_FEW = jnp.linspace(0.0, 1.0, 5)  # few outputs: written by a select, no inner output loop
W_MLP = (jax.random.normal(jax.random.PRNGKey(0), (2, 8)) * 0.8,
         jax.random.normal(jax.random.PRNGKey(1), (8, 2)) * 0.4)


def _mlp(t, y, params):
    w1, w2 = params
    return jnp.tanh(y @ w1) @ w2


def _forward_solve(y0, params, **kw):
    return nde.odeint(_mlp, y0, TS_FEW, params, adjoint=nde.ForwardMode(), **kw).ys


def test_jacfwd_in_forward_mode_compiles_to_one_loop():
    for fn in (jax.jacfwd(_forward_solve),
               lambda y0, p: jax.jvp(lambda y: _forward_solve(y, p), (y0,), (Y0,))[1]):
        hlo = jax.jit(fn).lower(Y0, W_MLP).compile().as_text()
        assert len(re.findall(r" while\(", hlo)) == 1


def test_forward_mode_does_not_propagate_absent_tangents():
    """jacfwd w.r.t. ``y0`` alone has no parameter tangent: the field's products with a zero
    parameter tangent (one per layer and stage) must not be there."""

    def dots(argnums):
        text = jax.jit(jax.jacfwd(_forward_solve, argnums)).lower(Y0, W_MLP).as_text()
        return text.count("dot_general")

    assert dots(0) < dots((0, 1))


def test_forward_mode_jacobian_matches_finite_differences():
    tol = {"rtol": 1e-11, "atol": 1e-11}
    jac = jax.jit(jax.jacfwd(lambda y: _forward_solve(y, W_MLP, **tol)))(Y0)
    solve = jax.jit(lambda y: _forward_solve(y, W_MLP, **tol))
    eps = 1e-5
    fd = jnp.stack([(solve(Y0 + eps * e) - solve(Y0 - eps * e)) / (2 * eps)
                    for e in jnp.eye(2)], axis=-1)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-8)
    assert float(jnp.max(jnp.abs(jac[-1] - jnp.eye(2)))) > 0.05  # not the identity


def test_jacfwd_of_a_failed_solve_raises_under_jit():
    # XLA drops the primal solve when only tangents are used: the check must go with them.
    def solve(y0):
        return _forward_solve(y0, W_MLP, max_steps=2)

    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(jax.jit(jax.jacfwd(solve))(Y0))
    jac = jax.jit(jax.jacfwd(lambda y: nde.odeint(
        _mlp, y, TS_FEW, W_MLP, adjoint=nde.ForwardMode(), max_steps=2, throw=False).ys))(Y0)
    assert np.all(np.asarray(jac[-1]) == 0.0)  # not reached: no derivative


def test_third_order_raises_a_clear_error():
    loss = _small_loss(nde.CheckpointAdjoint())
    third = jax.grad(lambda th: jnp.sum(jax.hessian(loss)(th, Y0)))
    with pytest.raises(NotImplementedError, match="third or higher order"):
        third(THETA)


# ---------------------------------------------------------------------------------------------
# Half precision: states in float16/bfloat16, times, error norms and the controller in float32.

# Relative error bounds for a solve at rtol = 10·eps of the dtype over [0, 2] (measured:
# float16 ~2e-2, bfloat16 ~2e-1; bounds leave a factor of about 2).
HALF = {
    jnp.float16: {"rtol": 1e-2, "value": 2e-2, "grad": 5e-2},
    jnp.bfloat16: {"rtol": 8e-2, "value": 2e-1, "grad": 4e-1},
}


@pytest.mark.parametrize("dtype", list(HALF), ids=["float16", "bfloat16"])
def test_half_precision_solves_and_gradients_in_every_mode(dtype):
    bounds = HALF[dtype]
    a = (THETA[0] * A1 + THETA[1] * A2).astype(dtype)
    y0 = Y0.astype(dtype)
    ts = jnp.linspace(0.0, 2.0, 5)

    def solve(a, y0, mode):
        return nde.odeint(lambda t, y, a: a @ y, y0, ts, a, rtol=bounds["rtol"],
                          atol=bounds["rtol"], adjoint=mode)

    def exact(a, y0):
        return jax.vmap(lambda t: jax.scipy.linalg.expm(a * t) @ y0)(ts)

    a32, y032 = a.astype(jnp.float32), y0.astype(jnp.float32)
    sol = solve(a, y0, nde.CheckpointAdjoint())
    assert sol.ys.dtype == dtype and sol.ts.dtype == jnp.float32
    ref = exact(a32, y032)
    assert float(jnp.max(jnp.abs(sol.ys.astype(jnp.float32) - ref))) < bounds["value"]
    g_ref = jax.grad(lambda a, y: jnp.sum(exact(a, y) ** 2), argnums=(0, 1))(a32, y032)
    for name, mode in MODES.items():
        def loss(a, y, mode=mode):
            return jnp.sum(solve(a, y, mode).ys.astype(jnp.float32) ** 2)

        g = jax.grad(loss, argnums=(0, 1))(a, y0)
        for gi, ri in zip(g, g_ref, strict=True):
            assert gi.dtype == dtype
            rel = float(jnp.linalg.norm(gi.astype(jnp.float32) - ri) / jnp.linalg.norm(ri))
            assert rel < bounds["grad"], (name, rel)


def test_half_precision_neural_field():
    field = _MLPField(eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(2)))
    field16 = jax.tree.map(lambda x: x.astype(jnp.float16) if eqx.is_array(x) else x, field)
    y0 = jnp.array([0.5, -0.2])
    ts = jnp.linspace(0.0, 1.0, 3)
    ref = nde.odeint(field, y0, ts, rtol=1e-9, atol=1e-9).ys
    for mode in MODES.values():
        sol = nde.odeint(field16, y0.astype(jnp.float16), ts, rtol=1e-2, atol=1e-2,
                         adjoint=mode)
        assert float(jnp.max(jnp.abs(sol.ys.astype(jnp.float32) - ref))) < 2e-2
        def loss16(f, mode=mode):
            sol = nde.odeint(f, y0.astype(jnp.float16), ts, rtol=1e-2, atol=1e-2, adjoint=mode)
            return jnp.sum(sol.ys.astype(jnp.float32) ** 2)

        g = eqx.filter_grad(loss16)(field16)
        g_ref = eqx.filter_grad(lambda f: jnp.sum(
            nde.odeint(f, y0, ts, rtol=1e-9, atol=1e-9).ys ** 2))(field)
        w, w_ref = g.mlp.layers[0].weight, g_ref.mlp.layers[0].weight
        assert w.dtype == jnp.float16
        rel = float(jnp.linalg.norm(w.astype(jnp.float32) - w_ref) / jnp.linalg.norm(w_ref))
        assert rel < 5e-2, rel


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(jnp.float16, 1e-6), (jnp.bfloat16, 1e-3), (jnp.float32, 1e-12)],
    ids=["float16", "bfloat16", "float32"],
)
def test_tolerance_below_the_dtype_resolution_is_a_clear_error(dtype, rtol):
    y0 = jnp.ones(2, dtype)
    with pytest.raises(ValueError, match=rf"below the resolution of the state's dtype "
                                         rf"{jnp.dtype(dtype).name}.*Use rtol >="):
        nde.odeint(lambda t, y, a: -y, y0, jnp.array([0.0, 1.0]), rtol=rtol)
