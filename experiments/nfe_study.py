"""Figure 3 of Chen et al. (2018): NFE studies of a trained ODE-Net on MNIST.

On the ODE-Net of an ``experiments.mnist`` run (``--from runs/mnist-<preset>``; if that
folder has no trained ODE-Net, one is trained first with mnist.py's same preset into
``<out>/mnist``), on a fixed batch of test digits solved as one ODE state:

- (a) NFE vs numerical error across tolerances; the error of the ODE block's output h(1) is
  measured against a tight float64 Dopri8 solve of the same block;
- (b) forward wall time vs NFE (jitted ODE block, best and median of repeats, timed
  round-robin over the tolerances);
- (c) NFE-B vs NFE-F of the adjoint (backward NFE from the stats probe), with and without the
  seminorm; the paper says backward takes roughly half the forward evaluations, independent
  replications measure 0.78-0.86;
- (d) NFE during training, from the mnist run's ODE-Net ``metrics.jsonl`` (NFE per logged
  step) and ``eval.jsonl`` (NFE per epoch on the test set).

Run: ``python -m experiments.nfe_study --preset small --from runs/mnist-small
--out runs/nfe_study-small``. Writes config.json, metrics.jsonl (one row per tolerance),
summary.json and PNGs (fig3.png and one per panel). Re-running reuses the rows of completed
tolerances when the configuration and the checkpoint are unchanged; ``--fresh`` starts over,
moving the old run folder (with an ODE-Net trained into it) aside to ``<out>.old-<timestamp>``.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from experiments import _common as C
from experiments import mnist

EXPERIMENT = "nfe_study"

PAPER = {
    "a": "numerical error is controlled by the tolerance (error decreases as NFE grows)",
    "b": "forward wall time is proportional to NFE",
    "c": "NFE-B is roughly half of NFE-F (independent replications measure 0.78-0.86)",
    "d": "NFE grows during training",
    "nfe_b_over_f": 0.5,
    "nfe_b_over_f_replications": [0.78, 0.86],
}

_TOLERANCES = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
# Every setting per preset: (smoke, small, paper).
_SETTINGS: dict[str, tuple[Any, Any, Any]] = {
    "tolerances": ([1e-1, 1e-2, 1e-3], _TOLERANCES, _TOLERANCES),
    "num_images": (8, 128, 256),
    "reference_tol": (1e-8, 1e-10, 1e-10),
    "timing_repeats": (2, 10, 20),
    "fast_compile": (True, False, False),
}
PRESETS = C.presets_from_columns(_SETTINGS)
FROM = dict(dest="from_dir", default=None,
            help="mnist run folder with a trained ODE-Net (default runs/mnist-<preset>)")
SCRIPT = C.Script(EXPERIMENT, __doc__, PRESETS, options=[("--from", FROM)])


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _block_forward(block, h0, rtol, atol):
    h1, stats = block(h0, return_stats=True, rtol=rtol, atol=atol)
    return h1, stats["nfe"]


def reference_solution(model, h0, tol: float, options=None):
    """The ODE block's output from a tight float64 Dopri8 solve (and its NFE)."""
    with jax.enable_x64(True):
        block64 = jax.tree.map(
            lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model.block
        )
        block64 = block64.with_solve(solver=nde.Dopri8(), rtol=tol, atol=tol, max_steps=100_000)
        h1, nfe = mnist.jit(_block_forward, options)(
            block64, jnp.asarray(h0, jnp.float64), None, None
        )
        return np.asarray(h1), int(nfe)


def time_forward(block, h0, tols, repeats: int, options=None) -> list[list[float]]:
    """Wall times (s) of the jitted forward solve of the block at each tolerance.

    The tolerances are timed round-robin, ``repeats`` rounds after a warm-up round, so a
    change of the machine's load during the measurement hits every tolerance alike.
    """
    fn = mnist.jit(_block_forward, options)
    args = [(jnp.asarray(tol, jnp.float32),) * 2 for tol in tols]
    for rtol, atol in args:
        jax.block_until_ready(fn(block, h0, rtol, atol))
    times: list[list[float]] = [[] for _ in tols]
    for _ in range(repeats):
        for i, (rtol, atol) in enumerate(args):
            t = time.perf_counter()
            jax.block_until_ready(fn(block, h0, rtol, atol))
            times[i].append(time.perf_counter() - t)
    return times


def measure_tolerance(model, x, y, h0, h_ref, tol: float, options=None) -> dict:
    """Figure 3 (a) and (c) quantities at one tolerance (rtol = atol = tol)."""
    rtol = atol = jnp.asarray(tol, jnp.float32)
    fn = mnist.jit(_block_forward, options)
    h1, nfe_f = fn(model.block, h0, rtol, atol)
    h1 = np.asarray(h1, np.float64)
    diff = h1 - h_ref
    logits = jax.vmap(model.head)(jnp.asarray(h1, jnp.float32))
    row: dict[str, Any] = {
        "tol": tol,
        "nfe_f": int(nfe_f),
        "error_rms": float(np.sqrt(np.mean(diff**2))),
        "error_max": float(np.max(np.abs(diff))),
        "error_rel": float(np.linalg.norm(diff) / np.linalg.norm(h_ref)),
        "batch_acc": float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(y))),
    }
    for tag, seminorm in (("", True), ("_fullnorm", False)):
        m = model.with_solve(adjoint=nde.BacksolveAdjoint(seminorm=seminorm))
        loss, nfe_fb, bstats = mnist.forward_backward_nfe(m, x, y, options, rtol=rtol, atol=atol)
        row["loss"] = float(loss)
        row["nfe_b" + tag] = int(bstats[3])
        row["nfe_b_over_f" + tag] = int(bstats[3]) / max(int(nfe_fb), 1)
        row["backward_steps" + tag] = int(bstats[0])
    return row


def _linear_fit(x, y) -> dict[str, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r": float("nan")}
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r": r}


def training_nfe(from_dir: pathlib.Path) -> dict[str, Any]:
    """Figure 3(d): NFE per logged training step and per evaluated epoch of the mnist run."""
    steps = [
        r for r in C.read_jsonl(from_dir / "odenet" / nde.training.METRICS_NAME) if "nfe" in r
    ]
    evals = C.read_jsonl(from_dir / "odenet" / "eval.jsonl")
    out: dict[str, Any] = {
        "steps": [r["step"] for r in steps],
        "nfe": [r["nfe"] for r in steps],
        "epochs": [r["epoch"] for r in evals],
        "epoch_nfe": [r["nfe_f"] for r in evals],
        "epoch_test_acc": [r["test_acc"] for r in evals],
    }
    if steps:
        k = max(1, len(steps) // 10)
        first = float(np.mean(out["nfe"][:k]))
        last = float(np.mean(out["nfe"][-k:]))
        out.update(
            nfe_first_10pct=first,
            nfe_last_10pct=last,
            nfe_growth=last / first,
            nfe_step_corr=_linear_fit(out["steps"], out["nfe"])["r"],
        )
    return out


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def make_plots(out: pathlib.Path, rows: list[dict], fit: dict, train: dict) -> list[str]:
    plt = C.pyplot()

    nfe = [r["nfe_f"] for r in rows]

    def panel_a(ax):
        ax.loglog(nfe, [r["error_rms"] for r in rows], "o-")
        for r in rows:
            ax.annotate(f"{r['tol']:g}", (r["nfe_f"], r["error_rms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.set(xlabel="NFE (forward)", ylabel="RMS error of h(1)", title="(a) NFE vs error")

    def panel_b(ax):
        ax.plot(nfe, [1e3 * r["time_min_s"] for r in rows], "o", label="best of repeats")
        ax.plot(nfe, [1e3 * r["time_median_s"] for r in rows], "x", label="median", alpha=0.6)
        xs = np.linspace(0, max(nfe) * 1.05, 10)
        ax.plot(xs, 1e3 * (fit["slope"] * xs + fit["intercept"]), "k--", lw=1,
                label=f"fit: {1e3 * fit['slope']:.2f} ms/NFE, r={fit['r']:.3f}")
        ax.set(xlabel="NFE (forward)", ylabel="forward time (ms)", title="(b) NFE vs time")
        ax.legend(fontsize=7)

    def panel_c(ax):
        ax.plot(nfe, [r["nfe_b_fullnorm"] for r in rows], "o", label="adjoint, full norm")
        ax.plot(nfe, [r["nfe_b"] for r in rows], "s", label="adjoint, seminorm")
        xs = np.array([0, max(nfe) * 1.05])
        ax.plot(xs, xs, "k:", lw=1, label="NFE-B = NFE-F")
        ax.plot(xs, 0.5 * xs, "k--", lw=1, label="NFE-B = NFE-F / 2 (paper)")
        ax.set(xlabel="NFE forward", ylabel="NFE backward", title="(c) NFE forward vs backward")
        ax.legend(fontsize=7)

    def panel_d(ax):
        if train.get("steps"):
            ax.plot(train["steps"], train["nfe"], lw=0.8, alpha=0.6, label="per logged step")
            k = max(1, len(train["nfe"]) // 20)
            smooth = np.convolve(train["nfe"], np.ones(k) / k, mode="valid")
            ax.plot(train["steps"][k - 1 :], smooth, lw=1.5, label=f"rolling mean ({k})")
            ax.legend(fontsize=7)
        ax.set(xlabel="training step", ylabel="NFE (forward)", title="(d) NFE during training")

    panels = {"a": ("nfe_vs_error.png", panel_a), "b": ("time_vs_nfe.png", panel_b),
              "c": ("nfe_backward_vs_forward.png", panel_c), "d": ("nfe_training.png", panel_d)}
    plots = []
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.3))
    for ax, (_, draw) in zip(axes, panels.values(), strict=True):
        draw(ax)
    plots.append(C.save_figure(fig, out / "fig3.png"))
    for name, draw in panels.values():
        fig, ax = plt.subplots(figsize=(5.2, 4.3))
        draw(ax)
        plots.append(C.save_figure(fig, out / name))
    return plots


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _has_trained_odenet(run_dir: pathlib.Path) -> bool:
    return (run_dir / "config.json").is_file() and (
        run_dir / "odenet" / nde.training.CHECKPOINT_NAME
    ).is_file()


def main(argv=None) -> dict:
    run = SCRIPT.start(argv)
    args, cfg, out = run.args, run.cfg, run.out
    options = mnist.compiler_options(cfg)

    from_dir = pathlib.Path(args.from_dir or f"runs/mnist-{args.preset}")
    trained_here = False
    if not _has_trained_odenet(from_dir):
        from_dir = out / "mnist"
        print(f"[{EXPERIMENT}] no trained ODE-Net in {args.from_dir or 'runs/mnist-' + args.preset}"
              f"; training one with experiments.mnist --preset {args.preset} into {from_dir}")
        mnist_argv = ["--preset", args.preset, "--set", "models=odenet", "--out", str(from_dir),
                      "--seed", str(args.seed)]
        if args.no_progress:
            mnist_argv.append("--no-progress")
        mnist.main(mnist_argv)
        trained_here = True
    model, mcfg, ckpt_step = mnist.load_trained(from_dir, "odenet")
    mnist_summary_path = from_dir / "summary.json"

    _, _, test_x, test_y, source = mnist.load_data(mcfg)
    n = min(cfg["num_images"], len(test_x))
    x, y = jnp.asarray(test_x[:n]), jnp.asarray(test_y[:n])
    h0 = mnist.jit(lambda m, x: m.features(x), options)(model, x)

    config = run.config(**{
        "from": str(from_dir),
        "trained_here": trained_here,
        "checkpoint_step": ckpt_step,
        "mnist_config": mcfg,
        "data": {"source": source, "num_images": n},
    })
    # reuse completed rows only if nothing that determines them changed
    previous = {}
    config_path = out / "config.json"
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        keys = ("preset_config", "mnist_config", "checkpoint_step", "from", "data")

        def determining(c):  # timings are redone anyway
            c = json.loads(json.dumps({k: c.get(k) for k in keys}))
            c["preset_config"] = {k: v for k, v in (c["preset_config"] or {}).items()
                                  if k != "timing_repeats"}
            return c

        if determining(old) == determining(config):
            previous = {r["tol"]: r for r in C.read_jsonl(out / "metrics.jsonl")}
    C.write_json(config_path, config)

    print(f"[{EXPERIMENT}] ODE-Net from {from_dir} (step {ckpt_step}), {n} test digits as one "
          f"state; reference: float64 Dopri8 at tol {cfg['reference_tol']:g}")
    h_ref, nfe_ref = reference_solution(model, h0, cfg["reference_tol"], options)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        tqdm = None
    tols = cfg["tolerances"]
    bar = tqdm(total=len(tols), desc="tolerances", dynamic_ncols=True) if (
        tqdm is not None and not args.no_progress
    ) else None
    rows: list[dict] = []
    for tol in tols:
        if tol in previous:
            row = previous[tol]
        else:
            row = measure_tolerance(model, x, y, h0, h_ref, tol, options)
        rows.append(row)
        C.write_jsonl(out / "metrics.jsonl", rows)  # written as it goes: resumable
        if bar is not None:
            bar.set_postfix({"tol": f"{tol:g}", "loss": f"{row['loss']:.4g}",
                             "nfe": row["nfe_f"], "nfe_b": row["nfe_b"]}, refresh=False)
            bar.update(1)
        else:
            print(f"  tol {tol:g}: NFE-F {row['nfe_f']}, NFE-B {row['nfe_b']} (full norm "
                  f"{row['nfe_b_fullnorm']}), error {row['error_rms']:.2e}")
    if bar is not None:
        bar.close()

    # (b) timings, redone on every invocation (round-robin over the tolerances)
    times = time_forward(model.block, h0, tols, cfg["timing_repeats"], options)
    for row, ts in zip(rows, times, strict=True):
        row["time_min_s"] = float(np.min(ts))
        row["time_median_s"] = float(np.median(ts))
    C.write_jsonl(out / "metrics.jsonl", rows)

    fit = _linear_fit([r["nfe_f"] for r in rows], [r["time_min_s"] for r in rows])
    fit_median = _linear_fit([r["nfe_f"] for r in rows], [r["time_median_s"] for r in rows])
    train = training_nfe(from_dir)
    ratio_full = [r["nfe_b_over_f_fullnorm"] for r in rows]
    ratio_semi = [r["nfe_b_over_f"] for r in rows]
    train_tol = mcfg["rtol"]
    at_train = min(rows, key=lambda r: abs(np.log(r["tol"] / train_tol)))
    errs = [r["error_rms"] for r in rows]
    def col(key):  # one column of the per-tolerance rows
        return [r[key] for r in rows]

    metrics = {
        "a_nfe_vs_error": {
            "tol": col("tol"),
            "nfe_f": col("nfe_f"),
            "error_rms": errs,
            "error_rel": col("error_rel"),
            "batch_acc": col("batch_acc"),
            "error_monotone_in_tol": bool(np.all(np.diff(errs) <= 0)),
            "log_error_vs_log_nfe_slope": _linear_fit(
                np.log(col("nfe_f")), np.log(np.maximum(errs, 1e-30))
            )["slope"],
            "reference": {"solver": "Dopri8", "dtype": "float64", "tol": cfg["reference_tol"],
                          "nfe": nfe_ref},
        },
        "b_time_vs_nfe": {
            "nfe_f": col("nfe_f"),
            "time_min_s": col("time_min_s"),
            "time_median_s": col("time_median_s"),
            "fit_min": fit,
            "fit_median": fit_median,
            "ms_per_nfe": 1e3 * fit["slope"],
        },
        "c_backward_vs_forward": {
            "nfe_f": col("nfe_f"),
            "nfe_b_fullnorm": col("nfe_b_fullnorm"),
            "nfe_b_seminorm": col("nfe_b"),
            "ratio_fullnorm": ratio_full,
            "ratio_seminorm": ratio_semi,
            "ratio_fullnorm_mean": float(np.mean(ratio_full)),
            "ratio_seminorm_mean": float(np.mean(ratio_semi)),
            "at_training_tol": {
                "tol": at_train["tol"],
                "nfe_f": at_train["nfe_f"],
                "nfe_b_fullnorm": at_train["nfe_b_fullnorm"],
                "nfe_b_seminorm": at_train["nfe_b"],
                "ratio_fullnorm": at_train["nfe_b_over_f_fullnorm"],
                "ratio_seminorm": at_train["nfe_b_over_f"],
            },
            "seminorm_saving": 1.0 - float(
                np.sum(col("nfe_b")) / np.sum(col("nfe_b_fullnorm"))
            ),
        },
        "d_training": {k: v for k, v in train.items() if not isinstance(v, list)},
    }
    if mnist_summary_path.is_file():
        odenet = json.loads(mnist_summary_path.read_text())["metrics"].get("odenet", {})
        metrics["mnist_table"] = {k: odenet.get(k) for k in
                                  ("test_error", "nfe_f", "nfe_b", "nfe_b_fullnorm")}
    plots = make_plots(out, rows, fit, train)
    (out / "training_nfe.json").write_text(json.dumps(train) + "\n")
    summary = run.summary(
        run.elapsed(),
        metrics=metrics,
        paper=PAPER,
        plots=plots,
        rows=rows,
        notes=(
            f"{n} test digits solved as one state (shared step size) at rtol = atol = tol. "
            "Errors are of the ODE block output against the float64 reference. Times are of "
            "the jitted float32 forward solve of the block alone on this machine's CPU (shared "
            "with other jobs: the best of the repeats is the least disturbed). NFE-B comes from "
            "the stats probe of BacksolveAdjoint at the same tolerance as the forward solve."
        ),
        **{"from": str(from_dir)},
    )
    C.write_json(out / "summary.json", summary)
    a, b, c, d = (metrics[k] for k in ("a_nfe_vs_error", "b_time_vs_nfe",
                                       "c_backward_vs_forward", "d_training"))
    print(f"[{EXPERIMENT}] (a) NFE {a['nfe_f']} -> RMS error "
          + ", ".join(f"{e:.1e}" for e in a["error_rms"]))
    print(f"[{EXPERIMENT}] (b) {b['ms_per_nfe']:.2f} ms per NFE, r = {b['fit_min']['r']:.3f}")
    print(f"[{EXPERIMENT}] (c) NFE-B/NFE-F: full norm {c['ratio_fullnorm_mean']:.2f}, seminorm "
          f"{c['ratio_seminorm_mean']:.2f} (mean over tolerances)")
    if "nfe_growth" in d:
        print(f"[{EXPERIMENT}] (d) NFE {d['nfe_first_10pct']:.1f} (first 10% of training) -> "
              f"{d['nfe_last_10pct']:.1f} (last 10%)")
    print(f"[{EXPERIMENT}] wrote {out / 'summary.json'} and " + ", ".join(plots))
    return summary


if __name__ == "__main__":
    main()
