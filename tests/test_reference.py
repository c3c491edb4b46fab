"""Agreement with reference solutions on classic non-stiff problems, and NFE against diffrax.

Reference: scipy's ``solve_ivp(method="DOP853", rtol=1e-12, atol=1e-12)`` (itself checked against
the exact solution where one is known). Our solves use ``rtol = atol = 1e-10`` in float64.

Error measure (RMS-relative): with ``y_i`` and ``r_i`` our and the reference state at the output
times ``t_i`` (``i = 0..N-1``), ``err = sqrt(mean_i(|y_i - r_i|² / |r_i|²))`` with the Euclidean
norm over the state components: the relative error of the state vector at each output time,
averaged in the RMS sense over the output times.

Compile once. Every problem is embedded into one common 12-dimensional state by *replicating* its
``d``-dimensional state ``12/d`` times (``d`` = 2, 3 or 4 divides 12) and a traced problem index
picks the vector field with ``lax.switch``. The RMS error norm of the replicated state equals
that of the original state (up to rounding), so every step, and every NFE, is the original
problem's (``test_embedding_is_transparent`` checks this), while one compiled function per
(solver, controller) serves every problem and tolerance: ``rtol``/``atol`` are traced too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg, special
from scipy.integrate import solve_ivp

import neuralode as nde

DIM = 12  # common embedding dimension (a multiple of every problem's dimension)
NUM_OUT = 41  # output times per problem
TOL = 1e-10  # our tolerance
REF_TOL = 1e-12  # scipy's tolerance
MAX_REL_ERR = 1e-7
NFE_TOLS = (1e-6, 1e-8, 1e-10)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    f: Callable  # f(t, y, xp) with y[..., i] the components; xp is numpy or jax.numpy
    y0: tuple[float, ...]
    span: tuple[float, float]
    exact: Callable | None = None  # exact(ts) -> (N, d), when known

    @property
    def dim(self) -> int:
        return len(self.y0)


def _stack(xp, *cols):
    return xp.stack(cols, axis=-1)


_ROT = np.array([[0.0, -1.0], [1.0, 0.0]])
_A3 = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
_NU = 2.0  # Bessel order
_E = 0.5  # Kepler eccentricity
_MU = 0.012277471  # Arenstorf: moon/earth mass ratio
_ARENSTORF_T = 17.0652165601579625588917206249  # period of the Arenstorf orbit


def _linear(a):
    def f(t, y, xp):
        return y @ xp.asarray(a).T

    return f


def _vdp(t, y, xp):  # Van der Pol, mu = 1
    x, v = y[..., 0], y[..., 1]
    return _stack(xp, v, (1 - x * x) * v - x)


def _lorenz(t, y, xp):
    x, u, z = y[..., 0], y[..., 1], y[..., 2]
    return _stack(xp, 10.0 * (u - x), x * (28.0 - z) - u, x * u - 8.0 / 3.0 * z)


def _kepler(t, y, xp):
    x, u, vx, vy = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    r3 = (x * x + u * u) ** 1.5
    return _stack(xp, vx, vy, -x / r3, -u / r3)


def _lotka_volterra(t, y, xp):
    x, u = y[..., 0], y[..., 1]
    return _stack(xp, 1.5 * x - x * u, -3.0 * u + x * u)


def _bessel(t, y, xp):  # t² y'' + t y' + (t² - ν²) y = 0, for t >= 1
    x, v = y[..., 0], y[..., 1]
    return _stack(xp, v, -v / t - (1.0 - _NU**2 / t**2) * x)


def _brusselator(t, y, xp):  # A = 1, B = 3 (limit cycle, not stiff)
    x, u = y[..., 0], y[..., 1]
    return _stack(xp, 1.0 + x * x * u - 4.0 * x, 3.0 * x - x * x * u)


def _duffing(t, y, xp):  # forced, damped double-well Duffing oscillator
    x, v = y[..., 0], y[..., 1]
    return _stack(xp, v, -0.2 * v + x - x**3 + 0.3 * xp.cos(1.2 * t))


def _pendulum(t, y, xp):
    x, v = y[..., 0], y[..., 1]
    return _stack(xp, v, -xp.sin(x))


def _arenstorf(t, y, xp):  # restricted three-body problem (Hairer, Nørsett, Wanner I, II.0)
    x, u, vx, vy = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    m1 = 1.0 - _MU
    d1 = ((x + _MU) ** 2 + u * u) ** 1.5
    d2 = ((x - m1) ** 2 + u * u) ** 1.5
    ax = x + 2.0 * vy - m1 * (x + _MU) / d1 - _MU * (x - m1) / d2
    ay = u - 2.0 * vx - m1 * u / d1 - _MU * u / d2
    return _stack(xp, vx, vy, ax, ay)


def _exact_linear(a, y0):
    return lambda ts: np.stack([linalg.expm(a * (t - ts[0])) @ np.asarray(y0) for t in ts])


def _exact_bessel(ts):
    return np.stack([special.jv(_NU, ts), special.jvp(_NU, ts)], axis=1)


def _exact_kepler(ts):
    # Orbit with semi-major axis 1 starting at perihelion: solve Kepler's equation E - e sin E = t.
    big_e = np.asarray(ts, dtype=np.float64).copy()
    for _ in range(50):
        big_e = big_e - (big_e - _E * np.sin(big_e) - ts) / (1 - _E * np.cos(big_e))
    c, s = np.cos(big_e), np.sin(big_e)
    edot = 1.0 / (1 - _E * c)
    b = np.sqrt(1 - _E**2)
    return np.stack([c - _E, b * s, -s * edot, b * c * edot], axis=1)


_Y_ROT = (1.0, 0.0)
_Y_LIN3 = (1.0, 0.5, -1.0)
PROBLEMS = [
    Problem("rotation", _linear(_ROT), _Y_ROT, (0.0, 10.0), _exact_linear(_ROT, _Y_ROT)),
    Problem("linear3d", _linear(_A3), _Y_LIN3, (0.0, 5.0), _exact_linear(_A3, _Y_LIN3)),
    Problem("van_der_pol", _vdp, (2.0, 0.0), (0.0, 10.0)),
    Problem("lorenz", _lorenz, (1.0, 1.0, 1.0), (0.0, 2.0)),
    Problem(
        "kepler",
        _kepler,
        (1.0 - _E, 0.0, 0.0, float(np.sqrt((1 + _E) / (1 - _E)))),
        (0.0, 2 * np.pi),
        _exact_kepler,
    ),
    Problem("lotka_volterra", _lotka_volterra, (1.0, 1.0), (0.0, 10.0)),
    Problem(
        "bessel",
        _bessel,
        (float(special.jv(_NU, 1.0)), float(special.jvp(_NU, 1.0))),
        (1.0, 15.0),
        _exact_bessel,
    ),
    Problem("brusselator", _brusselator, (1.5, 3.0), (0.0, 10.0)),
    Problem("duffing", _duffing, (1.0, 0.0), (0.0, 10.0)),
    Problem("pendulum", _pendulum, (2.0, 0.0), (0.0, 10.0)),
    Problem(
        "arenstorf",
        _arenstorf,
        (0.994, 0.0, 0.0, -2.00158510637908252240537862224),
        (0.0, 0.5 * _ARENSTORF_T),
    ),
]
NAMES = [p.name for p in PROBLEMS]
INDEX = {p.name: i for i, p in enumerate(PROBLEMS)}
assert all(DIM % p.dim == 0 for p in PROBLEMS)


def _ts(p: Problem) -> np.ndarray:
    return np.linspace(p.span[0], p.span[1], NUM_OUT)


def _embed(p: Problem) -> jnp.ndarray:
    return jnp.asarray(np.tile(np.asarray(p.y0), DIM // p.dim))


def _branch(p: Problem):
    def g(t, y):
        return p.f(t, y.reshape(-1, p.dim), jnp).reshape(-1)

    return g


_BRANCHES = [_branch(p) for p in PROBLEMS]


def _switch_field(t, y, index):
    return jax.lax.switch(index, _BRANCHES, t, y)


def rms_relative_error(ys, ref) -> float:
    ys, ref = np.asarray(ys), np.asarray(ref)
    num = np.sum((ys - ref) ** 2, axis=1)
    den = np.sum(ref**2, axis=1)
    return float(np.sqrt(np.mean(num / den)))


@functools.cache
def _reference(name: str) -> np.ndarray:
    p = PROBLEMS[INDEX[name]]
    sol = solve_ivp(
        lambda t, y: p.f(t, y, np),
        p.span,
        np.asarray(p.y0),
        method="DOP853",
        rtol=REF_TOL,
        atol=REF_TOL,
        t_eval=_ts(p),
    )
    assert sol.success, sol.message
    return sol.y.T


@functools.cache
def _ours(solver: nde.AbstractSolver, controller: nde.PIController):
    @jax.jit
    def solve(index, y0, ts, rtol, atol):
        sol = nde.odeint(
            _switch_field,
            y0,
            ts,
            index,
            solver=solver,
            rtol=rtol,
            atol=atol,
            controller=controller,
            max_steps=20_000,
        )
        return sol.ys, sol.stats, sol.result

    return solve


DEFAULT_PI = nde.PIController()


def run_ours(name, solver, tol=TOL, controller=DEFAULT_PI):
    p = PROBLEMS[INDEX[name]]
    ys, stats, result = _ours(solver, controller)(
        INDEX[name], _embed(p), jnp.asarray(_ts(p)), tol, tol
    )
    assert int(result) == nde.Result.successful
    ys = np.asarray(ys)
    # The replicated blocks evolve identically (up to rounding): check it, keep the first.
    blocks = ys.reshape(ys.shape[0], -1, p.dim)
    np.testing.assert_allclose(
        blocks, np.broadcast_to(blocks[:, :1], blocks.shape), rtol=1e-13, atol=1e-15
    )
    return blocks[:, 0], {k: int(v) for k, v in stats.items()}


# diffrax: NFE per step of its solvers, and evaluations outside the steps. Counted once with a
# host-callback counter in the vector field (diffrax 0.7.2): Tsit5/Dopri5 are FSAL with 6 new
# evaluations per step, its Dopri8 makes 13 per step, and each solve makes 1 more.
_DFX = {
    "Tsit5": (dfx.Tsit5(), 6),
    "Dopri5": (dfx.Dopri5(), 6),
    "Dopri8": (dfx.Dopri8(), 13),
}


@functools.cache
def _theirs(solver_name: str):
    solver, _ = _DFX[solver_name]
    term = dfx.ODETerm(_switch_field)

    @jax.jit
    def solve(index, y0, ts, rtol, atol):
        sol = dfx.diffeqsolve(
            term,
            solver,
            ts[0],
            ts[-1],
            None,
            y0,
            index,
            saveat=dfx.SaveAt(ts=ts),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            max_steps=20_000,
        )
        return sol.ys, sol.stats["num_steps"]

    return solve


def run_theirs(name, solver_name, tol):
    p = PROBLEMS[INDEX[name]]
    ys, num_steps = _theirs(solver_name)(INDEX[name], _embed(p), jnp.asarray(_ts(p)), tol, tol)
    return np.asarray(ys)[:, : p.dim], _DFX[solver_name][1] * int(num_steps) + 1


# --------------------------------------------------------------------------------------
# The reference and the harness


@pytest.mark.parametrize("name", [p.name for p in PROBLEMS if p.exact is not None])
def test_reference_matches_exact_solution(name):
    p = PROBLEMS[INDEX[name]]
    assert rms_relative_error(_reference(name), p.exact(_ts(p))) < 1e-9


def test_embedding_is_transparent():
    """The replicated 12-D embedding takes the same steps as the plain problem."""
    p = PROBLEMS[INDEX["van_der_pol"]]
    sol = nde.odeint(
        lambda t, y, args: p.f(t, y, jnp),
        jnp.asarray(p.y0),
        jnp.asarray(_ts(p)),
        rtol=TOL,
        atol=TOL,
        max_steps=20_000,
    )
    ys, stats = run_ours(p.name, nde.Tsit5())
    assert stats["num_steps"] == int(sol.stats["num_steps"])
    assert stats["nfe"] == int(sol.stats["nfe"])
    np.testing.assert_allclose(ys, np.asarray(sol.ys), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------
# Accuracy


@pytest.mark.parametrize("solver", [nde.Tsit5(), nde.Dopri5(), nde.Dopri8()], ids=repr)
@pytest.mark.parametrize("name", NAMES)
def test_agrees_with_scipy_dop853(name, solver):
    ys, stats = run_ours(name, solver)
    err = rms_relative_error(ys, _reference(name))
    assert err <= MAX_REL_ERR, f"{name} {solver}: RMS-relative error {err:.2e}"
    # Not absurdly many steps either (a controller that ignores the tolerance would pass the
    # accuracy check with tiny steps).
    assert stats["num_steps"] < 5000


# --------------------------------------------------------------------------------------
# Number of function evaluations against diffrax
#
# Same pair, same tolerances, same RMS error norm, same initial-step algorithm (Hairer's), so
# the NFE should agree closely. The remaining differences, and the bounds they justify:
#
# * Controller. diffrax's default PIDController is a pure I controller; ours defaults to a PI
#   controller (Gustafsson form, beta = 0.04 for the fifth-order pairs), whose damping term takes
#   a few more, slightly more accurate steps on some of these problems. The strict comparison
#   therefore uses our `PIController(beta=0.0)`. Even then two rules differ: after an accepted
#   step diffrax never shrinks the step (factor >= 1) while we follow Hairer (and scipy) and
#   shrink when the error ratio is in (safety^(q+1), 1]; after a rejection diffrax caps the factor
#   at `safety`, we at 1 for the next growth. With diffrax's rules patched in, our Tsit5 NFE
#   equals diffrax's to within 0.5% on every problem and tolerance here.
# * Dopri5 error estimate. We use Dormand and Prince's original embedded weights (as Hairer's
#   DOPRI5, scipy's RK45 and MATLAB's ode45 do); diffrax uses another fourth-order embedding
#   whose error weights are exactly 2/3 of these. Our estimate is 1.5x larger, so at equal
#   tolerance we take 1.5^(1/5) ~ 8% more steps (and are correspondingly more accurate).
# * Dopri8 is Hairer's DOP853 (8th order, 5th/3rd order combined estimate, 7th order dense
#   output with 3 extra stages per step that holds an output time); diffrax's Dopri8 is a
#   different 8(7) pair with 13 evaluations per step and a cheaper interpolant. Only the order
#   of magnitude is comparable.
#
# Hence: per (solver, tolerance) the total NFE over all problems is within 10% of diffrax's,
# and every single problem within 20%; the default PI controller within 30%; Dopri8 within 3x.


@functools.cache
def _nfe(solver_name: str, tol: float, name: str) -> dict[str, int]:
    solver = {"Tsit5": nde.Tsit5(), "Dopri5": nde.Dopri5(), "Dopri8": nde.Dopri8()}[solver_name]
    _, theirs = run_theirs(name, solver_name, tol)
    out = {"theirs": theirs, "pi": run_ours(name, solver, tol)[1]["nfe"]}
    if solver_name != "Dopri8":
        out["i"] = run_ours(name, solver, tol, nde.PIController(beta=0.0))[1]["nfe"]
    return out


def _nfe_table(solver_name, tol):
    return {name: _nfe(solver_name, tol, name) for name in NAMES}


# Our I controller (beta = 0) is diffrax's: the same steps within 10% in total and 20% per
# problem. The default PI controller takes other steps, so the bounds are wider (20%, 30%).
@pytest.mark.parametrize(("controller", "total_tol", "each_tol"), [("i", 0.10, 0.20),
                                                                  ("pi", 0.20, 0.30)])
@pytest.mark.parametrize("tol", NFE_TOLS)
@pytest.mark.parametrize("solver_name", ["Tsit5", "Dopri5"])
def test_nfe_close_to_diffrax(solver_name, tol, controller, total_tol, each_tol):
    table = _nfe_table(solver_name, tol)
    ratios = {n: r[controller] / r["theirs"] for n, r in table.items()}
    total = sum(r[controller] for r in table.values()) / sum(r["theirs"] for r in table.values())
    assert abs(total - 1.0) <= total_tol, (total, ratios)
    assert all(abs(r - 1.0) <= each_tol for r in ratios.values()), ratios


@pytest.mark.parametrize("tol", NFE_TOLS)
def test_nfe_dopri8_same_order_of_magnitude_as_diffrax(tol):
    table = _nfe_table("Dopri8", tol)
    ratios = {n: r["pi"] / r["theirs"] for n, r in table.items()}
    assert all(1 / 3 <= r <= 3 for r in ratios.values()), ratios


def nfe_report() -> str:
    """The comparison as a table (``python tests/test_reference.py`` prints it)."""
    lines = [
        f"{'tol':>6} {'problem':<15} "
        + " | ".join(f"{s}: I / PI / diffrax" for s in ("Tsit5", "Dopri5"))
        + " | Dopri8: ours / diffrax"
    ]
    for tol in NFE_TOLS:
        for name in NAMES:
            cells = []
            for s in ("Tsit5", "Dopri5"):
                r = _nfe(s, tol, name)
                cells.append(f"{r['i']:5d} / {r['pi']:5d} / {r['theirs']:5d}")
            r = _nfe("Dopri8", tol, name)
            cells.append(f"{r['pi']:5d} / {r['theirs']:5d}")
            lines.append(f"{tol:6.0e} {name:<15} " + " | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    print(nfe_report())
