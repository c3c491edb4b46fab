"""Figure 5 of Chen et al. (2018): maximum likelihood on Two Circles and Two Moons.

Four models per data set, each trained by minimising the negative log-likelihood of fresh
samples drawn every iteration:

- **cnf**: the paper's planar CNF, ``nde.nn.planar_cnf(2, 64)`` (64 hidden units, hypernetwork
  of ``t`` with hidden width 32), exact trace, base ``N(0, 0.1·I)`` (covariance 0.1, i.e.
  standard deviation √0.1, as in the reference code ``torchdiffeq/examples/cnf.py``),
  integrated over ``t ∈ [0, 10]``, Adam.
- **nf**: 64 stacked one-unit planar layers, ``nde.nn.PlanarFlow(2, 64)``, same base, trained
  through its exact inverse (``log_prob``), Adam.
- **ffjord**: an FFJORD-style CNF, ``nde.nn.ffjord_cnf`` (ConcatSquash MLP, Hutchinson trace
  with one Gaussian noise draw per solve), base ``N(0, I)``, ``t ∈ [0, 1]``, Adam.
- **ffjord_rnode**: the same with the RNODE regularisers (Finlay et al. 2020) added to the
  loss: ``λ_K ∫‖f‖² dt + λ_J ∫‖εᵀ∂f/∂z‖² dt``, integrated as extra states of the same solve.

Initialisation (the parametrisations are the library's): the planar CNF's ``u_n`` start scaled
by ``1/M`` (the reference code averages its units; see ``_cnf.average_units_at_init``), the
planar NF's layers start volume-preserving (``wᵀû = 0``, the library's default init of
``PlanarFlow``); without these, training at the small preset's learning rate diverges (NaN) or
does not recover from an initial NLL of thousands of nats.

Gradients: the ``paper`` preset uses the paper's adjoint method (``nde.BacksolveAdjoint``);
``small`` uses ``nde.CheckpointAdjoint`` (exact gradients of the discrete solve), which is 3-5x
faster per gradient for these per-sample (vmapped) solves on a CPU.

Data: ``nde.datasets.sample_toy_2d`` — circles with noise 0.06 and factor 0.5 (the paper's
``make_circles`` recipe), moons with the same noise. The test NLL is measured on fresh samples
(a key never used in training) with the exact trace for every CNF, at the evaluation
tolerance.

Run: ``python -m experiments.max_likelihood --preset {smoke,small,paper} --out
runs/max_likelihood-<preset>`` (``--set key=value`` changes a preset entry, e.g. ``--set
models=cnf,nf --set iters=500``). Every model trains with ``nde.training.Trainer`` in its own
sub-folder ``<dataset>/<model>/`` (config.json, metrics.jsonl with loss and NFE,
checkpoint.eqx, eval.json); the run folder gets config.json, metrics.jsonl (all logs, tagged),
table.md, summary.json and the plots (densities, samples, and the planar CNF's flow of base
samples over time). Running the same command again resumes every model from its checkpoint; a
model whose settings changed since is refused (the error lists the keys), and ``--fresh`` starts
over, moving the old run folder aside to ``<out>.old-<timestamp>``.
"""

import math
import pathlib
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuralode as nde
from experiments import _cnf
from experiments import _common as C
from experiments._report import captioned_table, fmt

EXPERIMENT = "max_likelihood"
MODELS = ("cnf", "nf", "ffjord", "ffjord_rnode")
TITLES = {
    "cnf": "Planar CNF (M=64)",
    "nf": "Planar NF (K=64)",
    "ffjord": "FFJORD CNF",
    "ffjord_rnode": "FFJORD CNF + RNODE",
}
DATASETS = ("circles", "moons")
LIM = 1.5  # plotting window [-LIM, LIM]^2

PAPER = {
    "figure": "Figure 5",
    "claim": "the planar CNF (64 units) fits Two Circles and Two Moons; the planar NF (64 "
    "one-unit layers) has difficulty with Two Moons",
    "recipe": {
        "samples_per_iteration": 512,
        "circles_noise": 0.06,
        "circles_factor": 0.5,
        "base": "N(0, 0.1 I)",
        "t": [0, 10],
        "optimizer": "adam",
        "lr": 1e-3,
        "iterations": 1000,
        "tolerance": 1e-5,
        "cnf_hidden_units": 64,
        "hypernetwork_hidden": 32,
        "nf_layers": 64,
    },
    "test_nll": None,  # the paper shows plots only
    "ffjord": "toy 2-D densities take about 70-100 NFE (Grathwohl et al. 2019)",
    "rnode": "kinetic + Jacobian Frobenius regularisation: much faster training of CNFs at "
    "equal quality (Finlay et al. 2020)",
}

NOTES = (
    "test_nll: -mean log p on fresh samples, exact trace, eval tolerance. nfe_train: "
    "mean forward NFE per sample over the last 10% of training iterations (Hutchinson "
    "trace for FFJORD); nfe_test: mean NFE per sample of the test solves. Base of the "
    "planar CNF/NF: N(0, 0.1 I) (std sqrt(0.1)); FFJORD: N(0, I). wall_time_s = "
    "training and evaluation time of all models (summed over resumes), or this "
    "invocation's time if larger."
)

# Every setting per preset: (smoke, small, paper). smoke: seconds, a few steps on one data set,
# for the test suite; small: minutes on a 2-core CPU (loose tolerance, fewer iterations, a
# larger learning rate); paper: the paper's recipe (FFJORD: its own toy setting of 10k
# iterations), for a GPU.
_SETTINGS: dict[str, tuple[Any, Any, Any]] = {
    "datasets": (("circles",), DATASETS, DATASETS),
    "models": (MODELS, MODELS, MODELS),
    "iters": (3, 2000, 1000), "ffjord_iters": (3, 1000, 10_000),
    "batch": (32, 256, 512),
    "lr": (1e-3, 5e-3, 1e-3), "ffjord_lr": (1e-3, 5e-3, 1e-3),
    **_cnf.SOLVE_SETTINGS,  # schedule, solver, adjoint, hyper_width, (eval_)rtol, (eval_)atol
    "clip": (None, 1.0, None),  # gradient clipping guards against rare blow-ups at a large lr
    "noise": (0.06, 0.06, 0.06),
    "factor": (0.5, 0.5, 0.5),
    "width": (64, 64, 64),
    # "average": the planar CNF's units start scaled by 1/M (see the module docstring);
    # "library": the library's own initialisation of planar_cnf
    "cnf_init": ("average", "average", "average"),
    "t1": (10.0, 10.0, 10.0),
    "base_var": (0.1, 0.1, 0.1),
    "ffjord_width": (16, 64, 64), "ffjord_depth": (2, 3, 3),
    "ffjord_t1": (1.0, 1.0, 1.0),
    "lambda_kinetic": (0.01, 0.01, 0.01), "lambda_jacobian": (0.01, 0.01, 0.01),
    "test_samples": (128, 2048, 10_000), "eval_chunk": (128, 1200, 4000),
    "plot_grid": (16, 60, 200), "flow_samples": (256, 2000, 20_000),
    "log_every": (1, 10, 10), "checkpoint_every": (2, 200, 100),
}
PRESETS = C.presets_from_columns(_SETTINGS)
SCRIPT = C.Script(EXPERIMENT, __doc__, PRESETS, choices={"datasets": DATASETS, "models": MODELS})


# ---------------------------------------------------------------------------------------------
# Data, models, losses
# ---------------------------------------------------------------------------------------------


def sample_data(name: str, key, n: int, cfg: dict[str, Any]):
    kwargs = {"noise": cfg["noise"], "dtype": jnp.result_type(float)}
    if name == "circles":
        kwargs["factor"] = cfg["factor"]
    return nde.datasets.sample_toy_2d(name, key, n, **kwargs)


def make_model(kind: str, cfg: dict[str, Any], key):
    solve = _cnf.training_solve(cfg)
    if kind == "cnf":
        base = nde.nn.StandardNormal(2, math.sqrt(cfg["base_var"]))
        cnf = nde.nn.planar_cnf(
            2, cfg["width"], hyper_width=cfg["hyper_width"], base=base, t0=0.0, t1=cfg["t1"],
            solve=solve, key=key,
        )
        return _cnf.average_units_at_init(cnf) if cfg["cnf_init"] == "average" else cnf
    if kind == "nf":  # the library's volume-preserving initialisation
        base = nde.nn.StandardNormal(2, math.sqrt(cfg["base_var"]))
        return nde.nn.PlanarFlow(2, cfg["width"], base=base, key=key)
    if kind in ("ffjord", "ffjord_rnode"):
        return nde.nn.ffjord_cnf(
            2, width=cfg["ffjord_width"], depth=cfg["ffjord_depth"], t0=0.0,
            t1=cfg["ffjord_t1"], solve=solve, key=key,
        )
    raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")


def make_loss(kind: str, cfg: dict[str, Any]):
    def loss_fn(model, x, key):
        if kind == "nf":
            return -jnp.mean(model.log_prob(x)), {}
        if kind == "cnf":
            logp, stats = model.log_prob(x, return_stats=True)
            nll = -jnp.mean(logp)
            return nll, {"nfe": jnp.mean(stats["nfe"].astype(nll.dtype)), "nll": nll}
        logp, regs, stats = model.log_prob(x, key=key, regularise=True, return_stats=True)
        nll = -jnp.mean(logp)
        kinetic, jac = jnp.mean(regs["kinetic"]), jnp.mean(regs["jacobian"])
        loss = nll
        if kind == "ffjord_rnode":
            loss = nll + cfg["lambda_kinetic"] * kinetic + cfg["lambda_jacobian"] * jac
        aux = {"nfe": jnp.mean(stats["nfe"].astype(nll.dtype)), "nll": nll}
        return loss, {**aux, "kinetic": kinetic, "jacobian": jac}

    return loss_fn


def make_optimizer(kind: str, cfg: dict[str, Any]):
    peak = cfg["ffjord_lr"] if kind.startswith("ffjord") else cfg["lr"]
    lr = C.learning_rate(peak, num_iters(kind, cfg), cfg["schedule"])
    if cfg["clip"]:
        return optax.chain(optax.clip_by_global_norm(cfg["clip"]), optax.adam(lr))
    return optax.adam(lr)


def num_iters(kind: str, cfg: dict[str, Any]) -> int:
    return cfg["ffjord_iters"] if kind.startswith("ffjord") else cfg["iters"]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def eval_model(kind, model, cfg):
    """The model as evaluated: CNFs with the exact trace at the evaluation tolerance."""
    if kind == "nf":
        return model
    # throw=False: a failed solve (e.g. a far-out grid point) gives NaN instead of an error
    solve = model.solve.replace(rtol=cfg["eval_rtol"], atol=cfg["eval_atol"], throw=False)
    return nde.nn.CNF(
        model.field, base=model.base, t0=model.t0, t1=model.t1, trace="exact",
        noise=model.noise, solve=solve,
    )


@eqx.filter_jit
def _log_prob_chunk(kind, model, x):
    if kind == "nf":
        return model.log_prob(x), jnp.zeros(x.shape[0], x.dtype)
    logp, stats = model.log_prob(x, return_stats=True)
    return logp, stats["nfe"].astype(logp.dtype)


def log_prob_batched(kind, model, x, chunk: int):
    """``log p`` and NFE of every row of ``x`` in fixed-size (padded) chunks: one compile."""
    x = np.asarray(x, jnp.result_type(float))
    n = x.shape[0]
    pad = (-n) % chunk
    x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
    logps, nfes = [], []
    for start in range(0, x.shape[0], chunk):
        lp, nfe = _log_prob_chunk(kind, model, jnp.asarray(x[start : start + chunk]))
        logps.append(np.asarray(lp, np.float64))
        nfes.append(np.asarray(nfe, np.float64))
    return np.concatenate(logps)[:n], np.concatenate(nfes)[:n]


def evaluate(kind, model, dataset, cfg, seed: int) -> dict[str, float]:
    """Test NLL on ``test_samples`` fresh samples, its standard error, and the mean NFE."""
    x = sample_data(dataset, jax.random.key(2**20 + seed), cfg["test_samples"], cfg)
    t0 = time.perf_counter()
    logp, nfe = log_prob_batched(kind, eval_model(kind, model, cfg), x, cfg["eval_chunk"])
    out = {
        "test_nll": float(-np.mean(logp)),
        "test_nll_se": float(np.std(logp) / math.sqrt(len(logp))),
        "test_time_s": time.perf_counter() - t0,
    }
    if kind != "nf":
        out["nfe_test"] = float(np.mean(nfe))
    return out


def grid_points(n: int) -> np.ndarray:
    c = np.linspace(-LIM, LIM, n)
    return np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)


def grid_log_density(kind, model, cfg) -> np.ndarray:
    n = cfg["plot_grid"]
    model = eval_model(kind, model, cfg)
    logp, _ = log_prob_batched(kind, model, grid_points(n), cfg["eval_chunk"])
    return logp.reshape(n, n)


@eqx.filter_jit
def _samples(model, key, n):
    return model.sample(key, n)


@eqx.filter_jit
def cnf_flow(model: nde.nn.CNF, z1, ts):
    """Base samples ``z1`` (at ``t1``) integrated back to ``t0`` as one state, output at every
    ``ts``."""
    opts = model.solve
    sol = nde.odeint(
        nde.nn.BatchField(model.field), z1, ts, rtol=opts.rtol, atol=opts.atol,
        solver=opts.solver, throw=False,
    )
    return sol.ys


# ---------------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(kind, dataset, run: C.Invocation):
    """Train (or resume) one model, evaluate it; results cached in ``eval.json``.

    Returns ``(record, trained model, log density on the plotting grid, samples)``.
    """
    cfg, seed = run.cfg, run.args.seed
    run_dir = run.out / dataset / kind
    iters = num_iters(kind, cfg)
    key = jax.random.fold_in(
        jax.random.key(seed), 100 * DATASETS.index(dataset) + MODELS.index(kind)
    )
    model = make_model(kind, cfg, key)
    trainer = run.trainer(
        run_dir, make_loss(kind, cfg), make_optimizer(kind, cfg),
        lambda step, key: sample_data(dataset, key, cfg["batch"], cfg),
        {"model": kind, "dataset": dataset, **cfg},
    )
    what = f"{dataset}: {TITLES[kind]}, {iters} iterations, {C.count_params(model):,} parameters"
    state = run.fit(trainer, model, iters, what)
    settings = {k: cfg[k] for k in ("test_samples", "eval_rtol", "eval_atol", "plot_grid")}
    arrays_path = run_dir / "plots.npz"
    if (cached := C.cached_eval(run_dir, state.step, settings, arrays_path)) is not None:
        arrays = np.load(arrays_path)
        return cached, state.model, arrays["grid"], arrays["samples"]
    t0 = time.perf_counter()
    rec = evaluate(kind, state.model, dataset, cfg, seed)
    grid = grid_log_density(kind, state.model, cfg)
    samples = np.asarray(
        _samples(eval_model(kind, state.model, cfg), jax.random.key(7),
                 cfg["flow_samples"])
    )
    logs = C.read_jsonl(run_dir / nde.training.METRICS_NAME)
    tail = [r for r in logs if r["step"] > 0.9 * state.step and "nfe" in r]
    rec.update({
        "step": state.step,
        "settings": settings,
        "params": C.count_params(state.model),
        "train_time_s": C.train_time(run_dir / nde.training.METRICS_NAME),
        "eval_time_s": time.perf_counter() - t0,
    })
    if tail:  # training-time NFE of the forward solve over the last 10% of iterations
        rec["nfe_train"] = float(np.mean([r["nfe"] for r in tail]))
        if "nll" in tail[-1]:
            rec["train_nll_last"] = float(np.mean([r["nll"] for r in tail]))
        if "kinetic" in tail[-1]:
            rec["kinetic"] = float(np.mean([r["kinetic"] for r in tail]))
            rec["jacobian"] = float(np.mean([r["jacobian"] for r in tail]))
    np.savez(arrays_path, grid=grid, samples=samples)
    C.store_eval(run_dir, rec)
    return rec, state.model, grid, samples


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def markdown_table(results, cfg, preset) -> str:
    caption = (
        f"Maximum likelihood (Figure 5), preset `{preset}`: test NLL (nats, lower is better) on "
        f"{cfg['test_samples']} fresh samples, ± 1 standard error; exact trace at rtol = atol = "
        f"{cfg['eval_rtol']:g}. Training at rtol = atol = {cfg['rtol']:g}, batch {cfg['batch']}, "
        f"{cfg['iters']} iterations (FFJORD {cfg['ffjord_iters']})."
    )
    rows = [
        [dataset, TITLES[kind], f"{r['test_nll']:.3f} ± {r['test_nll_se']:.3f}",
         fmt(r.get("nfe_train"), ".1f", "–"), fmt(r.get("nfe_test"), ".1f", "–"),
         f"{r['train_time_s']:.0f} s", f"{r['params']:,}"]
        for dataset in cfg["datasets"]
        for kind in cfg["models"]
        for r in [results[dataset][kind]]
    ]
    columns = ["Data", "Model", "Test NLL", "NFE (train, fwd)", "NFE (test)", "Train time",
               "Params"]
    return captioned_table(caption, columns, rows)


def make_plots(out: pathlib.Path, cfg, results, grids, samples, models, seed) -> list[str]:
    plt = C.pyplot()
    plots = []
    datasets, kinds = cfg["datasets"], cfg["models"]
    extent = (-LIM, LIM, -LIM, LIM)
    ncol = 1 + len(kinds)
    bins = np.linspace(-LIM, LIM, 121)
    data = {
        d: np.asarray(sample_data(d, jax.random.key(3 + seed), cfg["flow_samples"], cfg))
        for d in datasets
    }
    for name, what in (("densities.png", "density"), ("samples.png", "samples")):
        fig, axes = plt.subplots(
            len(datasets), ncol, figsize=(2.4 * ncol, 2.4 * len(datasets) + 0.3), squeeze=False
        )
        for r, dataset in enumerate(datasets):
            axes[r, 0].hist2d(*data[dataset].T, bins=bins, cmap="inferno")
            axes[r, 0].set_ylabel(dataset)
            if r == 0:
                axes[r, 0].set_title("data", fontsize=9)
            for c, kind in enumerate(kinds, start=1):
                ax = axes[r, c]
                if what == "density":
                    dens = np.nan_to_num(np.exp(grids[(dataset, kind)]))
                    ax.imshow(dens, origin="lower", extent=extent, cmap="inferno")
                else:
                    s = samples[(dataset, kind)]
                    s = s[np.all(np.isfinite(s), axis=1)]
                    ax.hist2d(*s.T, bins=bins, cmap="inferno")
                if r == 0:
                    ax.set_title(TITLES[kind], fontsize=9)
                ax.set_xlabel(f"NLL {results[dataset][kind]['test_nll']:.3f}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        fig.suptitle(f"Maximum likelihood: model {what}", fontsize=10)
        plots.append(C.save_figure(fig, out / name))

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for i, kind in enumerate(kinds):
            logs = C.read_jsonl(out / dataset / kind / nde.training.METRICS_NAME)
            if logs:
                ys = [r.get("nll", r["loss"]) for r in logs]
                ax.plot([r["step"] for r in logs], ys, color=f"C{i}", lw=1, label=TITLES[kind])
        ax.set(xlabel="iteration", ylabel="training NLL (batch)", title=dataset)
        ax.set_ylim(top=min(5.0, ax.get_ylim()[1]))
        ax.legend(fontsize=7)
    plots.append(C.save_figure(fig, out / "loss_curves.png"))

    if "cnf" in kinds:  # the planar CNF's flow of base samples over time (t1 -> t0)
        nt = 6
        fig, axes = plt.subplots(
            len(datasets), nt, figsize=(2.3 * nt, 2.4 * len(datasets) + 0.3), squeeze=False
        )
        for r, dataset in enumerate(datasets):
            model = models[(dataset, "cnf")]
            z1 = model.base.sample(jax.random.key(11), cfg["flow_samples"])
            ts = jnp.linspace(model.t1, model.t0, nt)
            ys = np.asarray(cnf_flow(model, z1, ts))
            for c in range(nt):
                ax = axes[r, c]
                y = ys[c][np.all(np.isfinite(ys[c]), axis=1)]
                ax.hist2d(*y.T, bins=bins, cmap="inferno")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_aspect("equal")
                if r == 0:
                    ax.set_title(f"t = {float(ts[c]):.0f}", fontsize=9)
            axes[r, 0].set_ylabel(dataset)
        fig.suptitle("Planar CNF: base samples (t = 10) flowing to data (t = 0)", fontsize=10)
        plots.append(C.save_figure(fig, out / "cnf_flow.png"))
    return plots


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    run = SCRIPT.start(argv)
    args, cfg, out = run.args, run.cfg, run.out
    run.write_config()

    results: dict[str, dict[str, dict]] = {}
    grids, samples, models = {}, {}, {}
    for dataset in cfg["datasets"]:
        results[dataset] = {}
        for kind in cfg["models"]:
            rec, model, grid, smp = train_and_evaluate(kind, dataset, run)
            results[dataset][kind] = rec
            grids[(dataset, kind)], samples[(dataset, kind)] = grid, smp
            models[(dataset, kind)] = model
            nfe = [fmt(rec.get(k), ".1f", "–") for k in ("nfe_train", "nfe_test")]
            print(f"  {dataset} {kind}: test NLL {rec['test_nll']:.4f} ± {rec['test_nll_se']:.4f}"
                  f", NFE train {nfe[0]} test {nfe[1]}, train {rec['train_time_s']:.0f} s",
                  flush=True)

    C.write_combined_metrics(
        out,
        (
            (out / dataset / kind, {"dataset": dataset, "model": kind})
            for dataset in cfg["datasets"]
            for kind in cfg["models"]
        ),
    )

    keys = ("test_nll", "test_nll_se", "nfe_train", "nfe_test", "train_time_s", "params",
            "kinetic", "jacobian")
    metrics: dict[str, Any] = {k: {} for k in keys}
    rows = []
    for dataset in cfg["datasets"]:
        for k in keys:
            metrics[k][dataset] = {}
        for kind in cfg["models"]:
            r = results[dataset][kind]
            for k in keys:
                if k in r:
                    metrics[k][dataset][kind] = r[k]
            rows.append({"dataset": dataset, "model": kind, "title": TITLES[kind],
                         **{k: r.get(k) for k in keys}})
    for k in ("kinetic", "jacobian"):
        metrics[k] = {d: v for d, v in metrics[k].items() if v}
    table = markdown_table(results, cfg, args.preset)
    plots = make_plots(out, cfg, results, grids, samples, models, args.seed)
    model_time = sum(
        results[d][k]["train_time_s"] + results[d][k]["eval_time_s"]
        for d in cfg["datasets"] for k in cfg["models"]
    )
    return run.finish(
        max(model_time, run.elapsed()), table, plots, metrics=metrics, table=rows, paper=PAPER,
        notes=NOTES,
    )


if __name__ == "__main__":
    main()
