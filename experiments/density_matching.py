"""Figure 4 of Chen et al. (2018): density matching with a planar CNF versus a planar NF.

Both models minimise the reverse KL divergence ``KL(q‖p) = E_q[log q(x) − log p̃(x)] + log Z``
to an unnormalised 2-D target ``p̃ = exp(−U)`` (Rezende & Mohamed 2015): draw samples from the
model together with their exact log densities, evaluate the target energy, average.

- **CNF**: ``nde.nn.planar_cnf(2, M)``, the paper's planar CNF ``dz/dt = Σ_n σ_n(t) u_n
  tanh(w_nᵀz + b_n)`` with a hypernetwork of ``t`` (hidden width 32) and exact trace, base
  ``N(0, I)`` at ``t1``; samples come from one backward solve (``sample_and_log_prob``);
  gradients by the adjoint method. Adam (the paper: 10,000 iterations).
- **NF**: ``nde.nn.PlanarFlow(2, K)``, ``K`` planar layers (Rezende & Mohamed), exact log
  density at its samples. RMSprop (the paper: 500,000 iterations).
- ``M = K = 2, 8, 32`` on three targets ``u1``–``u3`` (``nde.datasets.target_log_density``).

The CNF integrates over ``t ∈ [0, 1]`` and its ``u_n`` start scaled by ``1/M`` (the reference
code averages its units; see ``_cnf.average_units_at_init``). Both models use a 5% warm-up and
cosine decay of the learning rate in the ``small`` preset, the same number of iterations and the
same batch size. Gradients: the ``paper`` preset uses the paper's adjoint method
(``nde.BacksolveAdjoint``); ``small`` uses ``nde.CheckpointAdjoint`` (exact gradients of the
discrete solve), 3-5x faster per gradient for these per-sample (vmapped) solves on a CPU.

**Targets.** ``u2``–``u4`` are constant along ``z1`` and so not normalisable on ``R²``; the
reverse KL would then be unbounded below (the model gains entropy by spreading along ``z1``
for ever). Every target is therefore confined to the window ``[−4, 4]²`` in which Rezende &
Mohamed (and the paper) plot them, by a soft Gaussian wall of width 0.2 outside the window
(``u1`` is unaffected: its mass lies well inside). The log normaliser ``log Z`` is computed by
numerically integrating ``p̃`` on a fine grid, so the reported ``KL = loss + log Z ≥ 0`` is the
true divergence (up to Monte Carlo error of the final evaluation, which is reported too).

Run: ``python -m experiments.density_matching --preset {smoke,small,paper} --out
runs/density_matching-<preset>`` (``--set key=value`` changes a preset entry, e.g. ``--set
targets=u1,u2 --set sizes=2,8``). Every model trains with ``nde.training.Trainer`` in its own
sub-folder ``<target>/cnf-M<M>/`` or ``<target>/nf-K<K>/`` (config.json, metrics.jsonl with loss
and NFE, checkpoint.eqx, eval.json); the run folder gets config.json, metrics.jsonl (all logs,
tagged), table.md, summary.json and the plots. Running the same command again resumes every
model from its checkpoint (finished models are only re-loaded); a model whose settings changed
since is refused (the error lists the keys), and ``--fresh`` starts over, moving the old run
folder aside to ``<out>.old-<timestamp>``.
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
from experiments._report import captioned_table

EXPERIMENT = "density_matching"
KINDS = ("cnf", "nf")
TITLES = {"cnf": "Planar CNF", "nf": "Planar NF"}
BOX = 4.0  # the plotting window [-BOX, BOX]^2 of Rezende & Mohamed
WALL = 0.2  # width of the soft wall that confines the target to the window

PAPER = {
    "figure": "Figure 4",
    "claim": "the planar CNF reaches a lower KL(q||p) than the planar NF at equal M = K",
    "sizes": [2, 8, 32],
    "cnf": {"optimizer": "adam", "iterations": 10_000},
    "nf": {"optimizer": "rmsprop", "iterations": 500_000},
    "final_loss": None,  # the paper shows density plots only, no numbers
}

NOTES = (
    "loss = E_q[log q - log p~] on fresh samples (evaluation tolerance eval_rtol); "
    "KL = loss + log Z with log Z from a grid integral of the confined target "
    f"(box [-{BOX}, {BOX}]^2, soft wall width {WALL}). CNF and NF run the same number "
    "of iterations in the smoke and small presets. wall_time_s = training and evaluation "
    "time of all models (summed over resumes), or this invocation's time if larger."
)

# Every setting per preset: (smoke, small, paper). smoke: seconds, a few steps of one target
# and size, for the test suite; small: minutes on a 2-core CPU, the same number of iterations
# for CNF and NF; paper: the paper's settings (CNF 10k Adam, NF 500k RMSprop iterations), for
# a GPU.
_SETTINGS: dict[str, tuple[Any, Any, Any]] = {
    "targets": (("u1",), ("u1", "u2", "u3"), ("u1", "u2", "u3")),
    "sizes": ((2,), (2, 8, 32), (2, 8, 32)),
    "cnf_iters": (4, 1000, 10_000), "nf_iters": (4, 1000, 500_000),
    "batch": (32, 256, 512),
    "cnf_lr": (1e-2, 1e-2, 1e-3), "nf_lr": (1e-2, 1e-2, 1e-4),
    **_cnf.SOLVE_SETTINGS,  # schedule, solver, adjoint, hyper_width, (eval_)rtol, (eval_)atol
    "t1": (1.0, 1.0, 1.0),
    "eval_samples": (256, 4096, 20_000), "norm_grid": (256, 1024, 2048),
    "plot_grid": (24, 64, 200),
    "log_every": (1, 10, 50), "checkpoint_every": (2, 100, 1000),
}
PRESETS = C.presets_from_columns(_SETTINGS)
SCRIPT = C.Script(EXPERIMENT, __doc__, PRESETS, choices={"targets": nde.datasets.TARGET_NAMES})


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def target_log_density(name: str, z):
    """``log p̃(z)``: the library's energy ``−U(z)`` confined to ``[−BOX, BOX]²`` by a soft
    Gaussian wall (see the module docstring)."""
    z = jnp.asarray(z)
    excess = jnp.maximum(jnp.abs(z) - BOX, 0.0)
    return nde.datasets.target_log_density(name, z) - 0.5 * jnp.sum((excess / WALL) ** 2, -1)


def log_normaliser(name: str, n: int) -> float:
    """``log ∫ p̃`` by the midpoint rule on an ``n × n`` grid over ``[−BOX − 8·WALL, …]²``
    (the wall's tail beyond it is below ``e^{−32}``), accumulated in float64 by NumPy."""
    lim = BOX + 8 * WALL
    h = 2 * lim / n
    c = -lim + h * (np.arange(n) + 0.5)
    total = -np.inf
    for rows in np.array_split(np.arange(n), 8):
        zz = np.stack(np.meshgrid(c, c[rows], indexing="xy"), -1).reshape(-1, 2)
        lp = np.asarray(target_log_density(name, jnp.asarray(zz, jnp.float32)), np.float64)
        total = np.logaddexp(total, _logsumexp(lp))
    return float(total + 2 * math.log(h))


def _logsumexp(a):
    m = np.max(a)
    return m + np.log(np.sum(np.exp(a - m)))


# ---------------------------------------------------------------------------------------------
# Models and losses
# ---------------------------------------------------------------------------------------------


def make_model(kind: str, size: int, cfg: dict[str, Any], key):
    base = nde.nn.StandardNormal(2)
    if kind == "cnf":
        cnf = nde.nn.planar_cnf(
            2, size, hyper_width=cfg["hyper_width"], base=base, t0=0.0, t1=cfg["t1"],
            solve=_cnf.training_solve(cfg), key=key,
        )
        return _cnf.average_units_at_init(cnf)
    if kind == "nf":
        # Rezende and Mohamed's plain random draw (not the library's volume-preserving
        # default): the sampling direction is well-conditioned either way, and the numbers of
        # docs/reproduction.md were made with it.
        return nde.nn.PlanarFlow(2, size, base=base, init="random", key=key)
    raise ValueError(f"unknown model kind {kind!r}")


def sample_and_log_prob(kind, model, key, n):
    """``(x, log q(x), nfe per sample or None)``."""
    if kind == "cnf":
        x, logq, stats = model.sample_and_log_prob(key, n, return_stats=True)
        return x, logq, stats["nfe"]
    x, logq = model.sample_and_log_prob(key, n)
    return x, logq, None


def make_loss(kind: str, target: str, batch: int):
    def loss_fn(model, _batch, key):
        x, logq, nfe = sample_and_log_prob(kind, model, key, batch)
        loss = jnp.mean(logq - target_log_density(target, x))
        aux = {}
        if nfe is not None:
            aux = {"nfe": jnp.mean(nfe.astype(jnp.float32)), "nfe_max": jnp.max(nfe)}
        return loss, aux

    return loss_fn


def make_optimizer(kind: str, cfg: dict[str, Any]):
    """CNF: Adam; NF: RMSprop (as in the paper); constant or cosine-decayed learning rate."""
    lr = C.learning_rate(cfg[f"{kind}_lr"], cfg[f"{kind}_iters"], cfg["schedule"])
    if kind == "cnf":
        return optax.adam(lr)
    return optax.rmsprop(lr, decay=0.9, momentum=0.9)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _eval_chunk(kind, model, key, target, n):
    x, logq, nfe = sample_and_log_prob(kind, model, key, n)
    diff = logq - target_log_density(target, x)
    nfe = jnp.zeros_like(logq) if nfe is None else nfe.astype(logq.dtype)
    return diff, nfe


def evaluate(kind, model, target, cfg, key, chunk: int = 2048) -> dict[str, float]:
    """Monte Carlo estimate of the loss ``E_q[log q − log p̃]`` from ``eval_samples`` fresh
    samples (CNF solved at the evaluation tolerance), with its standard error."""
    if kind == "cnf":
        model = model.with_solve(rtol=cfg["eval_rtol"], atol=cfg["eval_atol"])
    n = cfg["eval_samples"]
    diffs, nfes = [], []
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        d, f = _eval_chunk(kind, model, jax.random.fold_in(key, i), target, m)
        diffs.append(np.asarray(d, np.float64))
        nfes.append(np.asarray(f, np.float64))
    d, f = np.concatenate(diffs), np.concatenate(nfes)
    out = {"loss": float(np.mean(d)), "loss_se": float(np.std(d) / math.sqrt(len(d)))}
    if kind == "cnf":
        out["nfe"] = float(np.mean(f))
    return out


def plot_grid(n: int) -> np.ndarray:
    c = np.linspace(-BOX, BOX, n)
    return np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)


@eqx.filter_jit
def _grid_log_prob(model, pts):
    return model.log_prob(pts)


def grid_log_density(kind, model, n: int) -> np.ndarray:
    """``log q`` on the ``n × n`` plotting grid (NaN where a CNF solve fails)."""
    pts = jnp.asarray(plot_grid(n))
    if kind == "cnf":  # generous settings: far-out points may need many steps
        model = model.with_solve(throw=False, max_steps=2048)
    out = [np.asarray(_grid_log_prob(model, chunk)) for chunk in jnp.array_split(pts, 4)]
    return np.concatenate(out).reshape(n, n)


# ---------------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------------


def run_name(kind: str, size: int) -> str:
    return f"cnf-M{size}" if kind == "cnf" else f"nf-K{size}"


def train_and_evaluate(kind, size, target, run: C.Invocation):
    """Train (or resume) one model and evaluate it; results cached in ``eval.json``."""
    cfg, seed = run.cfg, run.args.seed
    run_dir = run.out / target / run_name(kind, size)
    iters = cfg[f"{kind}_iters"]
    key = jax.random.fold_in(
        jax.random.key(seed),
        1000 * KINDS.index(kind) + 100 * nde.datasets.TARGET_NAMES.index(target) + size,
    )
    model = make_model(kind, size, cfg, key)
    every = cfg["checkpoint_every"] * (1 if kind == "cnf" else 10)  # NF steps are cheap
    config = {"model": kind, "size": size, "target": target, **cfg}
    trainer = run.trainer(
        run_dir, make_loss(kind, target, cfg["batch"]), make_optimizer(kind, cfg),
        lambda step, key: None, config, checkpoint_every=every,
    )
    what = f"{target}: {TITLES[kind]} {run_name(kind, size)}, {iters} iterations"
    state = run.fit(trainer, model, iters, what)
    eval_settings = {k: cfg[k] for k in ("eval_samples", "eval_rtol", "eval_atol", "plot_grid")}
    grid_path = run_dir / "density_grid.npy"
    if (cached := C.cached_eval(run_dir, state.step, eval_settings, grid_path)) is not None:
        return cached, np.load(grid_path)
    t0 = time.perf_counter()
    res = evaluate(kind, state.model, target, cfg, jax.random.key(10_000 + seed))
    grid = grid_log_density(kind, state.model, cfg["plot_grid"])
    res["eval_time_s"] = time.perf_counter() - t0
    res["train_time_s"] = C.train_time(run_dir / nde.training.METRICS_NAME)
    res["iterations"] = state.step
    record = {"step": state.step, "settings": eval_settings, **res}
    np.save(grid_path, grid)
    C.store_eval(run_dir, record)
    return record, grid


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def markdown_table(results, log_z, cfg, preset) -> str:
    caption = (
        f"Density matching (Figure 4), preset `{preset}`: final KL(q||p) = loss + log Z "
        f"({cfg['eval_samples']} samples; ± 1 standard error). CNF {cfg['cnf_iters']} Adam, "
        f"NF {cfg['nf_iters']} RMSprop iterations."
    )
    rows = []
    for target in cfg["targets"]:
        for size in cfg["sizes"]:
            c, f = results[target]["cnf"][size], results[target]["nf"][size]
            lz = log_z[target]
            kl = [f"{r['loss'] + lz:.3f} ± {r['loss_se']:.3f}" for r in (c, f)]
            losses = [f"{r['loss']:.3f}" for r in (c, f)]
            lower = "CNF" if c["loss"] <= f["loss"] else "NF"
            rows.append([target, f"{lz:.3f}", size, *losses, *kl, f"{c['nfe']:.1f}", lower])
    columns = ["Target", "log Z", "M = K", "CNF loss", "NF loss", "CNF KL", "NF KL", "CNF NFE",
               "lower"]
    return captioned_table(caption, columns, rows)


def make_plots(out: pathlib.Path, cfg, log_z, grids) -> list[str]:
    plt = C.pyplot()
    plots = []
    targets, sizes = cfg["targets"], cfg["sizes"]
    n = cfg["plot_grid"]
    extent = (-BOX, BOX, -BOX, BOX)
    ncol = 1 + 2 * len(sizes)
    fig, axes = plt.subplots(
        len(targets), ncol, figsize=(1.9 * ncol, 1.9 * len(targets) + 0.4), squeeze=False
    )
    for r, target in enumerate(targets):
        pts = jnp.asarray(plot_grid(n))
        tgt = np.exp(np.asarray(target_log_density(target, pts)) - log_z[target]).reshape(n, n)
        panels = [("target", tgt)]
        for kind, label in (("nf", "NF K"), ("cnf", "CNF M")):
            for size in sizes:
                panels.append((f"{label}={size}", np.exp(grids[(target, kind, size)])))
        for c, (title, dens) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.nan_to_num(dens), origin="lower", extent=extent, cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(target)
    fig.suptitle("Target vs planar NF (K layers) vs planar CNF (M units)", fontsize=10)
    plots.append(C.save_figure(fig, out / "densities.png"))

    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for kind, style in (("nf", "--"), ("cnf", "-")):
            for i, size in enumerate(sizes):
                logs = C.read_jsonl(out / target / run_name(kind, size) / nde.training.METRICS_NAME)
                if logs:
                    ax.plot(
                        [r["step"] for r in logs],
                        [r["loss"] + log_z[target] for r in logs],
                        style,
                        color=f"C{i}",
                        lw=1,
                        label=f"{kind.upper()} {'M' if kind == 'cnf' else 'K'}={size}",
                    )
        ax.set(xlabel="iteration", ylabel="KL(q||p) (batch estimate)", title=target)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.legend(fontsize=7)
    plots.append(C.save_figure(fig, out / "loss_curves.png"))
    return plots


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    run = SCRIPT.start(argv)
    args, cfg, out = run.args, run.cfg, run.out
    run.write_config(target_confinement={"box": BOX, "wall_width": WALL})

    log_z = {t: log_normaliser(t, cfg["norm_grid"]) for t in cfg["targets"]}
    results: dict[str, dict[str, dict[int, dict]]] = {}
    grids = {}
    for target in cfg["targets"]:
        results[target] = {"cnf": {}, "nf": {}}
        for size in cfg["sizes"]:
            for kind in ("nf", "cnf"):
                rec, grid = train_and_evaluate(kind, size, target, run)
                results[target][kind][size] = rec
                grids[(target, kind, size)] = grid
                print(f"  {target} {run_name(kind, size)}: loss {rec['loss']:.4f} "
                      f"(KL {rec['loss'] + log_z[target]:.4f} ± {rec['loss_se']:.4f})", flush=True)

    # all training logs in one file, tagged (rebuilt from the sub-runs)
    C.write_combined_metrics(
        out,
        (
            (out / target / run_name(kind, size), {"target": target, "model": kind, "size": size})
            for target in cfg["targets"]
            for size in cfg["sizes"]
            for kind in KINDS
        ),
    )

    rows, wins, targets_won = [], 0, 0
    metrics: dict[str, Any] = {"log_normaliser": log_z, "final_loss": {}, "kl": {}, "kl_se": {}}
    for target in cfg["targets"]:
        all_sizes = True
        for key in ("final_loss", "kl", "kl_se"):
            metrics[key][target] = {}
        for size in cfg["sizes"]:
            c, f = results[target]["cnf"][size], results[target]["nf"][size]
            cnf_lower = c["loss"] <= f["loss"]
            wins += cnf_lower
            all_sizes &= cnf_lower
            for kind, r in (("cnf", c), ("nf", f)):
                name = run_name(kind, size)
                metrics["final_loss"][target][name] = r["loss"]
                metrics["kl"][target][name] = r["loss"] + log_z[target]
                metrics["kl_se"][target][name] = r["loss_se"]
            rows.append({
                "target": target,
                "size": size,
                "log_z": log_z[target],
                "cnf_loss": c["loss"],
                "nf_loss": f["loss"],
                "cnf_kl": c["loss"] + log_z[target],
                "nf_kl": f["loss"] + log_z[target],
                "cnf_kl_se": c["loss_se"],
                "nf_kl_se": f["loss_se"],
                "cnf_nfe": c["nfe"],
                "cnf_train_time_s": c["train_time_s"],
                "nf_train_time_s": f["train_time_s"],
                "cnf_lower": bool(cnf_lower),
            })
        targets_won += all_sizes
    per_size = {
        str(size): sum(r["cnf_lower"] for r in rows if r["size"] == size) for size in cfg["sizes"]
    }
    metrics["cnf_lower_pairs"] = int(wins)
    metrics["pairs"] = len(rows)
    metrics["targets_cnf_lower_per_size"] = per_size
    metrics["targets_cnf_lower_at_every_size"] = int(targets_won)
    # acceptance (small preset): at every M = K, CNF KL <= NF KL on at least 2 of 3 targets
    need = min(2, len(cfg["targets"]))
    metrics["acceptance_cnf_le_nf_on_2_of_3_targets"] = all(v >= need for v in per_size.values())
    table = markdown_table(results, log_z, cfg, args.preset)
    plots = make_plots(out, cfg, log_z, grids)
    model_time = sum(r["cnf_train_time_s"] + r["nf_train_time_s"] for r in rows) + sum(
        results[t][k][s]["eval_time_s"] for t in cfg["targets"] for k in KINDS for s in cfg["sizes"]
    )
    summary = run.finish(
        max(model_time, run.elapsed()), table, plots, metrics=metrics, table=rows, paper=PAPER,
        notes=NOTES,
    )
    print(f"[{EXPERIMENT}] CNF lower at {wins}/{len(rows)} (target, M=K) pairs; targets with CNF "
          f"lower per M = K: {per_size}.")
    return summary


if __name__ == "__main__":
    main()
