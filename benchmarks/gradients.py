"""Gradient benchmark: neuralode's adjoints vs diffrax, jax.experimental.ode and torchdiffeq.

    .venv/bin/python -m benchmarks.gradients [--quick]

Four parts:

1. Speed: median wall time and compile time of ``jax.jit(jax.grad(loss, (y0, args)))`` with
   ``loss = sum(y(t1)**2)`` on the MLP cases (a), (b) and Van der Pol (Tsit5; peers at the same
   tolerances; jax.experimental.ode is Dopri5, the only solver it has), timed round-robin.
   Evaluations of the vector field per gradient (forward + backward, a VJP counting as one)
   are counted by a host callback in one extra, untimed call.
2. Backward NFE of our continuous adjoints with and without the seminorm, from ``stats_probe``.
3. Compiled temporary memory (XLA memory analysis) of the gradient as ``max_steps`` grows.
4. Accuracy of dL/dy0 on Van der Pol and Lorenz against a tight reference (Dopri5 everywhere).
"""

from __future__ import annotations

import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from benchmarks import _common as C

# A gradient whose relative error to a tight reference exceeds this (far more than the
# tolerances of these cases allow: they give 1e-5 to 1e-2) is reported as wrong.
WRONG_ABOVE = 0.1

# --------------------------------------------------------------------------------------
# 1. Speed


def _final_sq(ys):
    return jnp.sum(jnp.square(ys[-1]))


def speed_methods(prob, ts, max_steps):
    """name -> (kind, builder). ``kind`` "ours": builder() -> loss(y0, args, probe) returning
    (L, forward stats); "peer": builder(f) -> loss(y0, args)."""
    import diffrax

    def ours(adjoint):
        def build():
            run = C.ours_solve(prob.f, prob, nde.Tsit5(), adjoint=adjoint, ts=ts,
                               max_steps=max_steps)

            def loss(y0, args, probe):
                ys, stats = run(y0, args, probe)
                return _final_sq(ys), stats

            return loss

        return "ours", build

    def dfx(adjoint):
        def build(f):
            run = C.diffrax_solve(f, prob, "Tsit5", adjoint=adjoint, ts=ts, max_steps=max_steps)
            return lambda y0, args: _final_sq(run(y0, args)[0])

        return "peer", build

    def jaxode(f):
        run = C.jaxode_solve(f, prob, ts=ts, max_steps=max_steps)
        return lambda y0, args: _final_sq(run(y0, args)[0])

    seminorm_ctrl = diffrax.PIDController(
        rtol=prob.rtol, atol=prob.atol, norm=diffrax.adjoint_rms_seminorm
    )
    return {
        "ours BacksolveAdjoint (seminorm)": ours(nde.BacksolveAdjoint()),
        "ours BacksolveAdjoint (full norm)": ours(nde.BacksolveAdjoint(seminorm=False)),
        "ours InterpolatedAdjoint": ours(nde.InterpolatedAdjoint()),
        "ours CheckpointAdjoint": ours(nde.CheckpointAdjoint()),
        "diffrax BacksolveAdjoint": dfx(diffrax.BacksolveAdjoint()),
        "diffrax BacksolveAdjoint (seminorm)": dfx(
            diffrax.BacksolveAdjoint(stepsize_controller=seminorm_ctrl)
        ),
        "diffrax RecursiveCheckpointAdjoint": dfx(diffrax.RecursiveCheckpointAdjoint()),
        "jax.experimental.ode (Dopri5)": ("peer", jaxode),
    }


def _grad(loss):
    return jax.grad(loss, argnums=(0, 1))


def _short_error(err: Exception) -> str:
    text = str(err)
    if "drifted" in text:
        return "raises (drift detected)"
    for key, label in (("max_steps", "max_steps exhausted"), ("dtmin", "step size underflow"),
                       ("max_num_steps", "max_num_steps exceeded"),
                       ("underflow", "step size underflow"), ("non-finite", "non-finite"),
                       ("nonfinite", "non-finite")):
        if key in text:
            return f"raises ({label})"
    return "raises (" + (text.strip().splitlines() or ["?"])[0][:60] + ")"


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def tight_gradient(prob, ts, max_steps):
    """dL/d(y0, args) in float64 from our CheckpointAdjoint with Dopri8 at rtol = atol = 1e-10."""
    y0 = jnp.asarray(prob.y0, jnp.float64)
    args = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), prob.args)

    def loss(y0, args):
        sol = nde.odeint(prob.f, y0, ts.astype(jnp.float64), args, solver=nde.Dopri8(),
                         rtol=1e-10, atol=1e-10, max_steps=max_steps,
                         adjoint=nde.CheckpointAdjoint())
        return _final_sq(sol.ys)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(y0, args)


def speed_case(prob, repeats, budget_s, max_steps, log=print):
    ts = jnp.stack([prob.ts[0], prob.ts[-1]])
    y0, args = prob.y0, prob.args
    probe = jnp.zeros(4, jnp.asarray(y0).dtype)
    results, compiled = {}, {}
    for name, (kind, build) in speed_methods(prob, ts, max_steps).items():
        res = {"name": name}
        results[name] = res
        try:
            if kind == "ours":
                # The probe's cotangent is the backward solve's [steps, accepted, rejected, nfe].
                fn = jax.grad(build(), argnums=(0, 1, 2), has_aux=True)
                c = C.compile_fn(fn, y0, args, probe)
                (g_y0, g_args, bstats), fstats = c.call(y0, args, probe)
                res["nfe_total"] = int(fstats[1]) + int(round(float(bstats[3])))
                res["grad"] = (g_y0, g_args)
            else:
                c = C.compile_fn(_grad(build(prob.f)), y0, args)
                res["grad"] = c.call(y0, args)
                res["nfe_total"] = C.count_nfe(lambda f, b=build: _grad(b(f)), prob.f, y0, args)
        except Exception as err:  # noqa: BLE001 - a failed method is a result, never hidden
            res["status"] = _short_error(err)
            log(f"  {prob.key}: {name}: {res['status']}")
            continue
        res.update(status="ok", trace_s=c.trace_lower_s, compile_s=c.compile_s)
        compiled[name] = c
        log(f"  {prob.key}: compiled {name} in {c.total_compile_s:.2f}s, "
            f"NFE fwd+bwd {res['nfe_total']}")
    times = C.interleaved(compiled, repeats, budget_s)
    for name, ts_ in times.items():
        results[name].update(median_s=C.median(ts_), min_s=min(ts_), iqr=C.spread(ts_),
                             repeats=len(ts_))
    # Error of each gradient against a tight float64 reference.
    ref_flat = _flat(tight_gradient(prob, ts, 256 if prob.key.startswith("mlp") else 20_000))
    for res in results.values():
        if "grad" in res:
            res["rel_err"] = float(np.linalg.norm(_flat(res.pop("grad")) - ref_flat)
                                   / np.linalg.norm(ref_flat))
            if not res["rel_err"] < WRONG_ABOVE:
                res["status"] = "WRONG gradient (no error raised)"
    return results


# --------------------------------------------------------------------------------------
# 2. Backward NFE with and without the seminorm


def backward_stats(prob, max_steps):
    """Forward and backward statistics of our continuous adjoints, seminorm on and off."""
    ts = jnp.stack([prob.ts[0], prob.ts[-1]])
    rows = []
    modes = [
        ("BacksolveAdjoint", True, nde.BacksolveAdjoint(seminorm=True, drift_check=None)),
        ("BacksolveAdjoint", False, nde.BacksolveAdjoint(seminorm=False, drift_check=None)),
        ("InterpolatedAdjoint", True, nde.InterpolatedAdjoint(seminorm=True)),
        ("InterpolatedAdjoint", False, nde.InterpolatedAdjoint(seminorm=False)),
    ]
    probe = jnp.zeros(4, jnp.asarray(prob.y0).dtype)
    for name, semi, adjoint in modes:
        run = C.ours_solve(prob.f, prob, nde.Tsit5(), adjoint=adjoint, ts=ts, max_steps=max_steps,
                           throw=False)

        def loss(y0, args, probe, run=run):
            ys, stats = run(y0, args, probe)
            return _final_sq(ys), stats

        # With throw=False a failed backward solve shows as NaN gradients (recorded).
        (g, bstats), fstats = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))(
            prob.y0, prob.args, probe)
        steps, acc, rej, nfe = (int(round(float(x))) for x in bstats)
        rows.append(dict(mode=name, seminorm=semi, fwd_steps=int(fstats[0]), steps=steps,
                         accepted=acc, rejected=rej, nfe=nfe,
                         finite=bool(np.all(np.isfinite(np.asarray(g))))))
    return rows


# --------------------------------------------------------------------------------------
# 3. Memory as max_steps grows


def memory_table(prob, sizes, time_limit_bytes=600e6, repeats=7, log=print):
    import diffrax

    ts = jnp.stack([prob.ts[0], prob.ts[-1]])
    methods = {
        "ours BacksolveAdjoint": ("ours", nde.BacksolveAdjoint()),
        "ours CheckpointAdjoint": ("ours", nde.CheckpointAdjoint()),
        "ours InterpolatedAdjoint": ("ours", nde.InterpolatedAdjoint()),
        "diffrax RecursiveCheckpointAdjoint": ("diffrax", diffrax.RecursiveCheckpointAdjoint()),
    }
    out, timed = {}, {}
    for name, (kind, adjoint) in methods.items():
        for m in sizes:
            solve = C.ours_solve if kind == "ours" else C.diffrax_solve
            solver = nde.Tsit5() if kind == "ours" else "Tsit5"
            run = solve(prob.f, prob, solver, adjoint=adjoint, ts=ts, max_steps=m)
            c = C.compile_fn(_grad(lambda y0, args, run=run: _final_sq(run(y0, args)[0])),
                             prob.y0, prob.args)
            mem = c.compiled.memory_analysis()
            temp = int(mem.temp_size_in_bytes) if mem is not None else -1
            out[(name, m)] = {"temp": temp, "compile_s": c.total_compile_s}
            if 0 <= temp <= time_limit_bytes:
                timed[(name, m)] = c
            log(f"  memory {name} max_steps={m}: temp {temp / 1e6:.2f} MB")
    times = C.interleaved(timed, repeats)
    for key, ts_ in times.items():
        out[key]["median_s"] = C.median(ts_)
    return out


# --------------------------------------------------------------------------------------
# 4. Accuracy of dL/dy0


class _Timeout(Exception):
    pass


def _with_alarm(seconds, fn, *args):
    """Run a Python-level computation (torchdiffeq) with a wall-clock limit."""

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(int(seconds))
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _torch_field(key, args):
    import torch

    p = [float(x) for x in np.ravel(np.asarray(args, np.float64))]
    if key == "vdp":
        mu = p[0]
        return lambda t, y: torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])
    sigma, rho, beta = p
    return lambda t, y: torch.stack(
        [sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1], y[0] * y[1] - beta * y[2]]
    )


def torch_grad(prob, adjoint: bool, max_steps: int):
    import torch
    import torchdiffeq

    f = _torch_field(prob.key, prob.args)
    y0 = torch.tensor(np.asarray(prob.y0, np.float64), requires_grad=True)
    t = torch.tensor([float(prob.ts[0]), float(prob.ts[-1])], dtype=torch.float64)
    opts = {"max_num_steps": max_steps}
    kw = dict(rtol=prob.rtol, atol=prob.atol, method="dopri5", options=opts)
    if adjoint:
        ys = torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=(), adjoint_options=opts, **kw)
    else:
        ys = torchdiffeq.odeint(f, y0, t, **kw)
    (ys[-1] ** 2).sum().backward()
    return y0.grad.numpy().copy()


def reference_grad(prob, log=print):
    """dL/dy0 from our CheckpointAdjoint with Dopri8 at 1e-12, checked by central FD."""
    ts = jnp.stack([prob.ts[0], prob.ts[-1]])

    def loss(y0):
        sol = nde.odeint(prob.f, y0, ts, prob.args, solver=nde.Dopri8(), rtol=1e-12, atol=1e-12,
                         max_steps=400_000, adjoint=nde.CheckpointAdjoint())
        return jnp.sum(jnp.square(sol.ys[-1]))

    g_ref = np.asarray(jax.jit(jax.grad(loss))(prob.y0), np.float64)
    # Central finite differences of scipy's DOP853 at rtol = atol = 1e-13.
    y0 = np.asarray(prob.y0, np.float64)
    g_fd = np.zeros_like(y0)
    for i in range(y0.size):
        h = 1e-5 * max(1.0, abs(y0[i]))
        vals = []
        for s in (+1, -1):
            y = y0.copy()
            y[i] += s * h
            yT = C.scipy_reference(prob, y0=y, ts=np.asarray(ts), tol=1e-13)[-1]
            vals.append(np.sum(yT**2))
        g_fd[i] = (vals[0] - vals[1]) / (2 * h)
    agree = float(np.linalg.norm(g_ref - g_fd) / np.linalg.norm(g_ref))
    log(f"  reference {prob.key}: {g_ref}, FD {g_fd}, rel diff {agree:.1e}")
    return g_ref, g_fd, agree


def accuracy_case(prob, log=print, torch_limit_s=120, torch_max_steps=10_000):
    import diffrax

    ts = jnp.stack([prob.ts[0], prob.ts[-1]])
    g_ref, g_fd, agree = reference_grad(prob, log=log)
    ms = prob.max_steps
    dopri5 = nde.Dopri5()

    def ours(adjoint):
        run = C.ours_solve(prob.f, prob, dopri5, adjoint=adjoint, ts=ts, max_steps=ms)
        return lambda y0: _final_sq(run(y0, prob.args)[0])

    def dfx(adjoint):
        run = C.diffrax_solve(prob.f, prob, "Dopri5", adjoint=adjoint, ts=ts, max_steps=ms)
        return lambda y0: _final_sq(run(y0, prob.args)[0])

    run_jo = C.jaxode_solve(prob.f, prob, ts=ts, max_steps=ms)
    jax_methods = {
        "ours BacksolveAdjoint (seminorm, default drift check)": ours(nde.BacksolveAdjoint()),
        "ours BacksolveAdjoint (seminorm, drift_check=None)": ours(
            nde.BacksolveAdjoint(drift_check=None)),
        "ours BacksolveAdjoint (full norm, drift_check=None)": ours(
            nde.BacksolveAdjoint(seminorm=False, drift_check=None)),
        "ours InterpolatedAdjoint": ours(nde.InterpolatedAdjoint()),
        "ours CheckpointAdjoint": ours(nde.CheckpointAdjoint()),
        "diffrax BacksolveAdjoint": dfx(diffrax.BacksolveAdjoint()),
        "diffrax RecursiveCheckpointAdjoint": dfx(diffrax.RecursiveCheckpointAdjoint()),
        "jax.experimental.ode": lambda y0: _final_sq(run_jo(y0, prob.args)[0]),
    }
    rows = []

    def record(name, fn):
        t0 = time.perf_counter()
        try:
            g = np.asarray(fn(), np.float64)
            status = "ok" if np.all(np.isfinite(g)) else "non-finite result"
        except _Timeout:
            g, status = None, f"timed out (> {torch_limit_s} s)"
        except Exception as err:  # noqa: BLE001 - failures are results
            g, status = None, _short_error(err)
        rel = None if g is None else float(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref))
        if status == "ok" and not rel < WRONG_ABOVE:
            status = "WRONG (returned without error)"
        rows.append(dict(method=name, grad=g, rel_err=rel, status=status,
                         seconds=time.perf_counter() - t0))
        log(f"  accuracy {prob.key}: {name}: {status}, rel err {rel}")

    for name, loss in jax_methods.items():
        record(name, lambda loss=loss: jax.jit(jax.grad(loss))(prob.y0))
    try:
        import torchdiffeq  # noqa: F401

        for name, adj in (("torchdiffeq odeint_adjoint", True),
                          ("torchdiffeq odeint (backprop through solver)", False)):
            record(name, lambda adj=adj: _with_alarm(torch_limit_s, torch_grad, prob, adj,
                                                     torch_max_steps))
    except ImportError:
        rows.append(dict(method="torchdiffeq", grad=None, rel_err=None,
                         status="not installed", seconds=0.0))
    return dict(g_ref=g_ref, g_fd=g_fd, agree=agree, rows=rows, torch_max_steps=torch_max_steps,
                torch_limit_s=torch_limit_s)


# --------------------------------------------------------------------------------------


def main(quick: bool = False, log=print):
    repeats, budget = (5, 4.0) if quick else (41, 15.0)
    out = {"speed": {}, "backward": {}, "accuracy": {}}
    cases = [(C.mlp_problem("a"), 1024), (C.vdp_problem(), 4096)]
    if not quick:
        cases.insert(1, (C.mlp_problem("b"), 1024))
    for prob, max_steps in cases:
        log(f"gradients: {prob.title}")
        out["speed"][prob.key] = (prob, max_steps,
                                  speed_case(prob, repeats, budget, max_steps, log=log))
        out["backward"][prob.key] = (prob, backward_stats(prob, max_steps))
    sizes = [100, 1000] if quick else [100, 1000, 10_000, 100_000]
    mem_prob = C.mlp_problem("a")
    out["memory"] = (mem_prob, sizes, memory_table(mem_prob, sizes, log=log))
    for prob in [C.vdp_problem()] + ([] if quick else [C.lorenz_problem()]):
        out["accuracy"][prob.key] = (prob, accuracy_case(prob, log=log, torch_limit_s=90))
    return out


def fastest_diffrax(results, stat="median_s"):
    """(name, seconds) of the fastest diffrax adjoint with a correct gradient in a speed case."""
    cands = [(r[stat], n) for n, r in results.items()
             if n.startswith("diffrax") and stat in r and r["status"] == "ok"]
    if not cands:
        return None, float("nan")
    t, n = min(cands)
    return n, t


def markdown(out) -> str:
    parts = []
    parts.append("### Speed of `jax.grad` (loss = sum of squares of y(t1), w.r.t. y0 and the "
                 "vector field's parameters; Tsit5 unless named)")
    for prob, max_steps, results in out["speed"].values():
        _, best = fastest_diffrax(results)
        _, best_min = fastest_diffrax(results, "min_s")
        rows = []
        for r in results.values():
            if "median_s" not in r:
                rows.append([r["name"], r["status"]] + ["—"] * 9)
                continue
            rows.append([r["name"], r["status"], r["median_s"] * 1e3, r["min_s"] * 1e3, r["iqr"],
                         r["median_s"] / best, r["min_s"] / best_min, r["trace_s"],
                         r["compile_s"], r["nfe_total"], r.get("rel_err")])
        reps = min((r["repeats"] for r in results.values() if "repeats" in r), default=0)
        headers = ["method", "status", "median ms", "min ms", "IQR/median",
                   "× fastest diffrax (median)", "× fastest diffrax (min)", "trace+lower s",
                   "compile s", "NFE fwd+bwd", "rel. error vs tight float64 reference"]
        parts.append(f"#### {prob.title} (ts = [t0, t1], max_steps = {max_steps}, "
                     f"{reps} interleaved rounds)\n\n" + C.md_table(headers, rows))
    parts.append("Reference gradient of the error column: our CheckpointAdjoint with Dopri8 at "
                 "rtol = atol = 1e-10 in float64. Relative error above "
                 f"{WRONG_ABOVE:g} is flagged WRONG; the fastest diffrax adjoint is taken among "
                 "those with a correct gradient.")
    parts.append("### Backward solves of our continuous adjoints, seminorm on and off "
                 "(`stats_probe`; Tsit5; drift_check=None, throw=False)")
    rows = []
    for prob, stats in out["backward"].values():
        for s in stats:
            rows.append([prob.short, s["mode"], "yes" if s["seminorm"] else "no",
                         s["fwd_steps"], s["steps"], s["accepted"], s["rejected"], s["nfe"],
                         "yes" if s["finite"] else "no (NaN: backward solve failed)"])
    parts.append(C.md_table(["case", "mode", "seminorm", "forward steps", "backward steps",
                             "accepted", "rejected", "backward NFE", "gradient finite"], rows))
    prob, sizes, mem = out["memory"]
    names = list(dict.fromkeys(k[0] for k in mem))
    rows = [[n] + [mem[(n, m)]["temp"] / 1e6 for m in sizes] for n in names]
    parts.append("### Compiled temporary memory of the gradient (MB, XLA memory analysis "
                 f"`temp_size_in_bytes`), {prob.short}, ts = [0, 1]\n\n"
                 + C.md_table(["method"] + [f"max_steps={m}" for m in sizes], rows))
    rows = [[n] + [mem[(n, m)]["median_s"] * 1e3 if "median_s" in mem[(n, m)] else None
                   for m in sizes] for n in names]
    parts.append("Wall time of the same compiled gradients (ms, median of interleaved rounds; "
                 "— = not run, temporary buffer over 600 MB). The solve takes the same few "
                 "steps whatever max_steps is:\n\n"
                 + C.md_table(["method"] + [f"max_steps={m}" for m in sizes], rows))
    parts.append("### Gradient accuracy: dL/dy0 with L = |y(T)|², ts = [t0, T], Dopri5 "
                 f"everywhere (relative error above {WRONG_ABOVE:g} is flagged WRONG)")
    for prob, acc in out["accuracy"].values():
        head = (f"#### {prob.title}, rtol = atol = {prob.rtol:g}\n\n"
                f"Reference: our CheckpointAdjoint with Dopri8 at rtol = atol = 1e-12 = "
                f"{np.array2string(acc['g_ref'], precision=8)}; central finite differences of "
                f"scipy DOP853 at 1e-13 = {np.array2string(acc['g_fd'], precision=8)} "
                f"(relative difference {acc['agree']:.1e}). JAX methods: max_steps = "
                f"{prob.max_steps}; torchdiffeq: max_num_steps = {acc['torch_max_steps']}, "
                f"{acc['torch_limit_s']} s limit.\n\n")
        rows = []
        for r in acc["rows"]:
            g = "—" if r["grad"] is None else np.array2string(r["grad"], precision=5)
            rows.append([r["method"], r["status"], g, r["rel_err"], r["seconds"]])
        parts.append(head + C.md_table(["method", "status", "dL/dy0", "relative error",
                                        "wall s (incl. compile)"], rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    C.run_cli("gradients", __doc__, main, markdown)
