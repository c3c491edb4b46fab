"""Quick side-by-side timing on the MLP cases: the forward solve (ours against diffrax, Tsit5,
the benchmark's output times) and the gradient (our adjoints against diffrax's two fastest,
same solver, tolerances and max_steps), plus a FLOP count.

A short check for a quiet machine (the full comparison with interleaved rounds is
``python -m benchmarks.run``). Run: ``.venv/bin/python -m benchmarks.mlp_check [a|b]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from benchmarks import _common as C


def _time(fn, *args, repeats=7):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main(which: str = "b") -> None:
    import diffrax

    prob = C.mlp_problem(which)
    ts = jnp.stack([prob.ts[0], prob.ts[-1]])
    max_steps = 1024

    def grad_of(run):
        return jax.jit(jax.grad(lambda y0, a: jnp.sum(run(y0, a)[0][-1] ** 2), argnums=1))

    semi = diffrax.PIDController(rtol=prob.rtol, atol=prob.atol, norm=diffrax.adjoint_rms_seminorm)
    methods = {
        "ours BacksolveAdjoint": C.ours_solve(
            prob.f, prob, nde.Tsit5(), nde.BacksolveAdjoint(), ts=ts, max_steps=max_steps
        ),
        "ours CheckpointAdjoint": C.ours_solve(
            prob.f, prob, nde.Tsit5(), nde.CheckpointAdjoint(), ts=ts, max_steps=max_steps
        ),
        "ours CheckpointAdjoint (max_steps=16)": C.ours_solve(
            prob.f, prob, nde.Tsit5(), nde.CheckpointAdjoint(), ts=ts, max_steps=16
        ),
        "diffrax BacksolveAdjoint (seminorm)": C.diffrax_solve(
            prob.f, prob, "Tsit5", diffrax.BacksolveAdjoint(stepsize_controller=semi), ts=ts,
            max_steps=max_steps,
        ),
        "diffrax RecursiveCheckpointAdjoint": C.diffrax_solve(
            prob.f, prob, "Tsit5", diffrax.RecursiveCheckpointAdjoint(), ts=ts,
            max_steps=max_steps,
        ),
    }
    fwd_ours = C.ours_solve(prob.f, prob, nde.Tsit5())
    fwd_dfx = C.diffrax_solve(prob.f, prob, "Tsit5")
    fwd = {
        name: _time(jax.jit(lambda y0, a, run=run: run(y0, a)[0]), prob.y0, prob.args, repeats=101)
        for name, run in (("ours Tsit5", fwd_ours), ("diffrax Tsit5", fwd_dfx))
    }
    print(f"{prob.title}: forward solve, {len(prob.ts)} output times")
    for name, (tmin, tmed) in fwd.items():
        print(f"  {name:40s} min {tmin * 1e3:8.3f} ms  median {tmed * 1e3:8.3f} ms  "
              f"min / diffrax min {tmin / fwd['diffrax Tsit5'][0]:.3f}")
    results = {}
    for name, run in methods.items():
        results[name] = _time(grad_of(run), prob.y0, prob.args)
    best = min(v[0] for k, v in results.items() if k.startswith("diffrax"))
    print(f"{prob.title}: gradient of |y(t1)|^2 w.r.t. the MLP weights, Tsit5, "
          f"rtol={prob.rtol:g}, atol={prob.atol:g}")
    for name, (tmin, tmed) in results.items():
        print(f"  {name:40s} min {tmin * 1e3:8.2f} ms  median {tmed * 1e3:8.2f} ms  "
              f"min / fastest diffrax min {tmin / best:.2f}")
    # FLOP floor: one forward evaluation is a matmul chain; a VJP costs about twice that.
    sizes = (2, 64, 64, 2) if which == "a" else (64, 512, 64)
    batch = prob.y0.shape[0]
    flop_eval = sum(2 * batch * m * n for m, n in zip(sizes[:-1], sizes[1:], strict=True))
    print(f"  one vector-field evaluation: {flop_eval / 1e6:.1f} MFLOP; one VJP about twice that")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m benchmarks.mlp_check",
                                description=__doc__.splitlines()[0])
    p.add_argument("case", nargs="?", choices=("a", "b"), default="b",
                   help="MLP case (a) 2-64-64-2 on a (256, 2) batch or (b) 64-512-64 on a "
                        "(512, 64) batch (default b)")
    main(p.parse_args().case)
