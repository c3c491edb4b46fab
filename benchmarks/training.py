"""Training-step benchmarks: full optimisation steps of neural ODEs against diffrax.

    .venv/bin/python -m benchmarks.training [--quick] [--cases T1,T2,...] [--json out.json]
                                            [--modes NAME,...] [--plot sweep.png]

One *training step* is what a user compiles: ``eqx.filter_value_and_grad`` of the loss and an
optax update, under ``eqx.filter_jit``. Every gradient mode of neuralode (``OURS_MODES``) runs
against diffrax's default (``RecursiveCheckpointAdjoint``) and diffrax's ``BacksolveAdjoint``
(``DIFFRAX_MODES``) on the same model parameters, data, solver and tolerances; the methods of a
case are compiled first and then timed round-robin (``_common.interleaved``). Cases:

- **T1**: an Equinox MLP field 2-64-64-2 (softplus) fitted to 32 noisy Lotka-Volterra
  trajectories, 50 output times on [0, 10], ``jax.vmap`` over trajectories, Tsit5,
  rtol 1e-4, atol 1e-6, Adam; float32 (``T1f64``: the same in float64).
- **sweep**: T1 with output times {2, 10, 25, 50, 100} (batch 32) and batch {1, 4, 16, 32, 64}
  (50 outputs): step time of every mode relative to diffrax's default.
- **T2**: the latent-ODE spirals step of ``experiments/spirals.py`` (``small`` preset, 30
  irregular observations read, extrapolation objective: 130 output times per sequence).
- **T3**: an FFJORD CNF (Hutchinson trace) maximum-likelihood step on two moons, batch 512.
- **T4**: the ODE-Net MNIST step of ``experiments/mnist.py``, batch 128 (random images).
- **eager**: the README's ``odeint`` example called eagerly (no user ``jit``) twice, beside the
  same call under ``eqx.filter_jit`` and diffrax's eager ``diffeqsolve``.

Reported per method: step time median and min, their ratios to diffrax's default, compile
time (trace + lower, XLA compile), compiled temporary memory, NFE-F / NFE-B, and the relative
L2 difference of the parameter gradient to diffrax's default gradient. NFE comes from a host
callback in the vector field during extra, untimed calls of the loss and of its gradient (the
backward count is their difference; a VJP counts as one evaluation). Under ``vmap`` the count
is per *batched* evaluation: every lane runs until the slowest one finishes, so it is the
slowest trajectory's count, which is what the step pays for. Where our solve exposes them,
the per-trajectory means from ``sol.stats`` and the ``stats_probe`` are shown too.

Adding a gradient mode is one line in ``OURS_MODES`` (or ``DIFFRAX_MODES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuralode as nde
from benchmarks import _common as C  # the package enables float64 (float32 cases cast)

# --------------------------------------------------------------------------------------
# Gradient modes: name -> adjoint instance. One line per mode.

OURS_MODES: dict[str, nde.AbstractAdjoint] = {
    "BacksolveAdjoint": nde.BacksolveAdjoint(),
    "InterpolatedAdjoint": nde.InterpolatedAdjoint(),
    "CheckpointAdjoint": nde.CheckpointAdjoint(),
}
DIFFRAX_MODES: dict[str, Any] = {
    "diffrax default": diffrax.RecursiveCheckpointAdjoint(),
    "diffrax BacksolveAdjoint": diffrax.BacksolveAdjoint(),
}
REFERENCE = "diffrax default"  # ratios and gradient differences are relative to this one


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    lib: str  # "ours" or "diffrax"
    adjoint: Any


def default_adjoint():
    """``odeint``'s default gradient mode, read from its signature (follows the library)."""
    return inspect.signature(nde.odeint).parameters["adjoint"].default


def default_mode_name() -> str:
    """The name of ``odeint``'s default mode among ``OURS_MODES`` (added if missing)."""
    default = default_adjoint()
    for name, adj in OURS_MODES.items():
        if adj == default:
            return name
    name = f"{type(default).__name__} (default)"
    OURS_MODES[name] = default
    return name


def all_methods(only: list[str] | None = None) -> list[Method]:
    default_mode_name()
    methods = [Method(k, "ours", v) for k, v in OURS_MODES.items()]
    methods += [Method(k, "diffrax", v) for k, v in DIFFRAX_MODES.items()]
    if only:
        keep = [m for m in methods if m.name in only or m.name == REFERENCE]
        missing = set(only) - {m.name for m in methods}
        if missing:
            raise SystemExit(f"--modes: unknown {sorted(missing)}; known: "
                             f"{[m.name for m in methods]}")
        methods = keep
    return methods


# --------------------------------------------------------------------------------------
# Shared pieces


class _Counted(eqx.Module):
    """A vector field that counts its evaluations in the compiled program (host callback)."""

    field: Callable
    counter: C.Counter = eqx.field(static=True)

    def __call__(self, t, y, args):
        jax.debug.callback(self.counter.inc)
        return self.field(t, y, args)


def _identity(field):
    return field


def cast_floats(tree, dtype):
    """Every floating array leaf of ``tree`` cast to ``dtype`` (Equinox initialises in the
    default dtype, float64 here since ``_common`` enables it)."""
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def keep_param_dtype() -> optax.GradientTransformation:
    """Cast updates to the parameters' dtypes (float64 schedules under x64 would otherwise
    promote float32 parameters)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def diffrax_solver(name: str):
    return {"Tsit5": diffrax.Tsit5, "Dopri5": diffrax.Dopri5}[name]()


def diffrax_solve(field, y0, ts, method: Method, solver: str, rtol, atol, max_steps,
                  save_ts: bool = True):
    """``diffrax.diffeqsolve`` with our conventions: outputs at ``ts`` (or at ``ts[-1]``)."""
    saveat = diffrax.SaveAt(ts=ts) if save_ts else diffrax.SaveAt(t1=True)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax_solver(solver), t0=ts[0], t1=ts[-1], dt0=None, y0=y0,
        saveat=saveat, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=method.adjoint, max_steps=max_steps,
    )


@dataclasses.dataclass
class Workload:
    """One training-step case.

    ``loss_for(method, wrap)`` returns ``loss(model, batch, key, probe) -> (loss, aux)``:
    ``wrap`` is applied to the vector field before it is solved (identity, or the NFE
    counter), ``probe`` is ``None`` or the ``stats_probe`` array (ignored by diffrax and by
    models that do not expose it). ``aux`` may hold ``nfe_f`` (forward NFE from our solve's
    statistics, mean per trajectory) and ``steps`` (solver steps, mean per trajectory).
    ``model_for(method)`` returns the model configured for the method (same parameters for
    all methods).
    """

    key: str
    title: str
    model_for: Callable[[Method], Any]
    loss_for: Callable[[Method, Callable], Callable]
    batch: Any
    optimizer: optax.GradientTransformation
    num_traj: int  # trajectories per step (divides the summed backward probe statistics)
    dtype: Any
    notes: list[str] = dataclasses.field(default_factory=list)
    rng: Any = None


def make_step(loss, optimizer):
    """The user's training step: value_and_grad + optax update under ``eqx.filter_jit``."""

    @eqx.filter_jit
    def step(model, opt_state, batch, key):
        (value, _), grads = eqx.filter_value_and_grad(loss, has_aux=True)(
            model, batch, key, None)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, value

    return step


_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # untimed counting calls only


def _error_text(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    first = next((line for line in msg if line.strip()), "")
    for line in msg:  # equinox runtime errors: keep the library's own message
        if "odeint" in line or "neuralode" in line or "diffrax" in line.lower():
            first = line.strip()
            break
    return f"{type(err).__name__}: {first[:300]}"


def _tree_vector(tree) -> np.ndarray:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


def count_and_grad(w: Workload, method: Method, model):
    """Untimed: forward and forward+backward evaluation counts, the gradient, the loss."""
    counter = C.Counter()
    wrap = lambda f: _Counted(f, counter)  # noqa: E731
    loss = w.loss_for(method, wrap)
    probe = jnp.zeros((4,), w.dtype)

    fwd = eqx.filter_jit(lambda m, b, k: loss(m, b, k, None), compiler_options=_FAST_COMPILE)
    jax.block_until_ready(fwd(model, w.batch, w.rng))
    jax.effects_barrier()
    nfe_f = counter.n

    def vg(mp, b, k):
        return eqx.filter_value_and_grad(lambda q: loss(q[0], b, k, q[1]), has_aux=True)(mp)

    vg = eqx.filter_jit(vg, compiler_options=_FAST_COMPILE)
    counter.n = 0
    (value, aux), (grads, probe_grad) = jax.block_until_ready(vg((model, probe), w.batch, w.rng))
    jax.effects_barrier()
    out = {
        "nfe_f": nfe_f,
        "nfe_b": counter.n - nfe_f,
        "loss": float(value),
        "grad": _tree_vector(grads),
    }
    for k in ("nfe_f", "steps"):
        if k in aux:
            out[f"stats_{k}"] = float(aux[k])
    probe_grad = np.asarray(probe_grad, np.float64)
    if method.lib == "ours" and probe_grad[3] > 0:
        out["stats_nfe_b"] = float(probe_grad[3]) / w.num_traj
    return out


MEM_CAP_GIB = 4.0  # a step whose compiled temporary memory exceeds this is not run


def run_workload(w: Workload, methods: list[Method], repeats: int, budget_s: float,
                 count: bool = True, mem_cap_gib: float = MEM_CAP_GIB, log=print) -> dict:
    """Compile every method's step, count NFE and compare gradients, then time round-robin.

    A method whose compiled step needs more than ``mem_cap_gib`` GiB of temporary memory is
    compiled (its compile time and memory are reported) but not run: the machine is shared.
    """
    results: dict[str, dict] = {}
    compiled: dict[str, C.Compiled] = {}
    for m in methods:
        r: dict[str, Any] = {"lib": m.lib, "adjoint": repr(m.adjoint)}
        results[m.name] = r
        try:
            model = w.model_for(m)
            opt_state = w.optimizer.init(eqx.filter(model, eqx.is_array))
            step = make_step(w.loss_for(m, _identity), w.optimizer)
            args = (model, opt_state, w.batch, w.rng)
            t0 = time.perf_counter()
            lowered = step.lower(*args)
            t1 = time.perf_counter()
            comp = lowered.compile()
            t2 = time.perf_counter()
            c = C.Compiled(comp, args, t1 - t0, t2 - t1)
            r.update(trace_lower_s=c.trace_lower_s, compile_s=c.compile_s)
            try:
                r["temp_bytes"] = int(comp.compiled.memory_analysis().temp_size_in_bytes)
            except Exception:  # noqa: BLE001 - not every backend reports it
                pass
            if r.get("temp_bytes", 0) > mem_cap_gib * 2**30:
                r["skipped"] = (f"not run: compiled temporary memory "
                                f"{r['temp_bytes'] / 2**30:.1f} GiB > {mem_cap_gib:g} GiB cap")
                log(f"  {w.key} {m.name}: {r['skipped']}")
                continue
            t3 = time.perf_counter()
            out = jax.block_until_ready(comp(*args))
            c.first_call_s = time.perf_counter() - t3
            r.update(first_call_s=c.first_call_s, step_loss=float(out[2]))
            compiled[m.name] = c
            if count:
                r.update(count_and_grad(w, m, model))
            log(f"  {w.key} {m.name}: compile {c.total_compile_s:.1f} s, first call "
                f"{c.first_call_s * 1e3:.0f} ms"
                + (f", NFE-F {r['nfe_f']}, NFE-B {r['nfe_b']}" if count else ""))
        except Exception as err:  # noqa: BLE001 - a failing mode is a result
            r["error"] = _error_text(err)
            log(f"  {w.key} {m.name}: FAILED {r['error']}")
            if os.environ.get("NEURALODE_BENCH_TRACEBACK"):
                traceback.print_exc()
    ref = results.get(REFERENCE, {}).get("grad")
    for r in results.values():
        g = r.pop("grad", None)
        if g is not None and ref is not None:
            r["grad_rel_diff"] = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
            r["grad_finite"] = bool(np.all(np.isfinite(g)))
    if compiled:
        times = C.interleaved(compiled, repeats, budget_s)
        for name, ts in times.items():
            results[name].update(median_s=C.median(ts), min_s=min(ts), spread=C.spread(ts),
                                 rounds=len(ts))
    ref_r = results.get(REFERENCE, {})
    for r in results.values():
        if "median_s" in r and "median_s" in ref_r:
            r["ratio_median"] = r["median_s"] / ref_r["median_s"]
            r["ratio_min"] = r["min_s"] / ref_r["min_s"]
    return {"key": w.key, "title": w.title, "notes": w.notes, "reference": REFERENCE,
            "counted": count, "methods": results}


# --------------------------------------------------------------------------------------
# T1: MLP field fitted to Lotka-Volterra trajectories

LV_PARAMS = (2.0 / 3.0, 4.0 / 3.0, 1.0, 1.0)  # alpha, beta, gamma, delta
LV_NOISE = 0.05
T1_RTOL, T1_ATOL = 1e-4, 1e-6


def lotka_volterra_data(batch: int, num_outputs: int, seed: int = 0):
    """Noisy LV trajectories: initial states uniform in [0.5, 1.5]², solved by scipy's DOP853
    at rtol = atol = 1e-10 in float64, additive Gaussian noise (std ``LV_NOISE``). The first
    ``batch`` trajectories are the same for every ``batch`` (one seed)."""
    from scipy.integrate import solve_ivp

    a, b, c, d = LV_PARAMS
    rng = np.random.default_rng(seed)
    y0s = rng.uniform(0.5, 1.5, size=(64, 2))
    noise = rng.normal(0.0, LV_NOISE, size=(64, 1000, 2))
    ts = np.linspace(0.0, 10.0, num_outputs)
    out = []
    for i in range(batch):
        sol = solve_ivp(lambda t, y: [a * y[0] - b * y[0] * y[1], d * y[0] * y[1] - c * y[1]],
                        (0.0, 10.0), y0s[i], method="DOP853", t_eval=ts, rtol=1e-10, atol=1e-10)
        out.append(sol.y.T + noise[i, :num_outputs])
    return ts, np.stack(out)


class LVField(eqx.Module):
    """The user's field: an autonomous ``eqx.nn.MLP``."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def t1_workload(num_outputs: int = 50, batch: int = 32, dtype=jnp.float32) -> Workload:
    mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jax.nn.softplus, key=jax.random.PRNGKey(0))
    model = cast_floats(LVField(mlp), dtype)
    ts, data = lotka_volterra_data(batch, num_outputs)
    ts, data = jnp.asarray(ts, dtype), jnp.asarray(data, dtype)
    # The observed (noisy) first point is the initial condition, as a user would fit it.
    batch_arrays = (ts, data[:, 0], data)

    def loss_for(method: Method, wrap):
        def loss(model, batch, key, probe):
            ts, y0s, data = batch
            field = wrap(model)
            if method.lib == "ours":
                def one(y0):
                    sol = nde.odeint(field, y0, ts, solver=nde.Tsit5(), rtol=T1_RTOL,
                                     atol=T1_ATOL, adjoint=method.adjoint, stats_probe=probe)
                    return sol.ys, sol.stats["nfe"], sol.stats["num_steps"]
            else:
                def one(y0):
                    sol = diffrax_solve(field, y0, ts, method, "Tsit5", T1_RTOL, T1_ATOL, 4096)
                    return sol.ys, jnp.zeros((), jnp.int32), sol.stats["num_steps"]
            ys, nfe, steps = jax.vmap(one)(y0s)
            aux = {"steps": jnp.mean(steps.astype(dtype))}
            if method.lib == "ours":
                aux["nfe_f"] = jnp.mean(nfe.astype(dtype))
            return jnp.mean((ys - data) ** 2), aux

        return loss

    name = "float32" if dtype == jnp.float32 else "float64"
    key = "T1" if dtype == jnp.float32 else "T1f64"
    return Workload(
        key=key,
        title=(f"{key}: MLP 2-64-64-2 (softplus) fitted to {batch} noisy Lotka-Volterra "
               f"trajectories, {num_outputs} outputs on [0, 10], vmap, Tsit5, rtol 1e-4, "
               f"atol 1e-6, Adam, {name}"),
        model_for=lambda m: model,
        loss_for=loss_for,
        batch=batch_arrays,
        optimizer=optax.chain(optax.adam(1e-3), keep_param_dtype()),
        num_traj=batch,
        dtype=dtype,
        rng=jax.random.PRNGKey(1),
    )


# --------------------------------------------------------------------------------------
# T2: latent ODE on spirals (experiments/spirals.py, small preset)

T2_OBS = 30  # points read by the recognition network (the first of the preset's counts)


def t2_workload() -> Workload:
    from experiments import spirals
    from experiments._common import resolve_config

    cfg = resolve_config(spirals.PRESETS, "small", [])
    dtype = jnp.float32
    seed = 0
    data = spirals.SpiralData(cfg, seed, dtype)
    batch_fn = data.batch_fn(T2_OBS, cfg["batch"], cfg["resample"], seed, latent=True)
    batch = batch_fn(0, jax.random.key(seed))
    key = spirals._task_key(seed, f"latent_ode_n{T2_OBS}")
    scale = data.scale

    def build(adjoint):
        # the experiment's model with the adjoint as an instance (the same key: same parameters)
        model = spirals._latent_model(cfg, cfg["encoder"], key, scale).with_solve(adjoint=adjoint)
        return cast_floats(model, dtype)

    models = {}

    def model_for(m: Method):
        adj = m.adjoint if m.lib == "ours" else default_adjoint()
        if m.name not in models:
            models[m.name] = build(adj)
        return models[m.name]

    def loss_for(method: Method, wrap):
        if method.lib == "ours":
            def loss(model, batch, key, probe):
                model = eqx.tree_at(lambda mm: mm.field, model, wrap(model.field))
                values, times, mask, enc = batch
                value, aux = nde.nn.latent_ode_loss(model, key, values, times, mask,
                                                    encoder_mask=enc)
                return value, {"nfe_f": aux["nfe"].astype(dtype)}
            return loss

        def elbo(model, key, values, times, mask, enc):
            # LatentODE.elbo with the solve replaced by diffrax's
            mean, logvar = model.encoder(values, times, enc & mask)
            z0 = model.sample_z0(key, mean, logvar)
            sol = diffrax_solve(wrap(model.field), z0, times, method, "Tsit5",
                                model.solve.rtol, model.solve.atol, model.solve.max_steps)
            loglik = nde.nn.gaussian_log_likelihood(values, model.decode(sol.ys), mask,
                                                    model.obs_std)
            return loglik - nde.nn.diagonal_gaussian_kl(mean, logvar), sol.stats["num_steps"]

        def loss(model, batch, key, probe):
            values, times, mask, enc = batch
            keys = jax.random.split(key, values.shape[0])
            elbos, steps = jax.vmap(lambda *a: elbo(model, *a))(keys, values, times, mask, enc)
            return -jnp.mean(elbos), {"steps": jnp.mean(steps.astype(dtype))}

        return loss

    optimizer = optax.chain(
        spirals._optimizer(cfg["lr"], cfg["lr_final_frac"], cfg["steps"], cfg["clip_norm"],
                           cfg["ema_decay"]),
        keep_param_dtype(),
    )
    n_times = batch[1].shape[1]
    return Workload(
        key="T2",
        title=(f"T2: latent ODE on spirals (experiments/spirals.py `small`: batch "
               f"{cfg['batch']}, GRU encoder reads {T2_OBS} points, {n_times} output times "
               f"per sequence, extrapolation objective), vmap, Tsit5, rtol {cfg['rtol']}, "
               f"atol {cfg['atol']}, float32"),
        model_for=model_for,
        loss_for=loss_for,
        batch=batch,
        optimizer=optimizer,
        num_traj=cfg["batch"],
        dtype=dtype,
        notes=["ours' forward NFE from stats is the largest over the batch "
               "(`latent_ode_loss` reports the max); `LatentODE` does not expose the stats "
               "probe, so there is no NFE-B from statistics."],
        rng=jax.random.key(1),
    )


# --------------------------------------------------------------------------------------
# T3: FFJORD CNF, maximum likelihood on two moons


class _CNFDynamics(eqx.Module):
    """``[z, log p] -> [f, εᵀ(∂f/∂z)ε]`` with the noise ``ε`` as ``args`` (a module, so that
    diffrax's BacksolveAdjoint sees the field's parameters as inputs, not closed-over values).
    """

    field: Callable

    def __call__(self, t, state, eps):
        z, _ = state
        fz, vjp = jax.vjp(lambda zz: self.field(t, zz, None), z)
        (e_j,) = vjp(eps)
        return fz, jnp.vdot(e_j, eps).astype(z.dtype)

T3_BATCH = 512
T3_TOL = 1e-5  # the paper's maximum-likelihood tolerance (the `small` preset uses 1e-3)


def t3_workload(tol: float = T3_TOL) -> Workload:
    from experiments import max_likelihood as ml

    cfg = dict(ml.PRESETS["small"], batch=T3_BATCH, rtol=tol, atol=tol, solver="tsit5")
    dtype = jnp.float32
    x = nde.datasets.sample_toy_2d("moons", jax.random.key(0), T3_BATCH, noise=cfg["noise"],
                                   dtype=dtype)

    def build(adjoint):
        solve = nde.nn.SolveOptions(solver=nde.Tsit5(), rtol=cfg["rtol"], atol=cfg["atol"],
                                    adjoint=adjoint)
        model = nde.nn.ffjord_cnf(
            2, width=cfg["ffjord_width"], depth=cfg["ffjord_depth"], t0=0.0,
            t1=cfg["ffjord_t1"], solve=solve, key=jax.random.key(1),
        )
        return cast_floats(model, dtype)

    models = {}

    def model_for(m: Method):
        if m.name not in models:
            models[m.name] = build(m.adjoint if m.lib == "ours" else default_adjoint())
        return models[m.name]

    def loss_for(method: Method, wrap):
        if method.lib == "ours":
            def loss(model, x, key, probe):
                model = eqx.tree_at(lambda mm: mm.field, model, wrap(model.field))
                logp, stats = model.log_prob(x, key=key, return_stats=True)
                return -jnp.mean(logp), {"nfe_f": jnp.mean(stats["nfe"].astype(dtype)),
                                         "steps": jnp.mean(stats["num_steps"].astype(dtype))}
            return loss

        def loss(model, x, key, probe):
            dynamics = _CNFDynamics(wrap(model.field))

            def single(xi, ki):
                # CNF._solve: the same noise draw, the same augmented [z, log p] dynamics
                eps = nde.nn.hutchinson_noise(ki, xi, model.noise)
                ts = jnp.asarray([model.t0, model.t1], dtype)
                sol = diffrax.diffeqsolve(
                    diffrax.ODETerm(dynamics), diffrax.Tsit5(), t0=ts[0], t1=ts[1], dt0=None,
                    y0=(xi, jnp.zeros((), dtype)), args=eps,
                    saveat=diffrax.SaveAt(t1=True),
                    stepsize_controller=diffrax.PIDController(rtol=model.solve.rtol,
                                                              atol=model.solve.atol),
                    adjoint=method.adjoint, max_steps=model.solve.max_steps,
                )
                z1, ell = sol.ys[0][-1], sol.ys[1][-1]
                return model.base.log_prob(z1) + ell, sol.stats["num_steps"]

            keys = jax.random.split(key, x.shape[0])
            logp, steps = jax.vmap(single)(x, keys)
            return -jnp.mean(logp), {"steps": jnp.mean(steps.astype(dtype))}

        return loss

    optimizer = optax.chain(ml.make_optimizer("ffjord", cfg), keep_param_dtype())
    return Workload(
        key="T3",
        title=(f"T3: FFJORD CNF (ConcatSquash 2-{cfg['ffjord_width']}x{cfg['ffjord_depth']}-2, "
               f"Hutchinson trace, Gaussian noise), maximum likelihood on two moons, batch "
               f"{T3_BATCH}, t in [0, {cfg['ffjord_t1']}], vmap, Tsit5, rtol = atol = {tol:g}, "
               "float32"),
        model_for=model_for,
        loss_for=loss_for,
        batch=x,
        optimizer=optimizer,
        num_traj=T3_BATCH,
        dtype=dtype,
        notes=["`CNF.log_prob` does not expose the stats probe: no NFE-B from statistics. "
               "The model is at its initialisation (experiments/max_likelihood.py `small`, "
               "`ffjord` sizes) and the loss is the plain NLL (no RNODE terms)."],
        rng=jax.random.key(2),
    )


# --------------------------------------------------------------------------------------
# T4: ODE-Net on MNIST (experiments/mnist.py)

T4_BATCH = 128


def t4_workload() -> Workload:
    from experiments import mnist

    # The `small` preset's architecture and optimiser at the paper's batch size. No zero_init:
    # a zero field would make the ODE block trivial at the step we time.
    cfg = dict(mnist.PRESETS["small"], batch_size=T4_BATCH, zero_init=False)
    base = mnist.make_model("odenet", cfg, jax.random.key(0))
    solver = {"dopri5": "Dopri5", "tsit5": "Tsit5"}[cfg["solver"]]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(T4_BATCH, 1, 28, 28)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=T4_BATCH), jnp.int32)

    models = {}

    def model_for(m: Method):
        if m.name not in models:
            adj = m.adjoint if m.lib == "ours" else default_adjoint()
            models[m.name] = base.with_solve(adjoint=adj)
        return models[m.name]

    def loss_for(method: Method, wrap):
        if method.lib == "ours":
            def loss(model, batch, key, probe):
                x, y = batch
                model = eqx.tree_at(lambda mm: mm.block.field, model, wrap(model.block.field))
                h = model.features(x)
                h, stats = model.block(h, return_stats=True, stats_probe=probe)
                logits = jax.vmap(model.head)(h)
                return mnist.cross_entropy(logits, y), {
                    "nfe_f": stats["nfe"].astype(jnp.float32),
                    "steps": stats["num_steps"].astype(jnp.float32)}
            return loss

        def loss(model, batch, key, probe):
            x, y = batch
            b = model.block
            h = model.features(x)
            ts = jnp.asarray([b.t0, b.t1], h.dtype)
            sol = diffrax_solve(wrap(b.field), h, ts, method, solver, b.solve.rtol,
                                b.solve.atol, b.solve.max_steps, save_ts=False)
            logits = jax.vmap(model.head)(sol.ys[-1])
            return mnist.cross_entropy(logits, y), {
                "steps": sol.stats["num_steps"].astype(jnp.float32)}

        return loss

    optimizer = mnist.make_optimizer(cfg, steps_per_epoch=62)
    return Workload(
        key="T4",
        title=(f"T4: ODE-Net on MNIST (experiments/mnist.py `small` architecture: "
               f"{cfg['channels']} channels, the batch of {T4_BATCH} random images as one "
               f"state), {solver}, rtol = atol = {cfg['rtol']:g}, Adam, float32"),
        model_for=model_for,
        loss_for=loss_for,
        batch=(images, labels),
        optimizer=optimizer,
        num_traj=1,
        dtype=jnp.float32,
        notes=[f"the experiment's solver ({solver}) for every method, diffrax included; "
               "random images of MNIST's shape; the field is not zero-initialised "
               "(`zero_init=False`), else the block would start as the identity."],
        rng=jax.random.key(3),
    )


# --------------------------------------------------------------------------------------
# T1 sweep

SWEEP_OUTPUTS = (2, 10, 25, 50, 100)
SWEEP_BATCH = (1, 4, 16, 32, 64)
QUICK_SWEEP_OUTPUTS = (50,)
QUICK_SWEEP_BATCH = (1,)


def sweep(methods, quick: bool, t1_result: dict | None, mem_cap_gib: float = MEM_CAP_GIB,
          log=print) -> dict:
    outputs = QUICK_SWEEP_OUTPUTS if quick else SWEEP_OUTPUTS
    batches = QUICK_SWEEP_BATCH if quick else SWEEP_BATCH
    configs = [("outputs", n, 32) for n in outputs] + [("batch", 50, b) for b in batches]
    rows = []
    for axis, n_out, batch in configs:
        if (n_out, batch) == (50, 32) and t1_result is not None:
            res = t1_result
        else:
            log(f"sweep: {n_out} outputs, batch {batch}")
            # batch 1 is the single-trajectory NFE target: count evaluations there
            res = run_workload(t1_workload(n_out, batch), methods,
                               repeats=3 if quick else 9, budget_s=8 if quick else 25,
                               count=(batch == 1), mem_cap_gib=mem_cap_gib, log=log)
        rows.append({"axis": axis, "outputs": n_out, "batch": batch, "result": res})
    return {"rows": rows, "methods": [m.name for m in methods]}


def plot_sweep(sw: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, axis, xlabel in ((axes[0], "outputs", "output times (batch 32)"),
                             (axes[1], "batch", "trajectories (50 outputs)")):
        rows = [r for r in sw["rows"] if r["axis"] == axis]
        xs = [r[axis] for r in rows]
        for name in sw["methods"]:
            ys = [r["result"]["methods"][name].get("ratio_median", float("nan")) for r in rows]
            ax.plot(xs, ys, "o-", label=name)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel=xlabel,
               title=f"T1 sweep over {axis}")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    axes[0].set_ylabel(f"step time / {REFERENCE} (median)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# Eager second call (the README example)


def eager(quick: bool, log=print) -> dict:
    def f(t, y, args):
        return args * jnp.stack([y[1], -y[0]])

    ts = jnp.linspace(0.0, 10.0, 101)
    y0 = jnp.array([1.0, 0.0])
    tol = dict(rtol=1e-8, atol=1e-8)

    def ours_eager():
        return nde.odeint(f, y0, ts, 1.0, solver=nde.Tsit5(), **tol).ys

    ours_jit = eqx.filter_jit(
        lambda y0, a: nde.odeint(f, y0, ts, a, solver=nde.Tsit5(), **tol).ys)

    def diffrax_eager():
        return diffrax.diffeqsolve(
            diffrax.ODETerm(f), diffrax.Tsit5(), t0=ts[0], t1=ts[-1], dt0=None, y0=y0, args=1.0,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(**tol),
        ).ys

    diffrax_jit = eqx.filter_jit(lambda: diffrax_eager())
    arr = jnp.asarray(1.0)
    calls = {
        "nde.odeint, eager": ours_eager,
        "nde.odeint in eqx.filter_jit": lambda: ours_jit(y0, arr),
        "diffrax.diffeqsolve, eager": diffrax_eager,
        "diffrax.diffeqsolve in eqx.filter_jit": diffrax_jit,
    }
    res = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        t1 = time.perf_counter()
        jax.block_until_ready(fn())
        t2 = time.perf_counter()
        res[name] = {"first_s": t1 - t0, "second_s": t2 - t1}
    items = {k: C.Compiled(fn, (), 0.0, 0.0) for k, fn in calls.items()}
    times = C.interleaved(items, 5 if quick else 15, budget_s=20 if quick else 60)
    for name, ts_ in times.items():
        res[name].update(median_s=C.median(ts_), min_s=min(ts_))
    for lib in ("nde.odeint", "diffrax.diffeqsolve"):
        jit_med = res[f"{lib} in eqx.filter_jit"]["median_s"]
        r = res[f"{lib}, eager"]
        r["second_vs_jit"] = r["second_s"] / jit_med
        r["median_vs_jit"] = r["median_s"] / jit_med
    log("eager: " + ", ".join(f"{k} second {v['second_s'] * 1e3:.1f} ms"
                              for k, v in res.items()))
    return {"title": "README example: harmonic oscillator, 101 outputs on [0, 10], Tsit5, "
                     "rtol = atol = 1e-8, float64 (x64 on, as in every benchmark here)",
            "calls": res}


# --------------------------------------------------------------------------------------
# Reporting


def _ms(x):
    return C.fmt(None if x is None else x * 1e3)


def _stats_pair(r):
    f, b = r.get("stats_nfe_f"), r.get("stats_nfe_b")
    if f is None and b is None:
        return "—"
    return f"{C.fmt(f)} / {C.fmt(b)}"


def case_table(case: dict) -> str:
    headers = ["method", "step median (ms)", "min (ms)", f"× {REFERENCE} (median)",
               "× (min)", "IQR/median", "compile (s)", "temp MB", "NFE-F", "NFE-B",
               "steps (mean)", "ours: NFE-F / NFE-B per traj. (stats)", "grad rel. diff"]
    rows = []
    for name, r in case["methods"].items():
        if "error" in r:
            rows.append([name, f"failed: {r['error']}"] + ["—"] * (len(headers) - 2))
            continue
        compile_s = r.get("trace_lower_s", 0.0) + r.get("compile_s", 0.0)
        temp = r.get("temp_bytes")
        if "skipped" in r:
            rows.append([name, r["skipped"]] + ["—"] * 4 + [compile_s, temp / 2**20]
                        + ["—"] * 5)
            continue
        grad = r.get("grad_rel_diff")
        grad_txt = "reference" if name == case["reference"] and case.get("counted") else (
            C.fmt(grad) if grad is not None else "—")
        if grad is not None and not r.get("grad_finite", True):
            grad_txt += " (non-finite)"
        rows.append([
            name, _ms(r.get("median_s")), _ms(r.get("min_s")), r.get("ratio_median"),
            r.get("ratio_min"), r.get("spread"), compile_s,
            None if temp is None else temp / 2**20,
            r.get("nfe_f"), r.get("nfe_b"), r.get("stats_steps"), _stats_pair(r), grad_txt,
        ])
    return C.md_table(headers, rows)


def sweep_table(sw: dict) -> str:
    names = sw["methods"]
    headers = ["outputs", "batch", f"{REFERENCE} (ms)"] + [f"{n} ×" for n in names
                                                           if n != REFERENCE]
    rows, seen = [], set()
    for row in sw["rows"]:
        if (row["outputs"], row["batch"]) in seen:  # T1 itself lies on both axes
            continue
        seen.add((row["outputs"], row["batch"]))
        res = row["result"]["methods"]
        line = [row["outputs"], row["batch"], _ms(res.get(REFERENCE, {}).get("median_s"))]
        for n in names:
            if n == REFERENCE:
                continue
            r = res.get(n, {})
            line.append("failed" if "error" in r else "not run" if "skipped" in r
                        else r.get("ratio_median"))
        rows.append(line)
    return C.md_table(headers, rows)


def single_trajectory_table(sw: dict) -> str | None:
    row = next((r for r in sw["rows"] if r["batch"] == 1), None)
    if row is None:
        return None
    rows = []
    for name, r in row["result"]["methods"].items():
        if "error" in r or "skipped" in r:
            rows.append([name, "failed" if "error" in r else "not run", "—", "—", "—"])
            continue
        ratio = (r["nfe_b"] / r["nfe_f"]) if r.get("nfe_f") else None
        rows.append([name, r.get("nfe_f"), r.get("nfe_b"), ratio, _stats_pair(r)])
    return C.md_table(["method", "NFE-F", "NFE-B", "NFE-B / NFE-F",
                       "ours: NFE-F / NFE-B (stats)"], rows)


def eager_table(ea: dict) -> str:
    rows = []
    for name, r in ea["calls"].items():
        rows.append([name, _ms(r["first_s"]), _ms(r["second_s"]), _ms(r.get("median_s")),
                     _ms(r.get("min_s")), r.get("second_vs_jit", "—")])
    return C.md_table(["call", "first (ms)", "second (ms)", "median of later calls (ms)",
                       "min (ms)", "second / jitted median"], rows)


CASE_ORDER = ("T1", "T1f64", "T2", "T3", "T4")

# Issue #10's acceptance targets: (default mode, best mode, BacksolveAdjoint and
# InterpolatedAdjoint) step time relative to diffrax's default, medians.
TARGETS = {"T1": (1.0, 0.5, 1.5), "T2": (1.0, 0.67, None), "T3": (1.0, 0.67, None),
           "T4": (1.0, 0.67, None)}
NFE_B_TARGET = 3.0  # BacksolveAdjoint on T1 with one trajectory: NFE-B <= 3 x NFE-F


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def target_rows(data: dict) -> list[list]:
    """``[target, this run, verdict]`` rows of issue #10's acceptance on this run's numbers."""
    rows = []
    default = data.get("default_mode")
    checks = [(k, data["cases"][k]) for k in TARGETS if k in data.get("cases", {})]
    for row in data.get("sweep", {}).get("rows", []):
        if (row["outputs"], row["batch"]) != (50, 32):
            checks.append((f"T1 sweep ({row['outputs']} outputs, batch {row['batch']})",
                           row["result"]))
    for label, case in checks:
        dflt, best, continuous = TARGETS["T1" if label.startswith("T1") else label]
        res = case["methods"]
        ours = {k: v for k, v in res.items() if v.get("lib") == "ours"}
        r = ours.get(default, {})
        if "ratio_median" in r:
            rows.append([f"{label}: default ({default}) ≤ {dflt} × diffrax default",
                         C.fmt(r["ratio_median"]), _verdict(r["ratio_median"] <= dflt)])
        else:
            rows.append([f"{label}: default ({default}) ≤ {dflt} × diffrax default",
                         "did not run", _verdict(False)])
        ran = {k: v["ratio_median"] for k, v in ours.items() if "ratio_median" in v}
        if ran:
            name = min(ran, key=ran.get)
            rows.append([f"{label}: best mode ≤ {best} × diffrax default",
                         f"{C.fmt(ran[name])} ({name})", _verdict(ran[name] <= best)])
        if continuous is not None:
            for name in ("BacksolveAdjoint", "InterpolatedAdjoint"):
                v = ours.get(name, {})
                ok = "ratio_median" in v and v["ratio_median"] <= continuous
                rows.append([f"{label}: {name} ≤ {continuous} × diffrax default",
                             C.fmt(v.get("ratio_median", "did not run")), _verdict(ok)])
    row = next((r for r in data.get("sweep", {}).get("rows", []) if r["batch"] == 1), None)
    if row is not None:
        r = row["result"]["methods"].get("BacksolveAdjoint", {})
        f = r.get("stats_nfe_f", r.get("nfe_f"))
        b = r.get("stats_nfe_b", r.get("nfe_b"))
        if f and b is not None:
            rows.append([f"T1, one trajectory: BacksolveAdjoint NFE-B ≤ {NFE_B_TARGET:g} × NFE-F",
                         f"{C.fmt(b)} vs {C.fmt(f)} ({C.fmt(b / f)}×)",
                         _verdict(b <= NFE_B_TARGET * f)])
    ea = data.get("eager", {}).get("calls", {}).get("nde.odeint, eager")
    if ea:
        rows.append(["eager: second `odeint` call ≤ 2 × the same call under `eqx.filter_jit`",
                     f"{C.fmt(ea['second_vs_jit'])}× ({_ms(ea['second_s'])} ms)",
                     _verdict(ea["second_vs_jit"] <= 2.0)])
    return rows


def markdown(data: dict) -> str:
    out = [
        "Full training steps: `eqx.filter_value_and_grad` of the loss and an optax update under "
        "`eqx.filter_jit`, every gradient mode beside diffrax's default "
        "(`RecursiveCheckpointAdjoint`) and diffrax's `BacksolveAdjoint` with the same model "
        "parameters, data, solver and tolerances; the same step (same inputs) is timed "
        "repeatedly. *NFE-F* / *NFE-B*: vector-field evaluations of one step counted by a host "
        "callback (forward: the loss alone; backward: the gradient's count minus the "
        "forward's; under `vmap` one count per batched evaluation, i.e. the slowest "
        "trajectory's). *steps (mean)*: solver steps per trajectory from the solve's "
        "statistics. *ours: NFE-F / NFE-B per traj.*: means over trajectories from "
        "`sol.stats` and the `stats_probe` where the model exposes them. *grad rel. diff*: "
        f"‖g − g_ref‖ / ‖g_ref‖ over all parameters, g_ref from {REFERENCE}. *temp MB*: "
        "compiled temporary memory of the step (XLA's memory analysis).",
        "",
        f"Our default gradient mode (`odeint`'s default): **{data.get('default_mode', '?')}**.",
        "",
    ]
    cases = data.get("cases", {})
    for key in CASE_ORDER:
        if key not in cases:
            continue
        case = cases[key]
        out += [f"### {case['title']}", "", case_table(case), ""]
        for note in case.get("notes", []):
            out += [f"Note: {note}", ""]
        if key == "T1" and "sweep" in data:
            single = single_trajectory_table(data["sweep"])
            if single:
                out += ["One trajectory (batch 1, 50 outputs; from the sweep): evaluations",
                        "", single, ""]
    if "sweep" in data:
        out += ["### T1 sweep: step time relative to diffrax's default (medians)", "",
                sweep_table(data["sweep"]), ""]
        if data["sweep"].get("plot"):
            out += [f"![T1 sweep]({data['sweep']['plot']})", ""]
    if "eager" in data:
        ea = data["eager"]
        out += [f"### Eager calls: {ea['title']}", "", eager_table(ea), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Driver

ALL_CASES = ("T1", "sweep", "T2", "T3", "T4", "eager")
FULL_EXTRA = ("T1f64",)  # in the full run only


def _timing(case: str, quick: bool) -> tuple[int, float]:
    """(rounds, time budget in s) of the interleaved timing."""
    if quick:
        return 3, 10.0
    return {"T1": (21, 90.0), "T1f64": (15, 60.0), "T2": (9, 120.0), "T3": (9, 120.0),
            "T4": (7, 150.0)}[case]


def main(quick: bool = False, cases: list[str] | None = None, modes: list[str] | None = None,
         plot: str | None = None, mem_cap_gib: float = MEM_CAP_GIB, resume: dict | None = None,
         on_case: Callable[[dict], None] | None = None, log=print) -> dict:
    """Run ``cases`` (default: all; ``quick``: fewer rounds, a short sweep, and no NFE counts
    or gradient comparison on T2-T4) and return the results (see :func:`markdown`).

    ``resume``: results of an interrupted run (its JSON); the cases it holds are kept, not
    re-run. ``on_case(data)`` is called after every case (the CLI saves the JSON there).
    """
    cases = list(cases or (ALL_CASES if quick else ALL_CASES[:1] + FULL_EXTRA + ALL_CASES[1:]))
    unknown = set(cases) - set(ALL_CASES + FULL_EXTRA)
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; known: "
                         f"{list(ALL_CASES + FULL_EXTRA)}")
    methods = all_methods(modes)
    data: dict[str, Any] = {"cases": {}, "default_mode": default_mode_name(),
                            "methods": [m.name for m in methods], "wall_s": {}}
    if resume:
        for k in ("cases", "wall_s"):
            data[k].update(resume.get(k, {}))
        for k in ("sweep", "eager"):
            if k in resume:
                data[k] = resume[k]
        done = set(data["cases"]) | {k for k in ("sweep", "eager") if k in data}
        log(f"resuming: keeping {sorted(done & set(cases))}")
        cases = [c for c in cases if c not in done]
    builders = {"T1": lambda: t1_workload(), "T1f64": lambda: t1_workload(dtype=jnp.float64),
                "T2": t2_workload, "T3": t3_workload, "T4": t4_workload}
    for case in cases:
        t0 = time.perf_counter()
        if case in builders:
            log(f"{case}: building")
            w = builders[case]()
            log(f"{case}: {w.title}")
            rounds, budget = _timing(case, quick)
            count = not quick or case.startswith("T1")
            data["cases"][case] = run_workload(w, methods, rounds, budget, count=count,
                                               mem_cap_gib=mem_cap_gib, log=log)
            if not count:
                data["cases"][case]["notes"] = data["cases"][case]["notes"] + [
                    "--quick: NFE counts and the gradient comparison are skipped here."]
        elif case == "sweep":
            data["sweep"] = sweep(methods, quick, data["cases"].get("T1"),
                                  mem_cap_gib=mem_cap_gib, log=log)
            if plot:
                data["sweep"]["plot"] = plot_sweep(data["sweep"], plot)
        elif case == "eager":
            data["eager"] = eager(quick, log=log)
        data["wall_s"][case] = time.perf_counter() - t0
        log(f"{case}: done in {data['wall_s'][case]:.0f} s")
        jax.clear_caches()  # drop this case's executables (the machine's memory is shared)
        gc.collect()
        if on_case is not None:
            on_case(data)
    return data


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def report(data: dict) -> str:
    """The CLI's output: command, machine, every table, the targets, wall times."""
    out = [f"Command: `{data.get('command', '?')}`", ""]
    if data.get("info"):
        out += [C.md_table(["", ""], [[k, v] for k, v in data["info"].items()]), ""]
    out.append(markdown(data))
    rows = target_rows(data)
    if rows:
        out += ["", "### Acceptance targets (issue #10)", "",
                C.md_table(["target", "this run", "verdict"], rows)]
    walls = ", ".join(f"{k} {v:.0f} s" for k, v in data.get("wall_s", {}).items())
    out += ["", f"Total wall time {data.get('total_s', float('nan')):.0f} s ({walls})."]
    return "\n".join(out)


def cli():
    p = argparse.ArgumentParser(prog="python -m benchmarks.training",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few rounds, short sweep")
    p.add_argument("--cases", help=f"comma-separated subset of {list(ALL_CASES + FULL_EXTRA)}")
    p.add_argument("--modes", help="comma-separated gradient modes to run (the reference, "
                                   f"{REFERENCE!r}, always runs); default: all")
    p.add_argument("--json", help="write the raw results to this file (after every case)")
    p.add_argument("--render", metavar="JSON",
                   help="do not run: print the report of a saved JSON")
    p.add_argument("--resume", metavar="JSON",
                   help="keep the cases of this (interrupted) run's JSON, run the others")
    p.add_argument("--plot", help="write the sweep's plot (PNG) to this file")
    p.add_argument("--mem-cap-gb", type=float, default=MEM_CAP_GIB,
                   help="do not run a step whose compiled temporary memory exceeds this "
                        f"many GiB (default {MEM_CAP_GIB:g}; the machine is shared)")
    a = p.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if a.render:
        print(report(json.loads(Path(a.render).read_text())))
        return

    def save(data):
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(_jsonable(data), indent=1))

    info = C.machine_info()
    resume = json.loads(Path(a.resume).read_text()) if a.resume else None
    t0 = time.perf_counter()
    data = main(quick=a.quick, cases=a.cases.split(",") if a.cases else None,
                modes=a.modes.split(",") if a.modes else None, plot=a.plot,
                mem_cap_gib=a.mem_cap_gb, resume=resume, on_case=save, log=log)
    if resume and "info" in resume:
        data["info_resumed_run"] = resume["info"]
    data["info"] = info
    data["info"]["load average (after)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data["total_s"] = time.perf_counter() - t0
    data["command"] = " ".join([".venv/bin/python", "-m", "benchmarks.training"] + sys.argv[1:])
    if a.json and data.get("sweep", {}).get("plot"):  # link the plot relative to the JSON
        data["sweep"]["plot"] = os.path.relpath(data["sweep"]["plot"],
                                                Path(a.json).resolve().parent)
    print(report(data))
    if a.json:
        save(data)
        log(f"wrote {a.json}")


if __name__ == "__main__":
    cli()
