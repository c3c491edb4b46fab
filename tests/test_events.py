"""Events: location to near machine precision, and exact derivatives of the event time and state
(implicit function theorem) in every gradient mode, forward and reverse, under jit and vmap."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralode as nde

MODES = {
    "checkpoint": nde.CheckpointAdjoint(),
    "backsolve": nde.BacksolveAdjoint(),
    "interpolated": nde.InterpolatedAdjoint(),
    "forward": nde.ForwardMode(),
}
TOL = 1e-10


def _fall(t, y, g):
    return jnp.stack([y[1], -g])


GROUND = nde.Event(lambda t, y, g: y[0], direction=-1)


def _drop(h0, g, mode, ts=None):
    ts = jnp.linspace(0.0, 1.0, 6) if ts is None else ts
    return nde.odeint(_fall, jnp.stack([h0, jnp.zeros_like(h0)]), ts, g, event=GROUND,
                      rtol=TOL, atol=TOL, adjoint=mode)


def test_free_fall_event_time_state_and_outputs():
    h0, g = 1.0, 9.81
    sol = _drop(jnp.asarray(h0), g, nde.CheckpointAdjoint())
    t_star = np.sqrt(2 * h0 / g)
    np.testing.assert_allclose(sol.event_time, t_star, rtol=1e-9, atol=0)
    np.testing.assert_allclose(sol.event_y[1], -g * t_star, rtol=1e-9)
    assert abs(float(sol.event_y[0])) < 1e-12
    assert int(sol.result) == nde.Result.event and bool(sol.successful)
    assert int(sol.event_index) == 0
    # outputs before the event are the usual dense output, after it NaN (not reached)
    ts = np.linspace(0.0, 1.0, 6)
    before = ts <= t_star
    np.testing.assert_allclose(sol.ys[before, 0], h0 - g * ts[before] ** 2 / 2, rtol=1e-9)
    assert np.all(np.isnan(np.asarray(sol.ys[~before])))


@pytest.fixture(scope="module", params=list(MODES))
def fall_derivatives(request):
    mode = MODES[request.param]

    def time_and_speed(h0, g):
        sol = _drop(h0, g, mode)
        return sol.event_time, sol.event_y[1]

    @jax.jit
    def derivatives(h0, g):
        rev_t = jax.grad(lambda a, b: time_and_speed(a, b)[0], argnums=(0, 1))(h0, g)
        rev_v = jax.grad(lambda a: time_and_speed(a, g)[1])(h0)
        fwd = jax.jacfwd(time_and_speed, argnums=(0, 1))(h0, g)
        per_sample = jax.vmap(lambda a: time_and_speed(a, g)[0])(jnp.array([0.5, 1.0, 2.0]))
        return rev_t, rev_v, fwd, per_sample

    return request.param, derivatives


def test_free_fall_event_derivatives_match_closed_forms(fall_derivatives):
    name, derivatives = fall_derivatives
    h0, g = 1.0, 9.81
    (dt_dh0, dt_dg), dv_dh0, ((fdt_dh0, fdt_dg), (fdv_dh0, _)), per = derivatives(h0, g)
    exact_dt_dh0 = 1 / np.sqrt(2 * h0 * g)
    exact_dt_dg = -np.sqrt(2 * h0 / g) / (2 * g)
    exact_dv_dh0 = -np.sqrt(g / (2 * h0))
    for got, want in [(dt_dh0, exact_dt_dh0), (dt_dg, exact_dt_dg), (dv_dh0, exact_dv_dh0),
                      (fdt_dh0, exact_dt_dh0), (fdt_dg, exact_dt_dg), (fdv_dh0, exact_dv_dh0)]:
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(per, np.sqrt(2 * np.array([0.5, 1.0, 2.0]) / g), rtol=1e-9)


@pytest.mark.parametrize("mode", list(MODES))
def test_exponential_decay_to_one_half(mode):
    ev = nde.Event(lambda t, y, k: y - 0.5)

    def event_time(k):
        sol = nde.odeint(lambda t, y, k: -k * y, jnp.asarray(1.0), jnp.array([0.0, 5.0]), k,
                         event=ev, rtol=TOL, atol=TOL, adjoint=MODES[mode])
        return sol.event_time

    k = 0.7
    np.testing.assert_allclose(event_time(k), np.log(2) / k, rtol=1e-9)
    np.testing.assert_allclose(jax.grad(event_time)(k), -np.log(2) / k**2, rtol=1e-6)


def _bounces(e, h0=1.0, g=9.81, n=6, mode=None):
    """Total time of ``n`` impacts: a Python loop of event-terminated solves with a reset."""
    t = jnp.zeros(())
    y = jnp.stack([jnp.asarray(h0), 0.0])
    for _ in range(n):
        sol = nde.odeint(_fall, y, jnp.stack([t, t + 10.0]), g, event=GROUND, rtol=TOL,
                         atol=TOL, adjoint=mode)
        t = sol.event_time
        y = jnp.stack([0.0, -e * sol.event_y[1]])  # bounce: reverse and damp the velocity
    return t


def _bounces_exact(e, h0=1.0, g=9.81, n=6):
    v1 = np.sqrt(2 * g * h0)
    ks = np.arange(1, n)
    total = np.sqrt(2 * h0 / g) + np.sum(2 * e**ks * v1 / g)
    d_de = np.sum(2 * ks * e ** (ks - 1) * v1 / g)
    return total, d_de


@pytest.mark.parametrize("mode", ["checkpoint", "backsolve"])
def test_six_bounces_total_time_and_its_derivative_in_the_restitution(mode):
    e = 0.8
    total, d_de = jax.jit(jax.value_and_grad(lambda e: _bounces(e, mode=MODES[mode])))(e)
    want_total, want_d = _bounces_exact(e)
    np.testing.assert_allclose(total, want_total, rtol=1e-8)
    np.testing.assert_allclose(d_de, want_d, rtol=1e-6)


def test_zero_at_the_start_does_not_fire_against_its_direction():
    # Starting on the ground and moving up: the falling event must wait for the next landing.
    sol = nde.odeint(_fall, jnp.array([0.0, 3.0]), jnp.array([0.0, 2.0]), 9.81, event=GROUND,
                     rtol=TOL, atol=TOL)
    np.testing.assert_allclose(sol.event_time, 2 * 3.0 / 9.81, rtol=1e-9)


def test_several_events_the_first_wins_and_non_terminal_events_record():
    ceiling = nde.Event(lambda t, y, g: y[0] - 0.9)  # crossed on the way down, first
    sol = nde.odeint(_fall, jnp.array([1.0, 0.0]), jnp.linspace(0.0, 1.0, 6), 9.81,
                     event=(GROUND, ceiling), rtol=TOL, atol=TOL)
    assert int(sol.event_index) == 1
    np.testing.assert_allclose(sol.event_time, np.sqrt(2 * 0.1 / 9.81), rtol=1e-9)
    # A non-terminal event is recorded and the solve goes on to the end.
    mark = nde.Event(lambda t, y, g: y[0] - 0.9, terminal=False)
    sol = nde.odeint(_fall, jnp.array([1.0, 0.0]), jnp.linspace(0.0, 0.4, 5), 9.81,
                     event=mark, rtol=TOL, atol=TOL)
    assert int(sol.result) == nde.Result.successful
    assert not np.any(np.isnan(np.asarray(sol.ys)))
    np.testing.assert_allclose(sol.event_time, np.sqrt(2 * 0.1 / 9.81), rtol=1e-9)

    def time_of_mark(g, mode):
        return nde.odeint(_fall, jnp.array([1.0, 0.0]), jnp.linspace(0.0, 0.4, 5), g,
                          event=mark, rtol=TOL, atol=TOL, adjoint=mode).event_time

    for mode in MODES.values():  # d t*/d g = -t*/(2g), the event inside the solve
        np.testing.assert_allclose(jax.grad(time_of_mark)(9.81, mode),
                                   -np.sqrt(2 * 0.1 / 9.81) / (2 * 9.81), rtol=1e-6)


class _Threshold(eqx.Module):
    """A learnable event function: fires when the state falls to `level`."""

    level: jax.Array

    def __call__(self, t, y, args):
        return y - self.level


@pytest.mark.parametrize("mode", list(MODES))
def test_learnable_event_function_gets_gradients(mode):
    def event_time(cond):
        return nde.odeint(lambda t, y, k: -k * y, jnp.asarray(1.0), jnp.array([0.0, 5.0]), 0.7,
                          event=nde.Event(cond), rtol=TOL, atol=TOL,
                          adjoint=MODES[mode]).event_time

    cond = _Threshold(jnp.asarray(0.5))
    g = eqx.filter_grad(event_time)(cond)
    # t* = -ln(level)/k: d t*/d level = -1/(k level)
    np.testing.assert_allclose(g.level, -1 / (0.7 * 0.5), rtol=1e-6)


def test_bad_event_arguments():
    with pytest.raises(ValueError, match="direction"):
        nde.Event(lambda t, y, a: y, direction=2)
    with pytest.raises(TypeError, match="cond_fn"):
        nde.Event(3.0)
    with pytest.raises(TypeError, match="`event` must be an nde.Event"):
        nde.odeint(_fall, jnp.ones(2), jnp.array([0.0, 1.0]), 9.81, event=lambda t, y, a: y)
    with pytest.raises(ValueError, match="floating scalar"):
        nde.odeint(_fall, jnp.ones(2), jnp.array([0.0, 1.0]), 9.81,
                   event=nde.Event(lambda t, y, a: y))
    with pytest.raises(ValueError, match="adaptive solver"):
        nde.odeint(_fall, jnp.ones(2), jnp.array([0.0, 1.0]), 9.81, event=GROUND,
                   solver=nde.RK4(), dt0=0.1)
