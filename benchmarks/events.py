"""Event benchmark: locating the impacts of a bouncing ball, and differentiating them.

    .venv/bin/python -m benchmarks.events [--quick] [--json out.json]

A ball dropped from 1 m (g = 9.81, restitution e = 0.8) bounces 6 times: one event-terminated
solve per bounce (the height falling through zero), restarted from the ground with velocity
``-e·v``. float64, Tsit5 (diffrax) / Dopri5 (torchdiffeq, its default adaptive pair),
rtol = atol = 1e-8. Measured per method: the wall time of the 6 solves (compiled once, timed
round-robin), the error of the 6 impact times against their closed form, and the time and error
of the derivative of the last impact time with respect to ``e``:

* neuralode: ``nde.Event(cond, direction=-1)``, located on the dense output (Illinois);
  derivative by the implicit function theorem (CheckpointAdjoint, the default).
* diffrax: ``diffrax.Event(cond, root_finder=optx.Newton(...), direction=False)`` (falling);
  derivative through its default RecursiveCheckpointAdjoint.
* torchdiffeq: ``odeint_event`` (its bisection on the dense output), derivative by PyTorch
  autograd through ``odeint_event``'s own implicit-function rule.
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

jax.config.update("jax_enable_x64", True)

G, H0, E, N = 9.81, 1.0, 0.8, 6
TOL = 1e-8


def exact_times(e=E):
    v1 = np.sqrt(2 * G * H0)
    gaps = [np.sqrt(2 * H0 / G)] + [2 * e**k * v1 / G for k in range(1, N)]
    return np.cumsum(gaps)


def exact_d_last(e=E):
    v1 = np.sqrt(2 * G * H0)
    return sum(2 * k * e ** (k - 1) * v1 / G for k in range(1, N))


def fall(t, y, g):
    return jnp.stack([y[1], -g])


def ours_times(e):
    ground = nde.Event(lambda t, y, g: y[0], direction=-1)
    t, y, out = jnp.zeros(()), jnp.array([H0, 0.0]), []
    for _ in range(N):
        sol = nde.odeint(fall, y, jnp.stack([t, t + 10.0]), G, event=ground, rtol=TOL, atol=TOL)
        t = sol.event_time
        y = jnp.stack([0.0, -e * sol.event_y[1]])
        out.append(t)
    return jnp.stack(out)


def diffrax_times(e):
    import diffrax
    import optimistix as optx

    event = diffrax.Event(lambda t, y, args, **kw: y[0], direction=False,
                          root_finder=optx.Newton(rtol=1e-12, atol=1e-12))
    t, y, out = jnp.zeros(()), jnp.array([H0, 0.0]), []
    for _ in range(N):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(fall), diffrax.Tsit5(), t0=t, t1=t + 10.0, dt0=None, y0=y, args=G,
            stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL), event=event,
            saveat=diffrax.SaveAt(t1=True), max_steps=4096,
        )
        t = sol.ts[-1]
        y = jnp.stack([0.0, -e * sol.ys[-1][1]])
        out.append(t)
    return jnp.stack(out)


def torch_times(e_value, need_grad=False):
    import torch
    from torchdiffeq import odeint, odeint_event

    torch.set_default_dtype(torch.float64)
    e = torch.tensor(e_value, requires_grad=need_grad)

    def f(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -G)])

    def event_fn(t, y):
        return y[0]

    t, y, out = torch.tensor(0.0), torch.tensor([H0, 0.0]), []
    for i in range(N):
        y_start = y if i == 0 else torch.stack([torch.zeros_like(y[1]), y[1]])
        # odeint_event finds any sign change; start a hair above the ground after a bounce so
        # the start itself is not taken for the event.
        if i > 0:
            y_start = torch.stack([torch.tensor(1e-12), y[1]])
        t_ev, sol = odeint_event(f, y_start, t, event_fn=event_fn, odeint_interface=odeint,
                                 rtol=TOL, atol=TOL, method="dopri5")
        t = t_ev
        y = torch.stack([torch.tensor(0.0), -e * sol[-1][1]])
        out.append(t)
    times = torch.stack(out)
    if need_grad:
        (g,) = torch.autograd.grad(times[-1], e)
        return times.detach().numpy(), float(g)
    return times.detach().numpy()


def _timed(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return ts


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.events",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    opts = parser.parse_args()
    repeats = 5 if opts.quick else 20
    want, want_d = exact_times(), exact_d_last()
    rows = []
    for name, times_fn in [("neuralode", ours_times), ("diffrax", diffrax_times)]:
        value = jax.jit(times_fn)
        grad = jax.jit(jax.grad(lambda e, f=times_fn: f(e)[-1]))
        c0 = time.perf_counter()
        got = np.asarray(value(E))
        c1 = time.perf_counter()
        d = float(grad(E))
        c2 = time.perf_counter()
        t_val = _timed(lambda v=value: v(E), repeats)
        t_grad = _timed(lambda g=grad: g(E), repeats)
        rows.append({"method": name, "solve_ms": 1e3 * C.median(t_val),
                     "grad_ms": 1e3 * C.median(t_grad), "compile_s": (c1 - c0) + (c2 - c1),
                     "max_time_err": float(np.max(np.abs(got - want))),
                     "d_err": abs(d / want_d - 1)})
        print(rows[-1], flush=True)
    try:
        got = torch_times(E)
        t_val = [0.0] * repeats
        for i in range(repeats):
            t0 = time.perf_counter()
            torch_times(E)
            t_val[i] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, d = torch_times(E, need_grad=True)
        t_grad = time.perf_counter() - t0
        rows.append({"method": "torchdiffeq", "solve_ms": 1e3 * C.median(t_val),
                     "grad_ms": 1e3 * t_grad, "compile_s": 0.0,
                     "max_time_err": float(np.max(np.abs(got - want))),
                     "d_err": abs(d / want_d - 1)})
        print(rows[-1], flush=True)
    except ImportError as err:
        print(f"torchdiffeq not available: {err}")
    out = {"machine": C.machine_info(), "rows": rows}
    print(render(out))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


def render(data) -> str:
    rows = [[r["method"], r["solve_ms"], r["grad_ms"], r["compile_s"],
             f"{r['max_time_err']:.1e}", f"{r['d_err']:.1e}"] for r in data["rows"]]
    return "\n".join([
        "## Events: a bouncing ball",
        "",
        f"{N} impacts of a ball dropped from {H0} m (e = {E}), one event-terminated solve per "
        f"bounce, float64, rtol = atol = {TOL:g}; errors against the closed form.",
        "",
        C.md_table(["method", "6 solves (ms)", "d(last impact)/de (ms)", "compile (s)",
                    "max impact-time error", "rel. error of the derivative"], rows),
        "",
    ])


if __name__ == "__main__":
    main()
