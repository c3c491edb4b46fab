"""Shared pieces of the benchmark scripts: problems, peers' call conventions, timing, tables.

Not a library: the scripts in this folder import it (``from benchmarks import _common as C``),
nothing else does. Everything here runs on the CPU of whatever machine it is started on; 64-bit
floats are enabled by importing the package (``benchmarks/__init__.py``), so the float64
problems are float64 (the float32 problems cast explicitly).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde

# --------------------------------------------------------------------------------------
# Problems


@dataclasses.dataclass
class Problem:
    """One initial value problem ``dy/dt = f(t, y, args)`` with tolerances and output times."""

    key: str
    title: str
    short: str
    f: Callable  # f(t, y, args) -> dy/dt
    f_np: Callable  # numpy float64 version f(t, y_flat, args_np) for scipy references
    y0: Any
    ts: Any
    args: Any
    rtol: float
    atol: float
    max_steps: int = 16384


def _mlp_params(key, sizes, scale, dtype):
    params = []
    for m, n in zip(sizes[:-1], sizes[1:], strict=True):
        key, kw, kb = jax.random.split(key, 3)
        w = (jax.random.normal(kw, (m, n)) * scale / np.sqrt(m)).astype(dtype)
        b = (jax.random.normal(kb, (n,)) * 0.1).astype(dtype)
        params.append((w, b))
    return tuple(params)


def mlp_field(t, y, params):
    """``tanh`` MLP vector field (autonomous); ``y`` is a batch ``(batch, dim)``."""
    h = y
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return h


def _mlp_field_np(shape):
    def f(t, y, params):
        h = y.reshape(shape)
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = np.tanh(h)
        return h.reshape(-1)

    return f


def mlp_problem(which: str, num_outputs: int = 11) -> Problem:
    """(a) 2-64-64-2, batch 256; (b) 64-512-64, batch 512. float32, t in [0, 1]."""
    if which == "a":
        sizes, batch, scale, short = (2, 64, 64, 2), 256, 3.0, "(a) MLP 2-64-64-2"
    else:
        sizes, batch, scale, short = (64, 512, 64), 512, 2.0, "(b) MLP 64-512-64"
    dtype = jnp.float32
    params = _mlp_params(jax.random.PRNGKey(0), sizes, scale, dtype)
    y0 = jax.random.normal(jax.random.PRNGKey(1), (batch, sizes[0])).astype(dtype)
    ts = jnp.linspace(0.0, 1.0, num_outputs, dtype=dtype)
    return Problem(
        key=f"mlp_{which}",
        title=f"{short}, batch {batch}, float32",
        short=short,
        f=mlp_field,
        f_np=_mlp_field_np((batch, sizes[0])),
        y0=y0,
        ts=ts,
        args=params,
        rtol=1e-3,
        atol=1e-6,
    )


def vdp_field(t, y, mu):
    x, v = y[0], y[1]
    return jnp.stack([v, mu * (1 - x * x) * v - x])


def _vdp_np(t, y, mu):
    return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_problem(num_outputs: int = 21) -> Problem:
    return Problem(
        key="vdp",
        title="(c) Van der Pol mu=1, t in [0, 20], float64",
        short="(c) Van der Pol",
        f=vdp_field,
        f_np=_vdp_np,
        y0=jnp.array([2.0, 0.0]),
        ts=jnp.linspace(0.0, 20.0, num_outputs),
        args=jnp.asarray(1.0),
        rtol=1e-6,
        atol=1e-6,
    )


def lorenz_field(t, y, p):
    sigma, rho, beta = p[0], p[1], p[2]
    x, yy, z = y[0], y[1], y[2]
    return jnp.stack([sigma * (yy - x), x * (rho - z) - yy, x * yy - beta * z])


def _lorenz_np(t, y, p):
    sigma, rho, beta = p
    return np.array([sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1], y[0] * y[1] - beta * y[2]])


def lorenz_problem(num_outputs: int = 11) -> Problem:
    return Problem(
        key="lorenz",
        title="(d) Lorenz (10, 28, 8/3), t in [0, 10], float64",
        short="(d) Lorenz",
        f=lorenz_field,
        f_np=_lorenz_np,
        y0=jnp.array([1.0, 1.0, 1.0]),
        ts=jnp.linspace(0.0, 10.0, num_outputs),
        args=jnp.array([10.0, 28.0, 8.0 / 3.0]),
        rtol=1e-8,
        atol=1e-8,
        max_steps=100_000,
    )


def to_numpy64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def scipy_reference(prob: Problem, y0=None, ts=None, tol: float = 1e-12):
    """Outputs at ``ts`` from scipy's DOP853 at ``rtol=atol=tol`` in float64 (flat rows)."""
    from scipy.integrate import solve_ivp

    y0 = np.asarray(prob.y0 if y0 is None else y0, np.float64).reshape(-1)
    ts = np.asarray(prob.ts if ts is None else ts, np.float64)
    args = to_numpy64(prob.args)
    sol = solve_ivp(
        lambda t, y: prob.f_np(t, y, args),
        (ts[0], ts[-1]),
        y0,
        method="DOP853",
        t_eval=ts,
        rtol=tol,
        atol=tol,
    )
    if not sol.success:
        raise RuntimeError(f"scipy reference failed on {prob.key}: {sol.message}")
    return sol.y.T


# --------------------------------------------------------------------------------------
# Counting vector-field evaluations (run once, outside the timed calls)


class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1


def counted(f, counter: Counter):
    """``f`` with a host callback that counts how often the compiled program evaluates it."""

    def g(t, y, args):
        jax.debug.callback(counter.inc)
        return f(t, y, args)

    return g


def count_nfe(build: Callable[[Callable], Callable], f, *call_args) -> int:
    """Evaluations of ``f`` in one call of ``build(f)`` (a forward, VJP counts as one)."""
    counter = Counter()
    fn = jax.jit(build(counted(f, counter)))
    jax.block_until_ready(fn(*call_args))
    jax.effects_barrier()
    return counter.n


# --------------------------------------------------------------------------------------
# Fixed-step floor


def fixed_step_floor(tab, f, num_steps: int):
    """A bare ``lax.fori_loop`` of ``num_steps`` equal steps of ``tab``'s stages (FSAL kept).

    No error estimate, no controller, no dense output: the irreducible cost of evaluating the
    stages. Returns ``solve(y0, t0, t1, args) -> y(t1)``; ``1 + (s - 1) * num_steps`` calls of
    ``f`` for an FSAL tableau with ``s`` stages.
    """
    a, b, c, s = tab.a, tab.b, tab.c, tab.num_stages
    assert tab.fsal

    def lincomb(y, h, coeffs, ks):
        acc = None
        for cj, kj in zip(coeffs, ks, strict=False):
            if cj != 0.0:
                term = float(cj) * kj
                acc = term if acc is None else acc + term
        return y + h * acc

    def solve(y0, t0, t1, args):
        h = (t1 - t0) / num_steps

        def body(i, carry):
            y, f0 = carry
            t = t0 + i * h
            ks = [f0]
            for j in range(1, s):
                ks.append(f(t + float(c[j]) * h, lincomb(y, h, a[j, :j], ks), args))
            y1 = lincomb(y, h, b, ks)
            return y1, ks[-1]

        y, _ = jax.lax.fori_loop(0, num_steps, body, (y0, f(t0, y0, args)))
        return y

    return solve


def minimal_adaptive(tab, f, ts, rtol, atol, max_steps: int):
    """The least an adaptive solver with dense output must do, written by hand.

    One ``lax.while_loop``: the stages of ``tab`` (FSAL), the embedded RMS error estimate, an
    integral step-size controller, and outputs written from the dense polynomial inside a
    ``lax.cond`` only on accepted steps that pass an output time. No statistics, no failure
    checks, no last-step clipping (outputs come from the interpolant), first step
    ``0.01 · (t1 - t0)``. A yardstick between the fixed-step floor and a real solver.
    Returns ``solve(y0, args) -> (ys, num_steps)``.
    """
    n_out = ts.shape[0]
    q = tab.error_order
    interp = tab.interp  # (stages, degree)

    def lincomb(y, h, coeffs, ks):
        acc = None
        for cj, kj in zip(coeffs, ks, strict=False):
            if cj != 0.0:
                term = float(cj) * kj
                acc = term if acc is None else acc + term
        return acc * h if y is None else y + h * acc

    def solve(y0, args):
        shape = y0.shape
        g = lambda t, y: f(t, y.reshape(shape), args).reshape(-1)  # noqa: E731
        y0f = y0.reshape(-1)
        t0, t_end = ts[0], ts[-1]
        ys = jnp.zeros((n_out, y0f.size), y0f.dtype).at[0].set(y0f)

        def cond(c):
            t, _, _, _, _, _, n = c
            return (t < t_end) & (n < max_steps)

        def body(c):
            t, y, f0, h, i, ys, n = c
            ks = [f0]
            for j in range(1, tab.num_stages):
                ks.append(g(t + float(tab.c[j]) * h, lincomb(y, h, tab.a[j, :j], ks)))
            y1 = lincomb(y, h, tab.b, ks)
            scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
            err = lincomb(None, h, tab.b_err, ks) / scale
            ratio = jnp.sqrt(jnp.mean(err * err))
            accept = ratio <= 1.0
            t1 = t + h

            def write(c):
                i, ys = c
                coeffs = [lincomb(None, h, interp[:, p], ks) for p in range(interp.shape[1])]

                def more(c):
                    i, _ = c
                    return (i < n_out) & (ts[jnp.minimum(i, n_out - 1)] <= t1)

                def put(c):
                    i, ys = c
                    theta = (ts[i] - t) / h
                    acc = coeffs[-1]
                    for cp in coeffs[-2::-1]:
                        acc = cp + theta * acc
                    return i + 1, ys.at[i].set(y + theta * acc)

                return jax.lax.while_loop(more, put, (i, ys))

            has_out = accept & (ts[jnp.minimum(i, n_out - 1)] <= t1)
            i, ys = jax.lax.cond(has_out, write, lambda c: c, (i, ys))
            factor = jnp.clip(0.9 * jnp.maximum(ratio, 1e-10) ** (-1.0 / (q + 1)), 0.2, 10.0)
            return (jnp.where(accept, t1, t), jnp.where(accept, y1, y),
                    jnp.where(accept, ks[-1], f0), h * factor, i, ys, n + 1)

        init = (t0, y0f, g(t0, y0f), 0.01 * (t_end - t0), jnp.asarray(1), ys, jnp.asarray(0))
        out = jax.lax.while_loop(cond, body, init)
        return out[5].reshape((n_out,) + shape), out[6]

    return solve


# --------------------------------------------------------------------------------------
# Peers' call conventions


def ours_solve(f, prob: Problem, solver, adjoint=None, ts=None, max_steps=None, controller=None,
               throw=True):
    ts = prob.ts if ts is None else ts
    extra = {"throw": throw}
    if adjoint is not None:
        extra["adjoint"] = adjoint
    if controller is not None:
        extra["controller"] = controller

    def run(y0, args, probe=None):
        sol = nde.odeint(
            f, y0, ts, args, solver=solver, rtol=prob.rtol, atol=prob.atol,
            max_steps=prob.max_steps if max_steps is None else max_steps, stats_probe=probe,
            **extra,
        )
        return sol.ys, jnp.stack([sol.stats["num_steps"], sol.stats["nfe"]])

    return run


def diffrax_solve(f, prob: Problem, solver_name: str, adjoint=None, ts=None, max_steps=None):
    import diffrax

    ts = prob.ts if ts is None else ts
    solver = {"Tsit5": diffrax.Tsit5, "Dopri5": diffrax.Dopri5}[solver_name]()
    controller = diffrax.PIDController(rtol=prob.rtol, atol=prob.atol)
    extra = {} if adjoint is None else {"adjoint": adjoint}

    def run(y0, args):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f), solver, t0=ts[0], t1=ts[-1], dt0=None, y0=y0, args=args,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller,
            max_steps=prob.max_steps if max_steps is None else max_steps, **extra,
        )
        return sol.ys, jnp.stack([sol.stats["num_steps"], jnp.asarray(-1, jnp.int32)])

    return run


def jaxode_solve(f, prob: Problem, ts=None, max_steps=None):
    from jax.experimental.ode import odeint

    ts = prob.ts if ts is None else ts
    mxstep = prob.max_steps if max_steps is None else max_steps

    def run(y0, args):
        ys = odeint(lambda y, t, p: f(t, y, p), y0, ts, args, rtol=prob.rtol, atol=prob.atol,
                    mxstep=mxstep)
        return ys, jnp.asarray([-1, -1])

    return run


# --------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Compiled:
    call: Callable
    args: tuple
    trace_lower_s: float
    compile_s: float
    first_call_s: float = float("nan")
    compiled: Any = None  # the ahead-of-time compiled program (memory analysis, HLO)

    @property
    def total_compile_s(self):
        return self.trace_lower_s + self.compile_s


def compile_fn(fn, *args) -> Compiled:
    """Trace, lower and compile ``jax.jit(fn)`` once for ``args``; time each phase.

    The timed calls (``Compiled.call``) go through the jitted function, which runs the program
    compiled here, not through the ahead-of-time compiled object: JAX calls an ahead-of-time
    compiled program that contains a host callback (``eqx.error_if``, in neuralode's and
    diffrax's solves with ``throw=True``) through its Python dispatch path, 20-40 µs more per
    call than the C++ path of a ``jax.jit`` call.
    """
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    c = Compiled(jitted, args, t1 - t0, t2 - t1, compiled=compiled)
    t3 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    c.first_call_s = time.perf_counter() - t3
    jax.block_until_ready(jitted(*args))  # the jitted function's first call (not timed)
    return c


def interleaved(items: dict[str, Compiled], repeats: int, budget_s: float | None = None):
    """Median wall time (s) of each compiled call, measured round-robin.

    Every round calls every method once (in a rotated order, so that no method always
    follows the same neighbour), blocking until each result is ready. Stops early after
    ``budget_s`` seconds once at least 5 rounds are done. Returns ``{name: [times]}``.
    """
    names = list(items)
    times = {k: [] for k in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            c = items[k]
            t0 = time.perf_counter()
            jax.block_until_ready(c.call(*c.args))
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 4 and time.perf_counter() - start > budget_s:
            break
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    """Interquartile range relative to the median (a noise indicator)."""
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


# --------------------------------------------------------------------------------------
# Reporting


def machine_info() -> dict[str, str]:
    import diffrax
    import equinox
    import scipy

    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu count": str(os.cpu_count()),
        "jax": jax.__version__,
        "jax backend": jax.default_backend(),
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "scipy": scipy.__version__,
        "neuralode": nde.__version__,
        "neuralode source sha256": _source_digest(),
    }
    try:
        import torch
        import torchdiffeq

        info["torch"] = torch.__version__
        info["torchdiffeq"] = getattr(torchdiffeq, "__version__", "?")
    except ImportError:
        pass
    try:
        info["load average (before)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def _source_digest() -> str:
    """Digest of the library's .py files: which state of the code produced the numbers."""
    import hashlib
    from pathlib import Path

    root = Path(nde.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, int | np.integer):
        return str(int(x))
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-2:
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def run_cli(name: str, doc: str, main: Callable, markdown: Callable) -> None:
    """The command line of a benchmark whose ``main(quick, log)`` returns results that
    ``markdown`` renders: ``python -m benchmarks.<name> [--quick]`` prints the report."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}",
                                description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    a = p.parse_args()
    res = main(quick=a.quick, log=lambda s: print(s, file=sys.stderr))
    print(markdown(res))
