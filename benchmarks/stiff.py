"""Stiff-solver benchmark: neuralode Rodas5 / Kvaerno5 vs diffrax Kvaerno5, scipy Radau / BDF.

    .venv/bin/python -m benchmarks.stiff [--quick] [--repeats N]

The four Hairer-Wanner stiff problems (float64), each at the tolerances of issue #15: Robertson
on [0, 1e5] (rtol 1e-6, atol 1e-10), VDPOL with epsilon = 1e-6 on [0, 2] (rtol = atol = 1e-6),
HIRES on [0, 321.8122] (rtol 1e-6, atol 1e-8), Oregonator on [0, 360] (rtol 1e-6, atol 1e-8).
Every JAX method is one jitted call returning the solution at the final time; compile time is
excluded and reported separately; the JAX methods are timed round-robin (interleaved) and the
median is reported. diffrax runs ``diffrax.Kvaerno5()`` with ``PIDController(rtol, atol)`` (its
defaults otherwise, ``max_steps=200_000``). scipy's ``solve_ivp`` (Radau, BDF) gets a NumPy
vector field and its analytic Jacobian, and is timed the same number of times.

The problems (fields, Jacobians, tolerances, references) are ``benchmarks/stiff_problems.py``,
which the tests share. Accuracy: the error at the final time against the stored Radau
reference (rtol 1e-12), as a multiple of the tolerance,
``max_i |y_i - ref_i| / (atol + rtol |ref_i|)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from benchmarks import _common as C
from benchmarks.stiff_problems import PROBLEMS

OURS = {"neuralode Rodas5": nde.Rodas5(), "neuralode Kvaerno5": nde.Kvaerno5()}


def _ours(f, solver, t_end, args, rtol, atol):
    def run(y0):
        sol = nde.odeint(f, y0, jnp.array([0.0, t_end]), args, solver=solver, rtol=rtol,
                         atol=atol, max_steps=200_000, throw=False)
        return sol.ys[-1], sol.stats, sol.result

    return run


def _diffrax(f, t_end, args, rtol, atol):
    import diffrax as dfx

    def run(y0):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(f), dfx.Kvaerno5(), 0.0, t_end, None, y0, args=args,
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol), max_steps=200_000,
            saveat=dfx.SaveAt(t1=True), throw=False,
        )
        stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps",
                                           "num_rejected_steps")}
        return sol.ys[-1], stats, sol.result._value

    return run


def _scipy(method, f_np, jac_np, y0, args, t_end, rtol, atol):
    from scipy.integrate import solve_ivp

    def run():
        return solve_ivp(lambda t, y: f_np(t, y, args), (0.0, t_end), np.asarray(y0),
                         method=method, rtol=rtol, atol=atol,
                         jac=lambda t, y: jac_np(t, y, args))

    return run


def _multiple(y, ref, rtol, atol):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(y)):
        return float("nan")
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


def bench(name, repeats):
    f, f_np, jac_np, y0, args, t_end, rtol, atol, ref = PROBLEMS[name]
    y0 = jnp.asarray(y0)
    jargs = None if args is None else jnp.asarray(args)
    builders = {k: _ours(f, s, t_end, jargs, rtol, atol) for k, s in OURS.items()}
    builders["diffrax Kvaerno5"] = _diffrax(f, t_end, jargs, rtol, atol)
    compiled = {k: C.compile_fn(b, y0) for k, b in builders.items()}
    times = C.interleaved(compiled, repeats)
    rows = []
    for k, c in compiled.items():
        y, stats, result = c.call(*c.args)
        ok = int(result) == 0
        stats = {s: int(v) for s, v in stats.items()}
        steps = stats["num_steps"]
        rows.append([
            k, C.median(times[k]) * 1e3, c.total_compile_s, steps if ok else f"failed ({steps})",
            stats.get("num_rejected", stats.get("num_rejected_steps")),
            stats.get("nfe", "—"), stats.get("njev", "—"), stats.get("nlinsolve", "—"),
            _multiple(y, ref, rtol, atol) if ok else "—",
        ])
    for method in ("Radau", "BDF"):
        run = _scipy(method, f_np, jac_np, y0, args, t_end, rtol, atol)
        ts_ = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            res = run()
            ts_.append(time.perf_counter() - t0)
        rows.append([f"scipy {method}", statistics.median(ts_) * 1e3, "—",
                     len(res.t) - 1, "—", res.nfev, res.njev, res.nlu,
                     _multiple(res.y[:, -1], ref, rtol, atol)])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stiff",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default=None, help="one problem name")
    opts = parser.parse_args(argv)
    repeats = opts.repeats or (3 if opts.quick else 15)
    print("# Stiff solvers\n")
    info = C.machine_info()
    print(", ".join(f"{k}: {v}" for k, v in info.items() if k in (
        "date", "cpu", "cpu count", "jax", "diffrax", "scipy", "load average (before)")))
    print()
    headers = ["method", "time (ms)", "compile (s)", "steps", "rejected", "NFE", "Jacobians",
               "linear solves (scipy: LU)", "error / tol"]
    for name in PROBLEMS:
        if opts.only and name != opts.only:
            continue
        f, _, _, _, _, t_end, rtol, atol, _ = PROBLEMS[name]
        print(f"## {name} (t_end {t_end}, rtol {rtol:g}, atol {atol:g})\n")
        print(C.md_table(headers, bench(name, repeats)))
        print()
        sys.stdout.flush()
    jax.clear_caches()


if __name__ == "__main__":
    main()
