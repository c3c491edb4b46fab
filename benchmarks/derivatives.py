"""Derivative benchmark: forward mode and second order, neuralode's modes vs diffrax.

    .venv/bin/python -m benchmarks.derivatives [--quick] [--json out.json]

On the MLP field 2-64-64-2 (tanh, float32, t in [0, 1], 11 output times, Tsit5, rtol 1e-3,
atol 1e-6), a batch of 64 initial states ``vmap`` ped (each its own steps):

1. **Flow Jacobian** ``jax.jacfwd`` of the states at all output times w.r.t. the initial state
   (2 tangents per sample): ``nde.ForwardMode()`` vs ``diffrax.ForwardMode()``.
2. **Hessian-vector product** ``jax.jvp(jax.grad(L))`` w.r.t. the field's parameters
   (forward-over-reverse), ``L = Σ y(t1)²``: every neuralode mode vs diffrax's
   ``DirectAdjoint`` (the only diffrax adjoint that supports it).
3. **Gradient of a gradient** ``jax.grad(||∇_θ L||²)`` (reverse-over-reverse), same modes.

Compiled once per method, timed round-robin (medians), results checked against each other
(relative difference to diffrax printed, so a wrong derivative is visible).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from benchmarks import _common as C

SIZES = (2, 64, 64, 2)
BATCH = 64
TS = jnp.linspace(0.0, 1.0, 11, dtype=jnp.float32)
RTOL, ATOL = 1e-3, 1e-6
MODES = {
    "CheckpointAdjoint": nde.CheckpointAdjoint(),
    "BacksolveAdjoint": nde.BacksolveAdjoint(),
    "InterpolatedAdjoint": nde.InterpolatedAdjoint(),
    "ForwardMode": nde.ForwardMode(),
}


def field(t, y, params):
    return C.mlp_field(t, y[None, :], params)[0]


def problem():
    params = C._mlp_params(jax.random.PRNGKey(0), SIZES, 3.0, jnp.float32)
    y0s = jax.random.normal(jax.random.PRNGKey(1), (BATCH, SIZES[0]), jnp.float32)
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype), params)
    return params, y0s, v


def ours(adjoint):
    def solve(y0, params):
        return nde.odeint(field, y0, TS, params, rtol=RTOL, atol=ATOL, adjoint=adjoint).ys

    return solve


def diffrax_solve(adjoint):
    import diffrax

    def solve(y0, params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), t0=TS[0], t1=TS[-1], dt0=None, y0=y0,
            args=params, saveat=diffrax.SaveAt(ts=TS),
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL), max_steps=4096,
            adjoint=adjoint,
        )
        return sol.ys

    return solve


def jacobian_fn(solve):
    return jax.vmap(jax.jacfwd(solve), in_axes=(0, None))


def loss_fn(solve):
    def loss(params, y0s):
        return jnp.sum(jax.vmap(solve, in_axes=(0, None))(y0s, params)[:, -1] ** 2)

    return loss


def hvp_fn(solve):
    loss = loss_fn(solve)

    def hvp(params, y0s, v):
        return jax.jvp(lambda p: jax.grad(loss)(p, y0s), (params,), (v,))[1]

    return hvp


def gradgrad_fn(solve):
    loss = loss_fn(solve)

    def penalty(params, y0s):
        g = jax.grad(loss)(params, y0s)
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(g))

    return jax.grad(penalty)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _rel(a, b):
    a, b = _flat(a), _flat(b)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def run_case(name, builders, args, repeats, budget_s, log):
    compiled, rows = {}, []
    for label, build in builders.items():
        try:
            compiled[label] = C.compile_fn(build, *args)
        except Exception as err:  # an unsupported composition is a result, not a crash
            rows.append({"method": label, "error": f"{type(err).__name__}: {str(err)[:120]}"})
            log(f"  {name} {label}: {type(err).__name__}")
    times = C.interleaved(compiled, repeats, budget_s)
    ref_label = next(k for k in compiled if k.startswith("diffrax"))
    ref = compiled[ref_label].call(*args)
    for label, c in compiled.items():
        out = c.call(*args)
        rows.append({
            "method": label,
            "median_ms": 1e3 * C.median(times[label]),
            "min_ms": 1e3 * min(times[label]),
            "compile_s": c.total_compile_s,
            "rel_diff": _rel(out, ref),
        })
        log(f"  {name} {label}: {rows[-1]['median_ms']:.1f} ms")
    base = next(r["median_ms"] for r in rows if r["method"] == ref_label)
    for r in rows:
        if "median_ms" in r:
            r["ratio"] = r["median_ms"] / base
    return {"case": name, "reference": ref_label, "rows": rows}


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.derivatives",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", help="write the results here")
    opts = parser.parse_args()
    import diffrax

    params, y0s, v = problem()
    repeats, budget = (5, 10.0) if opts.quick else (15, 40.0)
    t0 = time.perf_counter()
    cases = []
    jac = {f"ours {k}": (lambda s: lambda y, p: jacobian_fn(s)(y, p))(ours(m))
           for k, m in MODES.items() if k == "ForwardMode"}
    jac["diffrax ForwardMode"] = jacobian_fn(diffrax_solve(diffrax.ForwardMode()))
    cases.append(run_case("flow Jacobian (jacfwd)", jac, (y0s, params), repeats, budget, print))
    # ForwardMode's reverse mode costs one tangent per parameter (4482 here): not a contender
    # for second derivatives w.r.t. a network's parameters, so it is left out of these two.
    reverse = {k: m for k, m in MODES.items() if k != "ForwardMode"}
    hvp = {f"ours {k}": hvp_fn(ours(m)) for k, m in reverse.items()}
    hvp["diffrax DirectAdjoint"] = hvp_fn(diffrax_solve(diffrax.DirectAdjoint()))
    cases.append(run_case("Hessian-vector product (jvp of grad)", hvp, (params, y0s, v),
                          repeats, budget, print))
    gg = {f"ours {k}": gradgrad_fn(ours(m)) for k, m in reverse.items()}
    gg["diffrax DirectAdjoint"] = gradgrad_fn(diffrax_solve(diffrax.DirectAdjoint()))
    cases.append(run_case("gradient of a gradient (grad of grad)", gg, (params, y0s), repeats,
                          budget, print))
    out = {"machine": C.machine_info(), "wall_s": time.perf_counter() - t0, "cases": cases}
    print(render(out))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


def render(data) -> str:
    lines = [
        "## Derivatives: forward mode and second order",
        "",
        f"MLP {'-'.join(map(str, SIZES))} (tanh), float32, batch {BATCH} vmapped, "
        f"{TS.shape[0]} output times on [0, 1], Tsit5, rtol {RTOL:g}, atol {ATOL:g}. "
        "Compile excluded from the times; the ratio is to the diffrax method of the case.",
        "",
    ]
    for case in data["cases"]:
        lines += [f"### {case['case']}", ""]
        rows = []
        for r in case["rows"]:
            if "error" in r:
                rows.append([r["method"], "fails", "", "", "", r["error"]])
            else:
                rows.append([r["method"], r["median_ms"], r["min_ms"], r["ratio"],
                             r["compile_s"], f"{r['rel_diff']:.1e}"])
        lines += [C.md_table(["method", "median ms", "min ms", "ratio", "compile s",
                              f"rel. diff to {case['reference']}"], rows), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
