"""The public ``odeint``: pytrees, directions, dense outputs, dtypes, jit/vmap, tracing, failure
modes and input validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralode as nde

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def decay(t, y, args):
    return jax.tree.map(lambda x: -x, y)


def forced_pendulum(t, y, args):
    """Nonlinear, time dependent, no closed form."""
    return jnp.stack([y[1], -jnp.sin(y[0])]) * (1.0 + 0.1 * jnp.cos(3.0 * t))


# ---------------------------------------------------------------------------------------------
# Pytrees and ys[0] == y0
# ---------------------------------------------------------------------------------------------


def _rates(y):
    leaves, treedef = jax.tree.flatten(y)
    return jax.tree.unflatten(treedef, [0.5 + 0.5 * i for i in range(len(leaves))])


def pytree_field(t, y, args):
    return jax.tree.map(lambda r, x: -r * x * (1.0 + 0.0 * t), _rates(y), y)


@pytest.mark.parametrize(
    "y0",
    [
        {"a": np.arange(6.0).reshape(2, 3) - 2.5, "b": (np.float64(2.0), np.array([1.0, -3.0]))},
        (np.array([1.0, 2.0, 3.0]), np.array([[0.5, -0.5], [1.5, 4.0]])),
    ],
    ids=["dict", "tuple"],
)
def test_pytree_y0(y0):
    ts = jnp.linspace(0.0, 2.0, 7)
    sol = nde.odeint(pytree_field, y0, ts, rtol=1e-9, atol=1e-9)
    assert jax.tree.structure(sol.ys) == jax.tree.structure(y0)
    for leaf0, leaf, rate in zip(
        jax.tree.leaves(y0), jax.tree.leaves(sol.ys), jax.tree.leaves(_rates(y0)), strict=True
    ):
        leaf0 = np.asarray(leaf0)
        assert leaf.shape == (len(ts), *leaf0.shape)
        assert leaf.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(leaf[0]), leaf0)  # ys[0] == y0 exactly
        exact = leaf0[None] * np.exp(-rate * np.asarray(ts)).reshape((-1,) + (1,) * leaf0.ndim)
        np.testing.assert_allclose(np.asarray(leaf), exact, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(sol.ts), np.asarray(ts))


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri8(), nde.RK4()], ids=repr)
def test_first_output_is_y0_exactly(solver):
    y0 = jnp.array([0.1234567890123, -7.0e-3])
    ts = jnp.array([0.3, 0.8, 1.7])
    sol = nde.odeint(forced_pendulum, y0, ts, solver=solver, dt0=0.1)
    np.testing.assert_array_equal(np.asarray(sol.ys[0]), np.asarray(y0))


def test_single_output_time():
    y0 = {"x": jnp.array([1.0, 2.0])}
    sol = nde.odeint(decay, y0, jnp.array([0.5]))
    assert sol.ys["x"].shape == (1, 2)
    np.testing.assert_array_equal(np.asarray(sol.ys["x"][0]), [1.0, 2.0])
    assert int(sol.stats["num_steps"]) == 0 and int(sol.result) == nde.Result.successful


# ---------------------------------------------------------------------------------------------
# Direction of time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri8()], ids=repr)
def test_decreasing_ts_is_the_mirrored_problem(solver):
    """y(t) for decreasing ts equals s(-t) with ds/dτ = -f(-τ, s) solved for increasing -ts."""
    ts = jnp.array([2.0, 1.5, 0.7, 0.0, -0.4])
    y0 = jnp.array([1.0, 0.3])

    def mirrored(tau, s, args):
        return -forced_pendulum(-tau, s, args)

    back = nde.odeint(forced_pendulum, y0, ts, solver=solver, rtol=1e-9, atol=1e-9)
    mirror = nde.odeint(mirrored, y0, -ts, solver=solver, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(back.ys), np.asarray(mirror.ys), rtol=1e-13, atol=1e-15)
    assert {k: int(v) for k, v in back.stats.items()} == {
        k: int(v) for k, v in mirror.stats.items()
    }
    # And integrating forward again from the last output recovers the start.
    fwd = nde.odeint(forced_pendulum, back.ys[-1], ts[::-1], solver=solver, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(fwd.ys[::-1]), np.asarray(back.ys), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Dense output: outputs do not clip steps
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri8()], ids=repr)
def test_output_times_do_not_change_the_steps(solver):
    y0 = jnp.array([1.0, 0.0])
    ts_many = jnp.linspace(0.0, 6.0, 401)

    def solve(ts, tol=1e-8):
        return nde.odeint(forced_pendulum, y0, ts, solver=solver, rtol=tol, atol=tol)

    many = solve(ts_many)
    few = solve(ts_many[::20])
    ends = solve(ts_many[jnp.array([0, -1])])
    steps = {int(s.stats["num_steps"]) for s in (many, few, ends)}
    assert len(steps) == 1, steps  # the number of output times does not change the steps
    # Same steps, same interpolants: equal up to rounding (different compiled programs may
    # round differently, so not bit for bit).
    np.testing.assert_allclose(
        np.asarray(many.ys[::20]), np.asarray(few.ys), rtol=1e-13, atol=1e-15
    )
    np.testing.assert_allclose(np.asarray(many.ys[-1]), np.asarray(ends.ys[-1]), rtol=1e-13)
    # The interpolated outputs are accurate (compare with a much tighter solve).
    ref = solve(ts_many[::20], 1e-12)
    np.testing.assert_allclose(np.asarray(few.ys), np.asarray(ref.ys), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------------


def test_branch_free_and_conditional_output_writing_agree(monkeypatch):
    """Both ways of writing outputs (select at every step / conditional inner loop) give the
    same outputs and statistics, for a small and a large state."""
    import neuralode._integrate as integrate

    def f(t, y, args):
        return -args * y + jnp.sin(t)

    ts = jnp.array([0.0, 0.3, 1.1, 2.0])
    for n in (2, 100):  # 8 and 400 output entries: select and conditional by default
        y0 = jnp.linspace(-1.0, 1.0, n)
        args = jnp.linspace(0.5, 2.0, n)
        outs = []
        for entries in (0, 10**6):  # force the conditional, then the branch-free path
            monkeypatch.setattr(integrate, "_SELECT_ENTRIES_MAX", entries)
            sol = nde.odeint(f, y0, ts, args, rtol=1e-8, atol=1e-8)
            outs.append((np.asarray(sol.ys), {k: int(v) for k, v in sol.stats.items()}))
        np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-14)
        assert outs[0][1] == outs[1][1]


@pytest.mark.parametrize("ts_dtype", [np.float32, np.float64])
def test_float32_path(ts_dtype):
    y0 = {"x": jnp.array([1.0, 0.5], jnp.float32), "v": jnp.array(0.0, jnp.float32)}
    ts = np.linspace(0.0, 3.0, 7).astype(ts_dtype)

    def oscillator(t, y, args):  # x'' = -x for each x; v tracks -sum(x) (a scalar leaf)
        return {"x": jnp.stack([y["x"][1], -y["x"][0]]), "v": -y["x"][0]}

    sol = nde.odeint(oscillator, y0, ts, rtol=1e-6, atol=1e-6)
    assert sol.ys["x"].dtype == jnp.float32 and sol.ys["v"].dtype == jnp.float32
    assert sol.ts.dtype == jnp.float32
    t = ts.astype(np.float64)
    x_exact = np.stack([np.cos(t) + 0.5 * np.sin(t), -np.sin(t) + 0.5 * np.cos(t)], axis=1)
    v_exact = -(np.sin(t) - 0.5 * np.cos(t) + 0.5)
    np.testing.assert_allclose(np.asarray(sol.ys["x"]), x_exact, atol=2e-5)
    np.testing.assert_allclose(np.asarray(sol.ys["v"]), v_exact, atol=2e-5)
    assert int(sol.result) == nde.Result.successful


# ---------------------------------------------------------------------------------------------
# vmap, jit and tracing
# ---------------------------------------------------------------------------------------------


def cubic_decay(t, y, args):
    return -(y**3)


def test_vmap_gives_each_sample_its_own_steps():
    ts = jnp.linspace(0.0, 2.0, 5)
    y0s = jnp.array([0.5, 1.0, 2.0, 4.0])

    @jax.jit
    def solve(y0):
        sol = nde.odeint(cubic_decay, y0, ts, rtol=1e-8, atol=1e-8)
        return sol.ys, sol.stats

    ys, stats = jax.jit(jax.vmap(solve))(y0s)
    steps = np.asarray(stats["num_steps"])
    assert steps.shape == (4,)
    assert len(set(steps.tolist())) == 4, steps  # a harder sample takes more steps
    for i, y0 in enumerate(y0s):
        ys_i, stats_i = solve(y0)
        assert int(stats_i["num_steps"]) == steps[i]
        assert int(stats_i["nfe"]) == int(stats["nfe"][i])
        np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(ys_i), rtol=1e-13)
    exact = y0s[:, None] / np.sqrt(1.0 + 2.0 * y0s[:, None] ** 2 * ts[None])
    np.testing.assert_allclose(np.asarray(ys), exact, rtol=1e-6)


def test_jit_matches_eager():
    y0, ts = jnp.array([1.0, 0.0]), jnp.linspace(0.0, 3.0, 5)
    eager = nde.odeint(forced_pendulum, y0, ts, rtol=1e-8, atol=1e-8)
    jitted = jax.jit(lambda y0, ts: nde.odeint(forced_pendulum, y0, ts, rtol=1e-8, atol=1e-8))(
        y0, ts
    )
    np.testing.assert_allclose(np.asarray(jitted.ys), np.asarray(eager.ys), rtol=1e-12)
    assert int(jitted.stats["num_steps"]) == int(eager.stats["num_steps"])


MAX_TRACES = 10  # traces of f per compile (measured: 2 or 3)


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri8()], ids=repr)
def test_no_retracing_and_few_traces(solver):
    traces = []

    def f(t, y, args):
        traces.append(1)  # runs once per trace, never at run time
        return -args["k"] * y + jnp.sin(t)

    @jax.jit
    def solve(y0, ts, rtol, atol, args):
        sol = nde.odeint(f, y0, ts, args, solver=solver, rtol=rtol, atol=atol)
        return sol.ys, sol.stats["num_steps"]

    ys1, n1 = solve(jnp.ones(3), jnp.linspace(0.0, 1.0, 4), 1e-6, 1e-6, {"k": jnp.array(1.0)})
    first = len(traces)
    assert 1 <= first <= MAX_TRACES
    ys2, n2 = solve(
        jnp.array([2.0, -1.0, 0.0]), jnp.linspace(1.0, -2.0, 4), 1e-9, 1e-8, {"k": jnp.array(3.0)}
    )
    assert len(traces) == first  # new y0, ts (even reversed), tolerances, args: no retrace
    assert solve._cache_size() == 1
    assert int(n2) > int(n1)  # the new tolerances were used
    assert not np.allclose(np.asarray(ys1), np.asarray(ys2))


# ---------------------------------------------------------------------------------------------
# f is never evaluated outside [t0, t1]
# ---------------------------------------------------------------------------------------------


@functools.cache
def _recording_solver(solver, with_dt0: bool):
    """Jitted solve that records every time at which f is evaluated (host callback)."""
    seen: list[float] = []

    def f(t, y, args):
        jax.debug.callback(lambda tt: seen.append(float(tt)), t)
        return forced_pendulum(t, y, args) * args

    @jax.jit
    def solve(ts, scale, tol, dt0):
        return nde.odeint(
            f,
            jnp.array([1.0, 0.0]),
            ts,
            scale,
            solver=solver,
            rtol=tol,
            atol=tol,
            dt0=dt0 if with_dt0 else None,
        )

    def run(ts, scale=1.0, tol=1e-6, dt0=1.0):
        seen.clear()
        sol = solve(jnp.asarray(ts), scale, tol, dt0)
        jax.block_until_ready(sol)
        jax.effects_barrier()
        return np.array(seen), sol

    return run


SPANS = [
    [0.0, 1.3, 2.0],
    [2.0, 1.3, 0.0],
    [-0.25, -1.75],
    [0.1, 0.7],
    [0.7, 0.1],
]


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri8(), nde.Bosh3()], ids=repr)
@pytest.mark.parametrize("with_dt0", [False, True], ids=["heuristic_h0", "dt0"])
def test_f_stays_inside_the_interval(solver, with_dt0):
    run = _recording_solver(solver, with_dt0)
    cases = [(ts, 1.0, tol, 100.0) for ts in SPANS for tol in (1e-3, 1e-8)]
    # Slow dynamics on a short span: the initial-step heuristic's first guess (0.01 d0/d1)
    # is far longer than the span and must be clipped before f is evaluated there.
    cases += [([0.0, 0.01], 1e-3, 1e-2, 100.0), ([0.01, 0.0], 1e-3, 1e-2, 100.0)]
    for ts, scale, tol, dt0 in cases:
        seen, sol = run(ts, scale, tol, dt0)
        assert int(sol.result) == nde.Result.successful
        assert len(seen) == int(sol.stats["nfe"])  # the NFE statistic counts every evaluation
        lo, hi = min(ts[0], ts[-1]), max(ts[0], ts[-1])
        assert seen.min() >= lo and seen.max() <= hi, (ts, seen.min(), seen.max())


@pytest.mark.parametrize("ts", [[0.3, 0.9], [-0.3, -0.9]])
def test_f_never_evaluated_past_the_end_exactly(ts):
    run = _recording_solver(nde.Tsit5(), True)
    seen, _ = run(ts, 1.0, 1e-6, 1.0)  # dt0 > span: the first step is the whole interval
    lo, hi = min(ts), max(ts)
    assert seen.min() >= lo and seen.max() <= hi, (seen.min(), seen.max())


def test_fixed_step_never_evaluated_past_the_end_exactly():
    seen = []

    def f(t, y, args):
        jax.debug.callback(lambda tt: seen.append(float(tt)), t)
        return -y

    nde.odeint(f, jnp.array(1.0), jnp.array([0.3, 0.9]), solver=nde.RK4(), dt0=1.0)
    jax.effects_barrier()
    assert max(seen) <= 0.9, max(seen)


def test_fixed_step_stays_inside_the_interval_up_to_rounding():
    seen = []

    def f(t, y, args):
        jax.debug.callback(lambda tt: seen.append(float(tt)), t)
        return -y

    for ts in ([0.0, 0.35, 1.0], [1.0, 0.35, 0.0]):
        seen.clear()
        nde.odeint(f, jnp.array(1.0), jnp.asarray(ts), solver=nde.RK4(), dt0=0.1)
        jax.effects_barrier()
        assert len(seen) == 4 * 7 * 2  # ceil(0.65 / 0.1) = 7 steps per interval, 4 stages
        assert min(seen) >= -1e-15 and max(seen) <= 1.0 + 1e-15


# ---------------------------------------------------------------------------------------------
# Failure modes
# ---------------------------------------------------------------------------------------------


def blowup(t, y, args):  # y = y0 / (1 - y0 t): blows up at t = 1/y0
    return y**2


def nan_after_one(t, y, args):
    return jnp.where(t > 1.0, jnp.nan, -y)


def fast_oscillation(t, y, args):
    return 500.0 * jnp.cos(500.0 * t) * jnp.ones_like(y)


FAILURES = [
    (blowup, {}, "step size underflow"),
    (nan_after_one, {}, "non-finite"),
    (fast_oscillation, {"max_steps": 50}, "max_steps"),
]


@pytest.mark.parametrize(("f", "kwargs", "match"), FAILURES, ids=["underflow", "nan", "max_steps"])
def test_failure_raises_with_cause(f, kwargs, match):
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(
            nde.odeint(f, jnp.array(1.0), jnp.array([0.0, 0.5, 3.0]), **kwargs).ys
        )


def mixed_field(t, x, kind):
    """Per sample: 0 decays, 1 blows up at t = 1, 2 turns NaN after t = 1, 3 oscillates fast."""
    return jnp.where(
        kind == 0,
        -x,
        jnp.where(
            kind == 1,
            x**2,
            jnp.where(kind == 2, jnp.where(t > 1.0, jnp.nan, -x), 2000.0 * jnp.cos(2000.0 * t)),
        ),
    )


def test_failures_per_sample_under_vmap():
    ts = jnp.array([0.0, 0.001, 0.5, 0.9, 2.0, 3.0])

    @jax.jit
    @jax.vmap
    def solve(x0, kind):
        sol = nde.odeint(
            mixed_field, x0, ts, kind, rtol=1e-8, atol=1e-8, max_steps=1000, throw=False
        )
        return sol.ys, sol.result, sol.successful

    xs, result, successful = solve(jnp.ones(4), jnp.arange(4))
    xs = np.asarray(xs)
    expected = [
        nde.Result.successful,
        nde.Result.dt_min_reached,
        nde.Result.nonfinite,
        nde.Result.max_steps_reached,
    ]
    assert np.asarray(result).tolist() == [int(r) for r in expected]
    assert np.asarray(successful).tolist() == [True, False, False, False]
    # Success: all finite and right.
    np.testing.assert_allclose(xs[0], np.exp(-np.asarray(ts)), rtol=1e-6)
    # Blow-up and NaN: outputs before t = 1 are reached and right, later ones are NaN.
    np.testing.assert_allclose(xs[1, :4], 1.0 / (1.0 - np.asarray(ts[:4])), rtol=1e-6)
    np.testing.assert_allclose(xs[2, :4], np.exp(-np.asarray(ts[:4])), rtol=1e-6)
    assert np.all(np.isnan(xs[1:3, 4:]))
    # max_steps: a finite prefix (at least y0 and t = 0.001), then NaN.
    finite = np.isfinite(xs[3])
    n_reached = int(np.argmin(finite))
    assert 2 <= n_reached < len(ts) and not finite[n_reached:].any()
    np.testing.assert_allclose(
        xs[3, :n_reached], 1.0 + np.sin(2000.0 * np.asarray(ts[:n_reached])), atol=1e-5
    )


ADAPTIVE = [nde.Bosh3(), nde.Dopri5(), nde.Tsit5(), nde.Dopri8()]


@pytest.mark.parametrize("solver", ADAPTIVE, ids=repr)
def test_nonfinite_never_passes_silently(solver):
    ts = jnp.array([0.0, 0.5, 2.0])
    sol = nde.odeint(nan_after_one, jnp.array(1.0), ts, solver=solver, throw=False)
    assert int(sol.result) in (nde.Result.nonfinite, nde.Result.dt_min_reached)
    assert np.isfinite(float(sol.ys[1])) and np.isnan(float(sol.ys[2]))
    with pytest.raises(Exception, match="non-finite|underflow"):
        jax.block_until_ready(nde.odeint(nan_after_one, jnp.array(1.0), ts, solver=solver).ys)


def test_nan_stall_is_reported_as_nonfinite():
    def f(t, y, args):  # the NaN is in one component, the other is constant
        return jnp.stack([jnp.where(t > 1.0, jnp.nan, -y[0]), 0.0 * y[1]])

    sol = nde.odeint(
        f, jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0]), rtol=1e-8, atol=1e-8, throw=False
    )
    assert int(sol.result) == nde.Result.nonfinite


def test_result_messages():
    assert [r.value for r in nde.Result] == [0, 1, 2, 3, 4, 5]
    assert "success" in nde.Result.describe(0)
    assert "max_steps" in nde.Result.describe(nde.Result.max_steps_reached)
    assert "step size underflow" in nde.Result.describe(jnp.array(2))
    assert "non-finite" in nde.Result.describe(np.int32(3))
    for r in nde.Result:
        assert nde.Result.describe(int(r)) == r.message()
    assert [bool(nde.Result.succeeded(r)) for r in nde.Result] == [True] + [False] * 4 + [True]
    for r in nde.Result:  # failures say what to try
        if nde.Result.succeeded(r):
            continue
        assert "neuralode." in r.message() and len(r.message()) > 80
    with pytest.raises(ValueError):
        nde.Result.describe(17)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

Y0 = jnp.ones(2)
TS = jnp.array([0.0, 1.0])


@pytest.mark.parametrize(
    ("ts", "match"),
    [
        (jnp.array(1.0), "1-D"),
        (jnp.zeros((2, 2)), "1-D"),
        (jnp.zeros((0,)), "at least one"),
        (jnp.array([0.0, 1.0, 1.0, 2.0]), "strictly"),
        (jnp.array([0.0, 2.0, 1.0]), "strictly"),
        (jnp.array([0.0, jnp.nan]), "strictly"),
    ],
)
def test_bad_ts(ts, match):
    with pytest.raises(ValueError, match=match):
        nde.odeint(decay, Y0, ts)


def test_complex_ts_rejected():
    with pytest.raises(TypeError, match="real numbers"):
        nde.odeint(decay, Y0, jnp.array([0.0, 1.0j]))


def test_traced_bad_ts_and_tolerances_raise_at_run_time():
    @jax.jit
    def solve(ts, rtol):
        return nde.odeint(decay, Y0, ts, rtol=rtol).ys

    jax.block_until_ready(solve(jnp.array([0.0, 1.0, 2.0]), 1e-6))
    with pytest.raises(Exception, match="strictly increasing or strictly decreasing"):
        jax.block_until_ready(solve(jnp.array([0.0, 2.0, 1.0]), 1e-6))
    with pytest.raises(Exception, match="`rtol` and `atol` must be positive"):
        jax.block_until_ready(solve(jnp.array([0.0, 1.0, 2.0]), -1e-6))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": 0.0}, "`rtol` must be positive"),
        ({"rtol": -1e-6}, "`rtol` must be positive"),
        ({"rtol": float("nan")}, "`rtol` must be positive"),
        ({"atol": 0.0}, "`atol` must be positive"),
        ({"atol": -1.0}, "`atol` must be positive"),
        ({"rtol": jnp.array([1e-6, 1e-6])}, "`rtol` must be a scalar"),
    ],
)
def test_bad_tolerances(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nde.odeint(decay, Y0, TS, **kwargs)


@pytest.mark.parametrize(
    ("f", "y0", "match"),
    [
        (lambda t, y, a: (y["a"],), {"a": jnp.ones(2)}, "same structure"),
        (lambda t, y, a: {"b": y["a"]}, {"a": jnp.ones(2)}, "same structure"),
        (lambda t, y, a: jnp.ones(3), jnp.ones(2), r"shape \(3,\)"),
        (
            lambda t, y, a: {"a": -y["a"], "b": jnp.ones((2, 1))},
            {"a": jnp.ones(2), "b": jnp.ones(2)},
            r"\['b'\]",
        ),
        (lambda t, y, a: y.astype(jnp.float32), jnp.ones(2), "dtype float32"),
        (lambda t, y, a: -y, jnp.ones(2, jnp.float32), None),  # weak-typed: fine
    ],
)
def test_f_output_must_match_y0(f, y0, match):
    if match is None:
        sol = nde.odeint(f, y0, TS)
        assert sol.ys.dtype == jnp.float32
        return
    with pytest.raises(ValueError, match=match):
        nde.odeint(f, y0, TS)


def test_errors_inside_f_are_annotated():
    def broken(t, y, args):
        return y @ jnp.ones((5, 5))

    with pytest.raises(TypeError) as info:
        nde.odeint(broken, Y0, TS)
    assert any("neuralode.odeint" in note for note in getattr(info.value, "__notes__", []))


def test_integer_y0_is_promoted_not_truncated():
    big = 2**40 + 1  # exactly representable in float64, not in float32
    sol = nde.odeint(lambda t, y, a: jnp.zeros_like(y), jnp.array([1, -2, big]), TS)
    assert sol.ys.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(sol.ys[-1]), [1.0, -2.0, float(big)])
    sol = nde.odeint(decay, 3, TS, rtol=1e-10, atol=1e-10)  # a Python int
    np.testing.assert_allclose(np.asarray(sol.ys), 3.0 * np.exp(-np.asarray(TS)), rtol=1e-8)
    sol = nde.odeint(decay, {"a": jnp.array([True, False]), "b": 2.5}, TS)
    np.testing.assert_array_equal(np.asarray(sol.ys["a"][0]), [1.0, 0.0])
    assert sol.ys["a"].dtype == jnp.float64


@pytest.mark.parametrize("y0", [jnp.array([1.0 + 1.0j]), {"a": jnp.ones(2), "z": 1j}])
def test_complex_y0_rejected(y0):
    with pytest.raises(TypeError, match="complex"):
        nde.odeint(decay, y0, TS)


@pytest.mark.parametrize("y0", [{}, None, ()])
def test_empty_y0_rejected(y0):
    with pytest.raises(ValueError, match="no array leaves"):
        nde.odeint(decay, y0, TS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "tsit5"}, "`solver` must be a solver instance.*'tsit5'"),
        ({"solver": nde.Tsit5}, r"class Tsit5 itself; pass an instance, solver=nde.Tsit5\(\)"),
        ({"solver": None}, "`solver` must be a solver instance"),
        ({"controller": "pi"}, "`controller` must be a nde.PIController"),
        ({"controller": nde.PIController}, r"controller=nde.PIController\(\)"),
        ({"controller": {"beta": 0.0}}, "`controller` must be a nde.PIController"),
        ({"adjoint": "backsolve"}, "`adjoint` must be"),
        ({"adjoint": nde.BacksolveAdjoint}, r"adjoint=nde.BacksolveAdjoint\(\)"),
        ({"throw": 1}, "`throw` must be True or False"),
    ],
)
def test_bad_options_raise_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        nde.odeint(decay, Y0, TS, **kwargs)


def test_f_must_be_callable():
    with pytest.raises(TypeError, match="`f` must be callable"):
        nde.odeint(3.0, Y0, TS)


def test_f_with_the_wrong_signature_says_how_to_write_it():
    with pytest.raises(TypeError, match=r"`f` must take three positional arguments \(t, y, args\)"):
        nde.odeint(lambda t, y: -y, Y0, TS)
    ev = nde.Event(lambda t, y: y[0])
    with pytest.raises(TypeError, match="event 0's `cond_fn` must take three positional"):
        nde.odeint(decay, Y0, TS, event=ev)
    # Defaults, *args and callable modules are fine.
    nde.odeint(lambda t, y, args=None, scale=1.0: -scale * y, Y0, TS)
    nde.odeint(lambda *a: -a[1], Y0, TS)


@pytest.mark.parametrize("max_steps", [0, -5, 2.5, True, "100"])
def test_bad_max_steps(max_steps):
    with pytest.raises(ValueError, match="`max_steps` must be a positive int"):
        nde.odeint(decay, Y0, TS, max_steps=max_steps)


@pytest.mark.parametrize(
    ("solver", "dt0", "match"),
    [
        (nde.RK4(), None, "needs `dt0`"),
        (nde.Euler(), 0.0, "`dt0` must be non-zero"),
        (nde.Tsit5(), 0.0, "`dt0` must be non-zero"),
        (nde.Tsit5(), jnp.ones(2), "`dt0` must be a scalar"),
    ],
)
def test_bad_dt0(solver, dt0, match):
    with pytest.raises(ValueError, match=match):
        nde.odeint(decay, Y0, TS, solver=solver, dt0=dt0)


def test_fixed_step_needs_concrete_ts():
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda ts: nde.odeint(decay, Y0, ts, solver=nde.RK4(), dt0=0.1).ys)(TS)
