"""Mathematical tests of the solvers run end to end through ``odeint`` (float64).

* Convergence order of the fixed-step methods: log-log slope of the error against ``dt``.
* Tolerance proportionality of the adaptive pairs: global error ∝ tolerance over 4 decades.
* Dense output: interpolation error at 200 interior times converges like ``h^(p*+1)``
  (``p*`` the interpolant's order), and at tight tolerances it is as small as the error at the
  step ends (a cubic Hermite interpolant fails this for Dopri8: a negative control shows it).
* The PI step-size controller: validation, ``beta=0`` is an I controller, ``dtmax``, ``dtmin``.

The order conditions of the tableaus themselves are checked in ``test_tableaus.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralode as nde
from neuralode._controller import step_factor
from neuralode._solvers._base import hermite_interp

# ---------------------------------------------------------------------------------------------
# Test problem: smooth, nonlinear and time dependent, with a known solution
#   y0' = y0 (1 - y0)      logistic:  y0(t) = 1 / (1 + 9 e^(-t))   (y0(0) = 0.1)
#   y1' = y1 cos(t)                   y1(t) = exp(sin t)           (y1(0) = 1)
# ---------------------------------------------------------------------------------------------

T_END = 4.0
Y0 = (0.1, 1.0)


def logistic_exp(t, y, args):
    return jnp.stack([y[0] * (1.0 - y[0]), y[1] * jnp.cos(t)])


def logistic_exp_exact(ts):
    ts = np.asarray(ts, dtype=np.float64)
    return np.stack([1.0 / (1.0 + 9.0 * np.exp(-ts)), np.exp(np.sin(ts))], axis=-1)


def loglog_slope(x, err) -> float:
    return float(np.polyfit(np.log(np.asarray(x)), np.log(np.asarray(err)), 1)[0])


# ---------------------------------------------------------------------------------------------
# 1. Convergence order of the fixed-step solvers
# ---------------------------------------------------------------------------------------------

FIXED = [(nde.Euler(), 1), (nde.Midpoint(), 2), (nde.Heun(), 2), (nde.RK4(), 4)]


@pytest.mark.parametrize(("solver", "order"), FIXED, ids=lambda v: repr(v))
def test_fixed_step_convergence_order(solver, order):
    ts = np.linspace(0.0, T_END, 5)
    steps = np.array([16, 32, 64, 128, 256])  # steps over [0, T_END]
    errors = []
    for n in steps:
        sol = nde.odeint(logistic_exp, jnp.asarray(Y0), ts, solver=solver, dt0=T_END / n)
        assert int(sol.stats["num_steps"]) == n
        assert int(sol.stats["nfe"]) == n * solver.tableau.num_stages
        errors.append(np.max(np.abs(np.asarray(sol.ys) - logistic_exp_exact(ts))))
    slope = loglog_slope(T_END / steps, errors)
    assert abs(slope - order) <= 0.3, (slope, errors)
    assert solver.order == order


def test_fixed_step_decreasing_ts_converges():
    """Fixed-step integration backwards in time reaches the known initial value."""
    ts = np.linspace(T_END, 0.0, 3)
    y_end = jnp.asarray(logistic_exp_exact(T_END))
    sol = nde.odeint(logistic_exp, y_end, ts, solver=nde.RK4(), dt0=0.05)
    np.testing.assert_allclose(np.asarray(sol.ys), logistic_exp_exact(ts), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 1b. Tolerance proportionality of the adaptive solvers
# ---------------------------------------------------------------------------------------------
# With error-per-step control and local extrapolation the step size is h ~ tol^(1/(q+1)), the
# local error of the propagated solution h^(q+2) and the global error ~ (1/h) h^(q+2) ~ tol.
# To average out the noise of a single trajectory, 8 problems (different rates, frequencies and
# initial values, vmapped: each sample takes its own steps) are solved per tolerance, and the
# error is the RMS over samples of the max-abs error at 21 output times.

BATCH = 8
_RATES = np.linspace(1.0, 2.0, BATCH)
_FREQS = np.linspace(1.0, 3.0, BATCH)
_Y0S = np.stack([np.linspace(0.05, 0.5, BATCH), np.linspace(0.5, 2.0, BATCH)], axis=1)
TS21 = np.linspace(0.0, T_END, 21)


def family(t, y, args):
    rate, freq = args
    return jnp.stack([rate * y[0] * (1.0 - y[0]), y[1] * jnp.cos(freq * t)])


def family_exact(ts):
    t = np.asarray(ts)[None, :]
    r, w = _RATES[:, None], _FREQS[:, None]
    y0, y1 = _Y0S[:, :1], _Y0S[:, 1:]
    return np.stack(
        [1.0 / (1.0 + (1.0 / y0 - 1.0) * np.exp(-r * t)), y1 * np.exp(np.sin(w * t) / w)], axis=-1
    )  # (BATCH, len(ts), 2)


ADAPTIVE_TOLS = [
    (nde.Bosh3(), 1e-4),
    (nde.Dopri5(), 1e-5),
    (nde.Tsit5(), 1e-5),
    (nde.Dopri8(), 1e-6),
]


@pytest.mark.parametrize(("solver", "loosest"), ADAPTIVE_TOLS, ids=lambda v: repr(v))
def test_error_proportional_to_tolerance(solver, loosest):
    @jax.jit
    def solve(tol):
        def one(y0, rate, freq):
            sol = nde.odeint(
                family,
                y0,
                TS21,
                (rate, freq),
                solver=solver,
                rtol=tol,
                atol=tol,
                max_steps=10_000,
            )
            return sol.ys, sol.stats["num_steps"]

        return jax.vmap(one)(jnp.asarray(_Y0S), jnp.asarray(_RATES), jnp.asarray(_FREQS))

    exact = family_exact(TS21)
    tols = loosest * 10.0 ** -np.arange(0.0, 4.01, 0.5)  # 4 decades, 9 tolerances
    errors, steps = [], []
    for tol in tols:
        ys, num_steps = solve(tol)
        per_sample = np.max(np.abs(np.asarray(ys) - exact), axis=(1, 2))
        errors.append(np.sqrt(np.mean(per_sample**2)))
        steps.append(np.mean(np.asarray(num_steps)))
    errors = np.array(errors)
    slope = loglog_slope(tols, errors)
    assert 0.7 <= slope <= 1.3, (slope, errors / tols)
    ratio = errors / tols
    assert np.all(ratio < 60.0) and np.all(ratio > 0.3), ratio
    # Cost grows like tol^(-1/(q+1)): more steps for every tighter tolerance, but not wildly
    # more (a controller with a wrong exponent would change this slope).
    step_slope = loglog_slope(tols, steps)
    q = solver.tableau.error_order
    assert abs(-step_slope - 1.0 / (q + 1)) < 0.1, (step_slope, steps)


# ---------------------------------------------------------------------------------------------
# 2. Dense output
# ---------------------------------------------------------------------------------------------
# Outputs at 200 interior times (midpoints of a uniform grid) plus the two ends.
TS_DENSE = np.concatenate([[0.0], T_END * (np.arange(200) + 0.5) / 200, [T_END]])

# Steps of exactly dt0: no safety factor, growth clipped at 1 + 1e-9, and tolerances so loose
# that every step is accepted. One compile serves every dt0 (dt0 is traced).
FIXED_H = nde.PIController(safety=1.0, factormax=1.0 + 1e-9)

_D8 = nde.Dopri8.tableau


class HermiteDopri8(nde.AbstractAdaptiveSolver):
    """Negative control: Dopri8 steps with a cubic Hermite dense output (order 3)."""

    tableau = dataclasses.replace(
        _D8,
        name="HermiteDopri8",
        interp=hermite_interp(_D8.b, f1_index=_D8.num_stages, num_total=_D8.num_stages + 1),
        interp_order=3,
        extra_c=None,
        extra_a=None,
    )


DENSE = [
    (nde.Dopri5(), [8, 16, 32, 64]),
    (nde.Tsit5(), [8, 16, 32, 64]),
    (nde.Dopri8(), [4, 8, 16, 32]),
    (HermiteDopri8(), [4, 8, 16, 32]),
]


def _interior_error_slope(solver, steps):
    @jax.jit
    def solve(dt0):
        return nde.odeint(
            logistic_exp,
            jnp.asarray(Y0),
            TS_DENSE,
            solver=solver,
            rtol=1e3,
            atol=1e3,
            dt0=dt0,
            controller=FIXED_H,
        )

    errors = []
    for n in steps:
        sol = solve(T_END / n)
        assert int(sol.stats["num_rejected"]) == 0
        assert int(sol.stats["num_steps"]) in (n, n + 1)  # + a rounding-sized last step
        err = np.abs(np.asarray(sol.ys) - logistic_exp_exact(TS_DENSE))
        errors.append(err[1:-1].max())
    return loglog_slope(T_END / np.asarray(steps), errors)


@pytest.mark.parametrize(("solver", "steps"), DENSE[:3], ids=lambda v: repr(v))
def test_dense_output_convergence_order(solver, steps):
    """With steps of size h the error at interior times is O(h^(p*+1)).

    For these pairs p* + 1 equals the order of the method, so local interpolation error and
    global error both scale like h^(p*+1).
    """
    slope = _interior_error_slope(solver, steps)
    expected = solver.tableau.interp_order + 1
    assert abs(slope - expected) <= 0.5, slope


def test_dense_output_order_detects_hermite():
    """Negative control: a cubic Hermite interpolant on Dopri8 steps converges like h^4."""
    slope = _interior_error_slope(HermiteDopri8(), DENSE[3][1])
    assert abs(slope - 4.0) <= 0.5, slope


# Tight tolerances. Circular Kepler orbit: nonlinear, exact solution (cos t, sin t, -sin t,
# cos t), and its global error (a phase drift) grows monotonically, so the error at the final
# time (a step end) bounds the error at every earlier step end.
def kepler(t, y, args):
    r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
    return jnp.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])


def circle(ts):
    ts = np.asarray(ts)
    return np.stack([np.cos(ts), np.sin(ts), -np.sin(ts), np.cos(ts)], axis=-1)


TS_ORBIT = np.concatenate([[0.0], 2 * np.pi * (np.arange(200) + 0.5) / 200, [2 * np.pi]])


def _interior_vs_end(solver, tol):
    sol = nde.odeint(
        kepler, jnp.array([1.0, 0.0, 0.0, 1.0]), TS_ORBIT, solver=solver, rtol=tol, atol=tol
    )
    err = np.max(np.abs(np.asarray(sol.ys) - circle(TS_ORBIT)), axis=1)
    return err[1:-1].max(), err[-1]


@pytest.mark.parametrize(
    ("solver", "tol"),
    [(nde.Dopri5(), 1e-10), (nde.Tsit5(), 1e-10), (nde.Dopri8(), 1e-12), (nde.Dopri8(), 1e-13)],
    ids=repr,
)
def test_dense_output_at_tight_tolerance(solver, tol):
    interior, end = _interior_vs_end(solver, tol)
    assert end < 1e3 * tol
    assert interior <= 3.0 * end, (interior, end)


def test_dense_output_at_tight_tolerance_detects_hermite():
    interior, end = _interior_vs_end(HermiteDopri8(), 1e-12)
    assert interior > 1e3 * end, (interior, end)


# ---------------------------------------------------------------------------------------------
# 5. The PI controller
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": 0.5}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"safety": 0.0}, "safety"),
        ({"safety": 1.5}, "safety"),
        ({"factormin": 0.0}, "factormin"),
        ({"factormin": 1.0}, "factormin"),
        ({"factormax": 1.0}, "factormax"),
        ({"factormax": 0.5}, "factormax"),
        ({"dtmin": 0.0}, "dtmin"),
        ({"dtmin": -1e-3}, "dtmin"),
        ({"dtmax": -1.0}, "dtmax"),
        ({"dtmax": "1"}, "dtmax"),
        ({"dtmin": 1.0, "dtmax": 0.5}, "dtmin"),
    ],
)
def test_pi_controller_rejects_invalid_values(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        nde.PIController(**kwargs)


def test_pi_controller_is_static_and_hashable():
    a, b = nde.PIController(beta=0.0, dtmax=0.5), nde.PIController(beta=0.0, dtmax=0.5)
    assert a == b and hash(a) == hash(b)
    assert a != nde.PIController(beta=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.beta = 0.1


def test_beta_zero_is_an_integral_controller():
    ratios = jnp.array([1e-3, 0.05, 0.3, 0.8])
    q = 4
    ctrl = nde.PIController(beta=0.0)
    accepted = jnp.ones((), bool)
    no = jnp.zeros((), bool)
    for prev in (1e-4, 0.1, 1.0):
        factor = step_factor(ratios, jnp.asarray(prev), accepted, no, q, ctrl)
        expected = np.clip(0.9 * np.asarray(ratios) ** (-1.0 / (q + 1)), 0.2, 10.0)
        np.testing.assert_allclose(np.asarray(factor), expected, rtol=1e-12)
    # With beta > 0 the previous ratio matters: a larger previous error means a smaller step.
    # Gustafsson's form (1/r)^(k_I) (r_prev/r)^(k_P), k_P = 5 beta/(q+1) = beta for q = 4; the
    # proportional factor only damps (it is capped at 1).
    pi = nde.PIController(beta=0.04)
    f_small = step_factor(jnp.asarray(0.3), jnp.asarray(0.01), accepted, no, q, pi)
    f_large = step_factor(jnp.asarray(0.3), jnp.asarray(0.9), accepted, no, q, pi)
    k = 1.0 / (q + 1)
    np.testing.assert_allclose(
        float(f_small), 0.9 * 0.3 ** (-k) * (0.01 / 0.3) ** 0.04, rtol=1e-12
    )
    np.testing.assert_allclose(float(f_large), 0.9 * 0.3 ** (-k), rtol=1e-12)
    assert float(f_small) < float(f_large)
    # beta=None takes the solver's recommendation (the default_beta argument)
    default = nde.PIController()
    f_none = step_factor(jnp.asarray(0.3), jnp.asarray(0.01), accepted, no, q, default, 0.0)
    np.testing.assert_allclose(float(f_none), 0.9 * 0.3 ** (-k), rtol=1e-12)


def test_rejected_step_only_shrinks():
    ctrl = nde.PIController()
    ratios = jnp.array([1.01, 2.0, 1e3, jnp.inf, jnp.nan])
    factor = step_factor(ratios, jnp.asarray(0.5), jnp.zeros((), bool), jnp.ones((), bool), 4, ctrl)
    factor = np.asarray(factor)
    assert np.all(factor < 1.0) and np.all(factor >= ctrl.factormin)
    assert factor[-1] == ctrl.factormin and factor[-2] == ctrl.factormin
    # After a rejection the next accepted step may not grow.
    grow = step_factor(
        jnp.asarray(1e-6), jnp.asarray(0.5), jnp.ones((), bool), jnp.ones((), bool), 4, ctrl
    )
    assert float(grow) <= 1.0


def _decay(t, y, args):
    return -y


@pytest.mark.parametrize("dt0", [None, 5.0])
def test_dtmax_is_respected(dt0):
    span, dtmax = 10.0, 0.25
    ts = jnp.array([0.0, span])
    loose = nde.odeint(_decay, jnp.ones(2), ts, rtol=1e-3, atol=1e-3, dt0=dt0)
    assert int(loose.stats["num_accepted"]) < 20  # without dtmax it takes few large steps
    sol = nde.odeint(
        _decay,
        jnp.ones(2),
        ts,
        rtol=1e-3,
        atol=1e-3,
        dt0=dt0,
        controller=nde.PIController(dtmax=dtmax),
    )
    n_min = int(np.ceil(span / dtmax))
    # No accepted step is longer than dtmax (so at least span/dtmax of them), and since the
    # tolerance is loose, every step is as long as dtmax allows.
    assert n_min <= int(sol.stats["num_accepted"]) <= n_min + 1
    assert int(sol.stats["num_rejected"]) == 0
    np.testing.assert_allclose(np.asarray(sol.ys[-1]), np.exp(-span), rtol=1e-2)


def _blowup(t, y, args):
    return y**2


def test_dtmin_triggers_dt_min_reached():
    ts = jnp.array([0.0, 0.5, 2.0])  # y = 1 / (1 - t) blows up at t = 1
    free = nde.odeint(_blowup, jnp.array(1.0), ts, throw=False)
    sol = nde.odeint(
        _blowup, jnp.array(1.0), ts, throw=False, controller=nde.PIController(dtmin=1e-3)
    )
    assert int(sol.result) == nde.Result.dt_min_reached
    assert int(sol.stats["num_steps"]) < int(free.stats["num_steps"])
    np.testing.assert_allclose(float(sol.ys[1]), 2.0, rtol=1e-5)
    assert np.isnan(float(sol.ys[2]))
    with pytest.raises(Exception, match="step size underflow"):
        nde.odeint(_blowup, jnp.array(1.0), ts, controller=nde.PIController(dtmin=1e-3))
    # On a smooth problem the same dtmin never triggers.
    ok = nde.odeint(_decay, jnp.ones(2), ts, controller=nde.PIController(dtmin=1e-3))
    assert int(ok.result) == nde.Result.successful


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [nde.Bosh3(), nde.Dopri5(), nde.Tsit5(), nde.Dopri8()], ids=repr)
def test_nfe_accounting(solver):
    """NFE = 2 (f(t0) and the initial-step probe) + new evaluations per attempted step
    (+ the extra dense-output stages of Dopri8 on steps that contain an output time)."""
    tab = solver.tableau
    sol = nde.odeint(
        logistic_exp, jnp.asarray(Y0), jnp.array([0.0, T_END]), solver=solver, rtol=1e-7, atol=1e-7
    )
    s = {k: int(v) for k, v in sol.stats.items()}
    assert s["num_steps"] == s["num_accepted"] + s["num_rejected"]
    per_step = tab.num_stages - 1 + (0 if tab.fsal else 1)
    assert s["nfe"] == 2 + per_step * s["num_steps"] + tab.num_extra  # one step holds T_END
