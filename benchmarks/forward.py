"""Forward-solve benchmark: neuralode vs diffrax vs jax.experimental.ode vs a fixed-step floor.

    .venv/bin/python -m benchmarks.forward [--quick]

Cases: (a) 2-64-64-2 tanh MLP on a (256, 2) batch and (b) 64-512-64 tanh MLP on a (512, 64)
batch (float32, rtol 1e-3, atol 1e-6, t in [0, 1]); (c) Van der Pol, mu = 1, t in [0, 20],
rtol = atol = 1e-6; (d) Lorenz, t in [0, 10], rtol = atol = 1e-8 (float64). Every method is
one jitted call returning the outputs at the same ``ts``; methods are timed round-robin in the
same run. The "floor" is a bare ``lax.fori_loop`` of the same Runge-Kutta stages with the same
number of steps (so the same NFE) as neuralode's solve, without error control or dense output.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import neuralode as nde
from benchmarks import _common as C

SOLVERS = {"Tsit5": nde.Tsit5(), "Dopri5": nde.Dopri5()}


def _methods(prob):
    """name -> (builder taking the vector field, solver name)."""
    m = {}
    for s, solver in SOLVERS.items():
        m[f"neuralode {s}"] = (lambda f, solver=solver: C.ours_solve(f, prob, solver), s)
    # Our solver with diffrax's default controller (integral only): same steps as diffrax.
    m["neuralode Tsit5, PIController(beta=0)"] = (
        lambda f: C.ours_solve(f, prob, SOLVERS["Tsit5"], controller=nde.PIController(beta=0.0)),
        "Tsit5",
    )
    for s in SOLVERS:
        m[f"diffrax {s}"] = (lambda f, s=s: C.diffrax_solve(f, prob, s), s)
    m["jax.experimental.ode"] = (lambda f: C.jaxode_solve(f, prob), "Dopri5")
    m["minimal adaptive Tsit5 (hand-written)"] = (lambda f: _minimal(f, prob), "Tsit5")
    return m


def _minimal(f, prob):
    tab = SOLVERS["Tsit5"].tableau
    solve = C.minimal_adaptive(tab, f, prob.ts, prob.rtol, prob.atol, prob.max_steps)

    def run(y0, args):
        ys, n = solve(y0, args)
        return ys, jnp.stack([n, 1 + (tab.num_stages - 1) * n])

    return run


def run_case(prob: C.Problem, repeats: int, budget_s: float, log=print):
    ref = C.scipy_reference(prob)
    y0, args = prob.y0, prob.args
    results = {}
    compiled = {}
    for name, (build, solver) in _methods(prob).items():
        c = C.compile_fn(build(prob.f), y0, args)
        ys, (steps, nfe) = c.call(y0, args)
        ys = np.asarray(ys, np.float64).reshape(len(prob.ts), -1)
        err = float(np.max(np.abs(ys - ref)))
        if int(nfe) < 0:  # the peer does not report it: count the evaluations
            nfe = C.count_nfe(build, prob.f, y0, args)
        results[name] = dict(
            name=name, solver=solver, steps=int(steps), nfe=int(nfe), err=err,
            trace_s=c.trace_lower_s, compile_s=c.compile_s, first_s=c.first_call_s,
        )
        compiled[name] = c
        log(f"  {prob.key}: compiled {name}: steps {int(steps)}, nfe {int(nfe)}, err {err:.2e}, "
            f"compile {c.total_compile_s:.2f}s")
    # Floors: same stages, same number of steps as our solve.
    t0, t1 = prob.ts[0], prob.ts[-1]
    for s, solver in SOLVERS.items():
        n = results[f"neuralode {s}"]["steps"]
        name = f"floor {s}"
        floor = C.fixed_step_floor(solver.tableau, prob.f, n)
        c = C.compile_fn(lambda y0, args, floor=floor: floor(y0, t0, t1, args), y0, args)
        y1 = np.asarray(c.call(y0, args), np.float64).reshape(-1)
        results[name] = dict(
            name=name, solver=s, steps=n, nfe=1 + (solver.tableau.num_stages - 1) * n,
            err=float(np.max(np.abs(y1 - ref[-1]))), trace_s=c.trace_lower_s,
            compile_s=c.compile_s, first_s=c.first_call_s,
        )
        compiled[name] = c
    # A trivial jitted call on the same arguments: the fixed cost of dispatching any call.
    compiled["dispatch"] = C.compile_fn(lambda y0, args: y0 * 2, y0, args)
    times = C.interleaved(compiled, repeats, budget_s)
    dispatch = times.pop("dispatch")
    for name, ts in times.items():
        results[name]["median_s"] = C.median(ts)
        results[name]["min_s"] = min(ts)
        results[name]["iqr"] = C.spread(ts)
        results[name]["repeats"] = len(ts)
    return {"methods": results, "dispatch_s": C.median(dispatch)}


def ratios(results, stat="median_s"):
    r = {}
    for s in SOLVERS:
        ours, dfx, floor = (results[f"{k} {s}"] for k in ("neuralode", "diffrax", "floor"))
        r[f"ours/diffrax {s}"] = ours[stat] / dfx[stat]
        r[f"ours/floor {s}"] = ours[stat] / floor[stat]
        r[f"diffrax/floor {s}"] = dfx[stat] / floor[stat]
    r["jax.experimental.ode/floor Dopri5"] = (
        results["jax.experimental.ode"][stat] / results["floor Dopri5"][stat]
    )
    return r


def case_markdown(prob, case) -> str:
    results = case["methods"]
    rows = []
    for res in results.values():
        floor = results[f"floor {res['solver']}"]
        per_nfe = (res["median_s"] / res["nfe"]) / (floor["median_s"] / floor["nfe"])
        is_floor = res["name"].startswith("floor")
        rows.append([
            res["name"], res["median_s"] * 1e3, res["min_s"] * 1e3, res["iqr"],
            res["median_s"] / floor["median_s"], per_nfe, res["trace_s"], res["compile_s"],
            res["steps"] if res["steps"] >= 0 else "?", res["nfe"],
            f"({C.fmt(res['err'])} at t1)" if is_floor else res["err"],
        ])
    headers = ["method", "median ms", "min ms", "IQR/median", "× floor (same solver)",
               "per-NFE × floor", "trace+lower s", "compile s", "steps", "NFE",
               "max abs error"]
    reps = min(r["repeats"] for r in results.values())
    note = (f"{reps} interleaved rounds; a trivial jitted call on the same arguments takes "
            f"{case['dispatch_s'] * 1e3:.3f} ms (dispatch overhead, included in every row).")
    return f"#### {prob.title}\n\n" + C.md_table(headers, rows) + "\n\n" + note


def problems(quick: bool):
    if quick:
        return [C.mlp_problem("a"), C.vdp_problem()]
    return [C.mlp_problem("a"), C.mlp_problem("b"), C.vdp_problem(), C.lorenz_problem()]


def main(quick: bool = False, log=print):
    repeats, budget = (9, 3.0) if quick else (61, 12.0)
    out = {}
    for prob in problems(quick):
        log(f"forward: {prob.title}")
        out[prob.key] = (prob, run_case(prob, repeats, budget, log=log))
    return out


def markdown(out) -> str:
    parts = []
    keys = list(SOLVERS)
    headers = (["case"] + [f"ours/diffrax {s}" for s in keys] + [f"ours/floor {s}" for s in keys]
               + [f"diffrax/floor {s}" for s in keys] + ["jax.exp.ode/floor Dopri5"])
    for stat, label in (("median_s", "median"), ("min_s", "minimum")):
        rows = []
        for prob, case in out.values():
            r = ratios(case["methods"], stat)
            rows.append(
                [prob.short]
                + [r[f"ours/diffrax {s}"] for s in keys]
                + [r[f"ours/floor {s}"] for s in keys]
                + [r[f"diffrax/floor {s}"] for s in keys]
                + [r["jax.experimental.ode/floor Dopri5"]]
            )
        parts.append(f"### Ratios of {label} wall times\n\n" + C.md_table(headers, rows))
    rows = []
    for prob, case in out.values():
        res = case["methods"]
        row = [prob.short]
        for name in ("neuralode Tsit5", "diffrax Tsit5", "neuralode Dopri5", "diffrax Dopri5",
                     "jax.experimental.ode"):
            row.append(f"{res[name]['trace_s']:.2f} + {res[name]['compile_s']:.2f}")
        rows.append(row)
    parts.append("### Compile times (trace+lower s + XLA compile s)\n\n" + C.md_table(
        ["case", "neuralode Tsit5", "diffrax Tsit5", "neuralode Dopri5", "diffrax Dopri5",
         "jax.experimental.ode"], rows))
    parts.append("### Per case")
    for prob, case in out.values():
        parts.append(case_markdown(prob, case))
    return "\n\n".join(parts)


if __name__ == "__main__":
    C.run_cli("forward", __doc__, main, markdown)
