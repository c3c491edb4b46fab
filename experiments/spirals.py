"""Table 2 of Chen et al. (2018): a latent ODE against RNN baselines on irregular spirals.

What runs (each part is its own resumable training run in a sub-folder of ``--out``):

- ``latent_ode_n{n}``: the paper's latent ODE (recognition network read backwards in time,
  4-D latent state, MLP dynamics, MLP decoder, Gaussian likelihood with std 0.3) trained on
  ``n`` in {30, 50, 100} points drawn without replacement from each 100-point training window.
- ``rnn_n{n}``: the RNN baseline (GRU read forwards, one-step-ahead prediction, autoregressive
  rollout to extrapolate); ``rnn_dt_n{n}``: the same with time-delta inputs.
- ``odernn_n{n}``: the latent ODE with the ODE-RNN encoder (Rubanova et al. 2019).
- ``poisson``: a latent ODE with a Poisson-process likelihood on a synthetic event data set
  whose rate is driven by a hidden 2-D oscillator; the learned rate is plotted against the
  true one.

The metric (PAPER.md section 5, Table 2): held-out spirals are generated with 100 observed and
100 further time points (``make_spirals(num_points=100, num_extrapolate=100)``); each model
reads ``n`` irregular noisy observations from the first 100 and predicts the next 100. We
report the RMSE, over test spirals, the 100 future times and both coordinates, against the
*clean* spiral (``rmse``) and against the noisy observations (``rmse_noisy``). The clean one is
the headline: the paper's latent ODE numbers (0.13-0.16) lie below the data's noise level
(std 0.3 per coordinate), so they cannot be errors against noisy targets.

Run ``python -m experiments.spirals --preset {smoke,small,paper} --out runs/spirals-<preset>``
from the repository root; running the same command again resumes every part from its
checkpoint; a part whose settings changed since its checkpoint was written is refused
(``Trainer.restore`` lists the keys), and ``--fresh`` starts over, moving the old run folder
aside to ``<out>.old-<timestamp>``. ``--set key=value`` overrides a preset entry (see
``PRESETS``), e.g. ``--set steps=500``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
import zlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuralode as nde
from experiments import _common as C
from experiments import _spirals_report as R
from experiments._report import machine_info

EXPERIMENT = "spirals"

_COMMON: dict[str, Any] = {
    # data (PAPER.md section 5 reference generator)
    "num_points": 100,  # observed window per spiral
    "num_extrapolate": 100,  # future points the metric is computed on
    "noise_std": 0.3,
    "reference_orientation": True,  # make_spirals(reverse_clockwise=True), as the paper's code
    # Training windows: "full" = make_spirals' default training set (100-point windows starting
    # in [100, 400)); "reference" = the observed halves of 200-point windows starting in
    # [100, 300), as the reference code draws them (see the module docstring).
    "train_windows": "reference",
    # Training objective. "extrapolate": every training spiral is a 200-point window; the
    # recognition network reads n irregular points of its first 100 and the likelihood scores
    # those n points *and* the 100 after them (Rubanova et al. 2019's extrapolation training;
    # the RNN baselines train one step ahead on the same sequences). "reconstruct": the
    # paper's VAE objective on the observed part only (windows chosen by train_windows).
    "objective": "extrapolate",
    # Standardise the data for the networks (x -> (x - mean) / std of the training data;
    # predictions are mapped back and the likelihood std scaled to match, so the objective
    # is the paper's Gaussian likelihood in data units).
    "normalize": True,
    # Polyak averaging of the parameters (exponential moving average with this decay, 0: off);
    # the averaged model is the one evaluated.
    "ema_decay": 0.995,
    "obs_counts": [30, 50, 100],
    "resample": True,  # draw a fresh irregular subsample of each training spiral every step
    # latent ODE (paper: 4-D latent, 25-unit recognition RNN, 20-unit dynamics and decoder)
    "latent_size": 4,
    "hidden_size": 25,
    "field_width": 20,
    "decoder_width": 20,
    "decoder_activation": "relu",  # relu (the paper's code) | elu | tanh
    "encoder": "rnn",
    "obs_std": 0.3,
    "rtol": 1e-3,
    "atol": 1e-4,
    "adjoint": "backsolve",  # backsolve | interpolated | checkpoint
    "encoder_adjoint": "backsolve",  # gradient mode of the ODE-RNN encoder's solves
    "lr": 1e-2,
    "lr_final_frac": 1.0,  # cosine decay to lr * lr_final_frac (1.0: constant)
    "clip_norm": 0.0,  # global-norm gradient clipping (0: off)
    # RNN baselines
    "rnn_hidden": 25,
    "rnn_decoder_width": 20,
    "rnn_lr": 1e-2,
    "rnn_lr_final_frac": 1.0,
    # ODE-RNN encoder variant
    "odernn_obs_counts": [30, 50, 100],
    "odernn_batch": 0,  # batch of the ODE-RNN variant (0: the latent ODE's batch)
    # Poisson-process variant
    "poisson_t_end": 10.0,
    "poisson_period": 5.0,  # period of the hidden oscillator
    "poisson_base": 1.5,  # rate = base * exp(gain * cos(2 pi t / period + phase))
    "poisson_gain": 1.0,
    "poisson_encoder": "odernn",
    "poisson_latent_size": 4,
    "poisson_lr": 1e-2,
    "poisson_lr_final_frac": 1.0,
    "poisson_rtol": 1e-3,
    "poisson_atol": 1e-4,
    # which parts to run
    "parts": ["latent_ode", "odernn", "rnn", "rnn_dt", "poisson"],
    # bookkeeping
    "x64": False,
    "log_every": 10,
    "checkpoint_every": 100,
    "eval_every": 0,  # test RMSE every k steps into <task>/eval.jsonl (0: only at the end)
    "num_plot_spirals": 3,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: exercised by the test suite (every code path, tiny sizes).
    "smoke": {
        **_COMMON,
        "num_spirals": 48,
        "num_test": 8,
        "obs_counts": [30],
        "odernn_obs_counts": [30],
        "parts": ["latent_ode", "rnn", "rnn_dt"],
        "batch": 8,
        "steps": 4,
        "rnn_batch": 8,
        "rnn_steps": 4,
        "odernn_steps": 2,
        "poisson_num_seqs": 24,
        "poisson_num_test": 4,
        "poisson_batch": 4,
        "poisson_steps": 2,
        "poisson_t_end": 4.0,
        "log_every": 1,
        "checkpoint_every": 2,
    },
    # Minutes on a 2-core CPU; tuned to reach the paper's Table 2 numbers.
    "small": {
        **_COMMON,
        "num_spirals": 600,
        "num_test": 100,
        "encoder": "gru",
        # The exact discrete adjoint: with ~130-200 output times per sequence it is ~8x faster
        # here than re-solving backwards interval by interval (backsolve).
        "adjoint": "checkpoint",
        "batch": 128,
        "steps": 5000,
        "lr": 1e-2,
        "lr_final_frac": 0.05,
        "clip_norm": 1.0,
        "rnn_batch": 64,
        "rnn_steps": 1000,
        "rnn_lr_final_frac": 0.05,
        "odernn_obs_counts": [30],
        "odernn_steps": 1000,
        "odernn_batch": 64,
        "poisson_num_seqs": 300,
        "poisson_num_test": 50,
        "poisson_batch": 16,
        "poisson_steps": 300,
        "poisson_lr_final_frac": 0.1,
    },
    # The paper's settings (for a GPU): 1000 training spirals, full batch, Adam 0.01,
    # 2000 iterations, the plain 25-unit recognition RNN, tolerance 1.5e-8 (section 7, needs
    # float64).
    "paper": {
        **_COMMON,
        "num_spirals": 1100,
        "num_test": 100,
        "resample": False,
        "batch": 1000,
        "steps": 2000,
        "rnn_batch": 1000,
        "rnn_steps": 2000,
        "odernn_steps": 2000,
        "rtol": 1.5e-8,
        "atol": 1.5e-8,
        "x64": True,
        "poisson_num_seqs": 1100,
        "poisson_num_test": 100,
        "poisson_batch": 1000,
        "poisson_steps": 2000,
        "poisson_rtol": 1e-6,
        "poisson_atol": 1e-6,
        "checkpoint_every": 100,
    },
}
SCRIPT = C.Script(EXPERIMENT, __doc__, PRESETS)


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------


def _task_key(seed: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _optimizer(lr: float, final_frac: float, steps: int, clip: float, ema: float = 0.0):
    if final_frac < 1.0:
        schedule = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=final_frac)
    else:
        schedule = lr
    parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    average = [nde.training.param_average(ema)] if ema > 0 else []
    return optax.chain(*parts, optax.adam(schedule), *average)


def _rmse(pred: Any, target: Any) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(target)) ** 2)))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class SpiralData:
    """Training windows and held-out test spirals (observed part and the 100 future points)."""

    def __init__(self, cfg: dict[str, Any], seed: int, dtype: Any):
        common = {
            "num_points": cfg["num_points"],
            "noise_std": cfg["noise_std"],
            "reverse_clockwise": cfg["reference_orientation"],
            "dtype": dtype,
        }
        # Test spirals carry 100 further points: windows of 200 starting in [100, 300).
        data = nde.datasets.make_spirals(
            jax.random.key(seed),
            num_spirals=cfg["num_spirals"],
            num_extrapolate=cfg["num_extrapolate"],
            **common,
        )
        train, test = nde.datasets.train_test_split(data, test_size=cfg["num_test"], seed=seed)
        self.test_obs, self.test_future = nde.datasets.split_extrapolation(test, cfg["num_points"])
        self.objective = cfg["objective"]
        self.num_points = cfg["num_points"]
        if self.objective not in ("extrapolate", "reconstruct"):
            raise SystemExit(
                f"objective must be 'extrapolate' or 'reconstruct', got {cfg['objective']!r}"
            )
        if self.objective == "extrapolate":
            # Whole 200-point windows: n irregular points of the first 100 are read, all of
            # them and the 100 after are predicted.
            self.train = train
        elif cfg["train_windows"] == "full":
            # make_spirals' own training set: 100-point windows starting anywhere in
            # [100, 400), so the training windows cover the whole spiral the test futures run
            # along (independent draws: held out from the test spirals by construction).
            self.train = nde.datasets.make_spirals(
                jax.random.fold_in(jax.random.key(seed), 1),
                num_spirals=cfg["num_spirals"] - cfg["num_test"],
                **common,
            )
        elif cfg["train_windows"] == "reference":
            # The reference code's windows: the observed 100 points of 200-point windows
            # starting in [100, 300); the last 100 test points of late windows lie beyond
            # every training observation.
            self.train, _ = nde.datasets.split_extrapolation(train, cfg["num_points"])
        else:
            raise SystemExit(
                f"train_windows must be 'full' or 'reference', got {cfg['train_windows']!r}"
            )
        self._test_samples: dict[int, Any] = {}
        self.seed = seed
        # Standardisation of the network inputs and outputs (identity if normalize=False).
        ys = np.asarray(self.train.ys, np.float64).reshape(-1, self.train.ys.shape[-1])
        if cfg["normalize"]:
            self.shift = jnp.asarray(ys.mean(axis=0), dtype)
            self.scale = float(ys.std())
        else:
            self.shift, self.scale = jnp.zeros((ys.shape[-1],), dtype), 1.0

    def norm(self, ys):
        """Data units -> network units."""
        return (ys - self.shift) / self.scale

    def denorm(self, ys):
        """Network units -> data units."""
        return ys * self.scale + self.shift

    def test_samples(self, n: int):
        """The fixed irregular test observations with ``n`` points (shared by every model)."""
        if n not in self._test_samples:
            key = jax.random.fold_in(jax.random.key(self.seed + 1), n)
            self._test_samples[n] = nde.datasets.subsample(
                key, self.test_obs.ts, self.test_obs.ys, n
            )
        return self._test_samples[n]

    def batch_fn(self, n: int, batch: int, resample: bool, seed: int, *, latent: bool):
        """``batch_fn(step, key)`` for :class:`nde.training.Trainer` (network units).

        ``objective="reconstruct"``: ``(values, times)`` of ``n`` irregular points.
        ``objective="extrapolate"``: the ``n`` points of the first ``num_points`` followed by
        every later point of the window; the latent ODE also gets ``(mask, encoder_mask)``
        (the encoder reads the first ``n`` only), the RNN reads and predicts the whole sequence.
        """
        ys, ts = self.norm(self.train.ys), self.train.ts
        head = self.num_points if self.objective == "extrapolate" else ts.shape[0]
        num = ys.shape[0]
        batch = min(batch, num)
        fixed = None
        if not resample:
            fixed = nde.datasets.subsample(jax.random.key(seed + 2), ts[:head], ys[:, :head], n)

        @jax.jit
        def make(key):
            k_idx, k_sub = jax.random.split(key)
            if batch == num:
                idx = jnp.arange(num)
            else:
                idx = jax.random.choice(k_idx, num, (batch,), replace=False)
            if fixed is None:
                sample = nde.datasets.subsample(k_sub, ts[:head], ys[idx, :head], n)
                values, times = sample.values, sample.times
            else:
                values, times = fixed.values[idx], fixed.times[idx]
            if self.objective == "reconstruct":
                return values, times
            rest = ts.shape[0] - head
            values = jnp.concatenate([values, ys[idx, head:]], axis=1)
            times = jnp.concatenate([times, jnp.broadcast_to(ts[head:], (batch, rest))], axis=1)
            if not latent:
                return values, times
            mask = jnp.ones(times.shape, bool)
            encoder_mask = jnp.arange(n + rest) < n
            return values, times, mask, jnp.broadcast_to(encoder_mask, times.shape)

        return lambda step, key: make(key)


def make_event_data(cfg: dict[str, Any], seed: int, dtype: Any) -> dict[str, np.ndarray]:
    """Events of an inhomogeneous Poisson process driven by a hidden 2-D oscillator.

    The hidden state ``z(t) = (cos(ωt + φ), sin(ωt + φ))`` solves ``dz/dt = ω J z`` with a
    random phase ``φ`` per sequence; the rate is ``λ(t) = base · exp(gain · z_1(t))``. Events on
    ``[0, t_end]`` are drawn by thinning. Every sequence is padded to one length: the grid holds
    the events (mask True), the end points 0 and ``t_end`` and uniformly random filler times
    (mask False), sorted, so ``times[0] = 0`` and ``times[-1] = t_end``.
    """
    rng = np.random.default_rng(seed)
    num = cfg["poisson_num_seqs"]
    t_end = float(cfg["poisson_t_end"])
    omega = 2 * math.pi / cfg["poisson_period"]
    base, gain = float(cfg["poisson_base"]), float(cfg["poisson_gain"])
    lam_max = base * math.exp(abs(gain))
    phases = rng.uniform(0.0, 2 * math.pi, num)
    events = []
    for phase in phases:
        k = rng.poisson(lam_max * t_end)
        cand = np.sort(rng.uniform(0.0, t_end, k))
        rate = base * np.exp(gain * np.cos(omega * cand + phase))
        events.append(cand[rng.uniform(0.0, lam_max, k) < rate])
    length = max(len(e) for e in events) + 2
    times = np.zeros((num, length))
    mask = np.zeros((num, length), bool)
    for i, ev in enumerate(events):
        filler = rng.uniform(0.0, t_end, length - 2 - len(ev))
        t = np.concatenate([[0.0, t_end], ev, filler])
        m = np.concatenate([[False, False], np.ones(len(ev), bool), np.zeros(len(filler), bool)])
        order = np.argsort(t, kind="stable")
        t, m = t[order], m[order]
        # Keep the grid strictly increasing (ties have probability zero, but be safe).
        for j in range(1, length):
            if t[j] <= t[j - 1]:
                t[j] = np.nextafter(t[j - 1], np.inf)
        times[i], mask[i] = t, m
    return {
        "times": times.astype(dtype),
        "mask": mask,
        "phases": phases,
        "counts": np.array([len(e) for e in events]),
        "omega": omega,
        "base": base,
        "gain": gain,
        "t_end": t_end,
    }


def true_rate(data: dict[str, Any], t: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return data["base"] * np.exp(data["gain"] * np.cos(data["omega"] * t + phase))


# ---------------------------------------------------------------------------------------------
# Running one training task
# ---------------------------------------------------------------------------------------------


class Runner:
    """Runs the parts of the experiment one after the other, each resumable on its own."""

    def __init__(self, cfg: dict[str, Any], out: pathlib.Path, seed: int, progress: bool):
        self.cfg, self.out, self.seed, self.progress = cfg, out, seed, progress
        self.tasks: dict[str, dict[str, Any]] = {}
        self.resumed = False
        self.trained = False

    def train(
        self, name, model, loss_fn, batch_fn, steps, optimizer, config, evaluate=None, average=False
    ):
        """Train (or resume) one part; returns the final model, or with ``average=True`` the
        Polyak average kept by ``param_average`` in the optimiser state."""

        def final(state):
            if average:
                return nde.training.averaged_model(state.opt_state, state.model)
            return state.model

        task_dir = self.out / name
        task_dir.mkdir(parents=True, exist_ok=True)
        timing_path = task_dir / "timing.json"
        timing = C.read_json(timing_path, {"train_time_s": 0.0, "invocations": 0})
        callbacks = []
        eval_every = self.cfg["eval_every"]
        if evaluate is not None and eval_every > 0:
            eval_path = task_dir / "eval.jsonl"

            def periodic_eval(state, metrics):
                if state.step % eval_every == 0 and state.step < steps:
                    record = {"step": state.step, **evaluate(final(state))}
                    kept = [r for r in C.read_jsonl(eval_path) if r.get("step", 0) < state.step]
                    text = "".join(json.dumps(r) + "\n" for r in [*kept, record])
                    eval_path.write_text(text)
                    print(f"  [{name}] step {state.step}: {record}", flush=True)
                return False

            callbacks.append(periodic_eval)
        trainer = nde.training.Trainer(
            loss_fn,
            optimizer,
            batch_fn,
            seed=self.seed,
            run_dir=task_dir,
            config={"experiment": EXPERIMENT, "task": name, **config},
            checkpoint_every=self.cfg["checkpoint_every"],
            log_every=self.cfg["log_every"],
            progress=self.progress,
            callbacks=callbacks,
        )
        has_ckpt = trainer.checkpoint_path.is_file()
        print(
            f"[{EXPERIMENT}] {name}: {steps} steps -> {task_dir}"
            + (" (resuming from checkpoint)" if has_ckpt else ""),
            flush=True,
        )
        self.resumed |= has_ckpt
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        state = trainer.fit(model, steps)
        elapsed = time.perf_counter() - t0
        if trainer.history:  # steps were trained in this invocation
            self.trained = True
            timing["train_time_s"] += elapsed
            timing["invocations"] += 1
            timing["loadavg_at_start"] = load
            C.write_json(timing_path, timing)
        history = C.read_jsonl(task_dir / nde.training.METRICS_NAME)
        last = history[-1] if history else {}
        self.tasks[name] = {
            "dir": name,
            "steps": state.step,
            "train_time_s": round(timing["train_time_s"], 2),
            "final_loss": last.get("loss"),
            "final_nfe": last.get("nfe"),
            "loadavg_at_start": timing.get("loadavg_at_start", load),
        }
        return final(state)


# ---------------------------------------------------------------------------------------------
# Models, losses and evaluation
# ---------------------------------------------------------------------------------------------


def _latent_loss(model, batch, key):
    values, times = batch[0], batch[1]
    mask = batch[2] if len(batch) > 2 else None
    encoder_mask = batch[3] if len(batch) > 3 else None
    return nde.nn.latent_ode_loss(model, key, values, times, mask, encoder_mask=encoder_mask)


def _rnn_loss(model, batch, key):
    values, times = batch
    return nde.nn.rnn_baseline_loss(model, values, times), {}


@eqx.filter_jit
def _latent_predict(model, values, times, pred_ts):
    """Posterior-mean predictions; ``pred_ts`` shared ``(P,)`` or per sequence ``(B, P)``."""
    if pred_ts.ndim == 1:
        return jax.vmap(lambda v, t: model.predict(v, t, None, pred_ts))(values, times)
    return jax.vmap(lambda v, t, p: model.predict(v, t, None, p))(values, times, pred_ts)


@eqx.filter_jit
def _rnn_predict(model, values, times, pred_ts):
    return jax.vmap(lambda v, t: model.predict(v, t, None, pred_ts))(values, times)


_ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu, "tanh": jnp.tanh}

def _solve(rtol: float, atol: float, adjoint: str = "backsolve") -> nde.nn.SolveOptions:
    """The latent models' solver settings: Tsit5, max_steps 1024 (as the experiment always
    used), the named gradient mode."""
    return C.solve_options("tsit5", adjoint, rtol=rtol, atol=atol, max_steps=1024)


def _latent_model(cfg, encoder, key, scale=1.0):
    if encoder == "odernn":
        # The ODE-RNN's many short hidden-state solves use their own gradient mode (a
        # checkpointed adjoint would allocate a max_steps buffer for every one of them).
        encoder = nde.nn.ODERNNEncoder(
            2,
            cfg["latent_size"],
            cfg["hidden_size"],
            cfg["field_width"],
            solve=_solve(cfg["rtol"], cfg["atol"], cfg["encoder_adjoint"]),
            key=jax.random.fold_in(key, 1),
        )
    return nde.nn.LatentODE(
        2,
        cfg["latent_size"],
        cfg["hidden_size"],
        cfg["field_width"],
        cfg["decoder_width"],
        encoder=encoder,
        decoder_activation=_ACTIVATIONS[cfg["decoder_activation"]],
        # The likelihood std in network units (obs_std is in data units).
        obs_std=cfg["obs_std"] / scale,
        solve=_solve(cfg["rtol"], cfg["atol"], cfg["adjoint"]),
        key=key,
    )


def _model_config(cfg: dict[str, Any], prefix: str) -> dict[str, Any]:
    keys = {
        "latent": (
            "latent_size hidden_size field_width decoder_width decoder_activation obs_std rtol "
            "atol adjoint encoder_adjoint lr "
            "lr_final_frac clip_norm batch resample objective normalize ema_decay"
        ),
        "rnn": (
            "rnn_hidden rnn_decoder_width rnn_lr rnn_lr_final_frac rnn_batch resample objective "
            "normalize ema_decay"
        ),
    }[prefix]
    return {k: cfg[k] for k in keys.split()} | {
        "num_spirals": cfg["num_spirals"],
        "num_test": cfg["num_test"],
        "noise_std": cfg["noise_std"],
        "reference_orientation": cfg["reference_orientation"],
    }


def run_spirals(runner: Runner, data: SpiralData) -> dict[str, Any]:
    """Train and evaluate every spiral model; returns metrics and the predictions to plot."""
    cfg, seed = runner.cfg, runner.seed
    fut = data.test_future
    future_ts = fut.ts
    results: dict[str, dict[str, dict[str, float]]] = {"rmse": {}, "rmse_noisy": {}, "nfe": {}}
    plots: dict[int, dict[str, Any]] = {}
    plot_idx = _plot_indices(np.asarray(data.test_obs.clockwise), cfg["num_plot_spirals"])

    # Test spirals whose 100 future points stay inside the stretch of the spiral that the
    # training windows cover, and those whose future runs beyond it (true extrapolation).
    last_train = int(np.max(np.asarray(data.train.start_index))) + data.train.ts.shape[0] - 1
    future_end = np.asarray(fut.start_index) + cfg["num_extrapolate"] - 1
    inside = future_end <= last_train
    results["rmse_future_inside_training_range"] = {}
    results["rmse_future_beyond_training_range"] = {}

    def record(kind: str, n: int, pred) -> None:
        results["rmse"].setdefault(kind, {})[str(n)] = _rmse(pred, fut.ys_clean)
        results["rmse_noisy"].setdefault(kind, {})[str(n)] = _rmse(pred, fut.ys)
        pred, clean = np.asarray(pred), np.asarray(fut.ys_clean)
        for key, sel in (("inside", inside), ("beyond", ~inside)):
            value = _rmse(pred[sel], clean[sel]) if sel.any() else None
            results[f"rmse_future_{key}_training_range"].setdefault(kind, {})[str(n)] = value

    def latent_pred(model, sample, pred_ts, idx=slice(None)):
        values = data.norm(sample.values[idx])
        return data.denorm(_latent_predict(model, values, sample.times[idx], pred_ts))

    def rnn_pred(model, sample, pred_ts):
        values = data.norm(sample.values)
        return data.denorm(_rnn_predict(model, values, sample.times, pred_ts))

    def latent_eval(n):
        sample = data.test_samples(n)
        return lambda model: {"rmse": _rmse(latent_pred(model, sample, future_ts), fut.ys_clean)}

    parts = cfg["parts"]
    variants = [("latent_ode", cfg["encoder"], cfg["obs_counts"], cfg["steps"], cfg["batch"])]
    odernn_batch = cfg["odernn_batch"] or cfg["batch"]
    variants.append(
        ("odernn", "odernn", cfg["odernn_obs_counts"], cfg["odernn_steps"], odernn_batch)
    )
    for kind, encoder, counts, steps, batch in variants:
        if kind not in parts:
            continue
        for n in counts:
            name = f"{kind}_n{n}"
            model = _latent_model(cfg, encoder, _task_key(seed, name), data.scale)
            ema = cfg["ema_decay"]
            opt = _optimizer(cfg["lr"], cfg["lr_final_frac"], steps, cfg["clip_norm"], ema)
            batch_fn = data.batch_fn(n, batch, cfg["resample"], seed, latent=True)
            model = runner.train(
                name,
                model,
                _latent_loss,
                batch_fn,
                steps,
                opt,
                {"model": "LatentODE", "encoder": encoder, "n": n, "steps": steps}
                | _model_config(cfg, "latent")
                | {"batch": batch},
                evaluate=latent_eval(n),
                average=ema > 0,
            )
            sample = data.test_samples(n)
            record(kind, n, latent_pred(model, sample, future_ts))
            results["nfe"].setdefault(kind, {})[str(n)] = runner.tasks[name]["final_nfe"]
            if kind == "latent_ode":
                # Dense reconstruction + extrapolation of a few test spirals (Figure 8).
                idx = plot_idx
                t_first = sample.times[idx, 0]
                frac = jnp.linspace(0.0, 1.0, 400, dtype=future_ts.dtype)
                grid = t_first[:, None] + frac[None, :] * (future_ts[-1] - t_first)[:, None]
                dense = latent_pred(model, sample, grid, idx)
                plots.setdefault(n, {})["latent_ode"] = (np.asarray(grid), np.asarray(dense))

    for kind, delta in (("rnn", False), ("rnn_dt", True)):
        if kind not in parts:
            continue
        for n in cfg["obs_counts"]:
            name = f"{kind}_n{n}"
            model = nde.nn.RNNBaseline(
                2,
                cfg["rnn_hidden"],
                cfg["rnn_decoder_width"],
                time_delta_input=delta,
                key=_task_key(seed, name),
            )
            steps = cfg["rnn_steps"]
            ema = cfg["ema_decay"]
            opt = _optimizer(
                cfg["rnn_lr"], cfg["rnn_lr_final_frac"], steps, cfg["clip_norm"], ema
            )
            batch_fn = data.batch_fn(n, cfg["rnn_batch"], cfg["resample"], seed, latent=False)
            sample = data.test_samples(n)
            model = runner.train(
                name,
                model,
                _rnn_loss,
                batch_fn,
                steps,
                opt,
                {"model": "RNNBaseline", "time_delta_input": delta, "n": n, "steps": steps}
                | _model_config(cfg, "rnn"),
                evaluate=lambda m, s=sample: {
                    "rmse": _rmse(rnn_pred(m, s, future_ts), fut.ys_clean)
                },
                average=ema > 0,
            )
            pred = rnn_pred(model, sample, future_ts)
            record(kind, n, pred)
            plots.setdefault(n, {})[kind] = (np.asarray(future_ts), np.asarray(pred[plot_idx]))
    return {"results": results, "plots": plots, "plot_idx": plot_idx}


def _plot_indices(clockwise: np.ndarray, k: int) -> np.ndarray:
    """A few test spirals alternating between the two orientations."""
    cw, ccw = np.flatnonzero(clockwise), np.flatnonzero(~clockwise)
    out = []
    for i in range(k):
        pool = ccw if i % 2 == 0 else cw
        j = i // 2
        if j < len(pool):
            out.append(int(pool[j]))
    for i in range(len(clockwise)):
        if len(out) >= k:
            break
        if i not in out:
            out.append(i)
    return np.array(out[:k])


def run_poisson(runner: Runner, dtype: Any) -> dict[str, Any]:
    """Latent ODE with a Poisson-process likelihood on synthetic events; learned vs true rate."""
    cfg, seed = runner.cfg, runner.seed
    data = make_event_data(cfg, seed + 3, np.dtype(dtype))
    num_test = cfg["poisson_num_test"]
    times_all = jnp.asarray(data["times"])
    mask_all = jnp.asarray(data["mask"])
    num_train = times_all.shape[0] - num_test
    train_t, train_m = times_all[:num_train], mask_all[:num_train]
    test_t, test_m = times_all[num_train:], mask_all[num_train:]
    length = times_all.shape[1]
    zeros = jnp.zeros((cfg["poisson_batch"], length, 1), dtype)
    batch = min(cfg["poisson_batch"], num_train)

    @jax.jit
    def make(key):
        idx = jax.random.choice(key, num_train, (batch,), replace=False)
        return zeros[:batch], train_t[idx], train_m[idx]

    name = "poisson"
    steps = cfg["poisson_steps"]
    model = nde.nn.LatentODE(
        1,
        cfg["poisson_latent_size"],
        cfg["hidden_size"],
        cfg["field_width"],
        cfg["decoder_width"],
        encoder=cfg["poisson_encoder"],
        obs_std=cfg["obs_std"],
        poisson=True,
        solve=_solve(cfg["poisson_rtol"], cfg["poisson_atol"]),
        key=_task_key(seed, name),
    )
    opt = _optimizer(cfg["poisson_lr"], cfg["poisson_lr_final_frac"], steps, cfg["clip_norm"])
    config = {
        k: cfg[k]
        for k in cfg
        if k.startswith("poisson_") or k in ("hidden_size", "field_width", "decoder_width")
    }
    model = runner.train(
        name,
        model,
        _latent_loss,
        lambda step, key: make(key),
        steps,
        opt,
        {"model": "LatentODE(poisson=True)", "steps": steps, **config},
    )

    grid = jnp.linspace(0.0, data["t_end"], 300, dtype=dtype)
    test_zeros = jnp.zeros((num_test, length, 1), dtype)

    @eqx.filter_jit
    def evaluate(model, values, times, mask):
        def one(v, t, m):
            mean, _ = model.encode(v, t, m)
            zs = model.trajectory(mean, t[0], grid)
            rate = jax.vmap(model.poisson.rate)(zs)
            ll, _ = nde.nn.poisson_process_log_likelihood(
                model.field,
                model.poisson,
                mean,
                t,
                m,
                # the library's former defaults of this function, kept for the same numbers
                solve=model.solve.replace(max_steps=4096),
            )
            return rate, ll

        return jax.vmap(one)(values, times, mask)

    rate, loglik = evaluate(model, test_zeros, test_t, test_m)
    rate = np.asarray(rate)
    phases = data["phases"][num_train:]
    g = np.asarray(grid, np.float64)
    true = true_rate(data, g[None, :], phases[:, None])
    # True-rate and homogeneous-rate log-likelihoods of the same test events.
    t_np, m_np = np.asarray(test_t, np.float64), np.asarray(test_m)
    fine = np.linspace(0.0, data["t_end"], 4001)
    true_ll, homo_ll = [], []
    lam_hat = data["counts"][:num_train].sum() / (num_train * data["t_end"])
    for i in range(num_test):
        ev = t_np[i][m_np[i]]
        integral = np.trapezoid(true_rate(data, fine, phases[i]), fine)
        true_ll.append(np.sum(np.log(true_rate(data, ev, phases[i]))) - integral)
        homo_ll.append(len(ev) * np.log(lam_hat) - lam_hat * data["t_end"])
    metrics = {
        "rate_rmse": _rmse(rate, true),
        "rate_rmse_relative": float(np.sqrt(np.mean((rate - true) ** 2)) / np.mean(true)),
        "rate_corr": float(np.corrcoef(rate.ravel(), true.ravel())[0, 1]),
        "test_loglik_model": float(np.mean(np.asarray(loglik))),
        "test_loglik_true_rate": float(np.mean(true_ll)),
        "test_loglik_homogeneous": float(np.mean(homo_ll)),
        "mean_events_per_seq": float(np.mean(data["counts"])),
    }
    plot = {
        "grid": g,
        "rate": rate,
        "true": true,
        "events": [t_np[i][m_np[i]] for i in range(num_test)],
    }
    return {"metrics": metrics, "plot": plot}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns the summary (also written to ``<out>/summary.json``)."""
    run = SCRIPT.start(argv)
    args, out = run.args, run.out
    cfg = {**run.cfg, "preset": args.preset}
    if cfg["x64"]:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.asarray(0.0).dtype
    t_start = time.perf_counter()
    # Wall time over every invocation of this run folder (a resumed run adds up).
    inv_path = out / "invocations.json"
    invocations = C.read_json(inv_path, None)
    if not isinstance(invocations, list):
        prev = C.read_json(out / "summary.json", None)
        invocations = []
        if isinstance(prev, dict) and isinstance(prev.get("wall_time_s"), int | float):
            invocations.append(
                {"started": None, "wall_time_s": prev["wall_time_s"], "trained": True}
            )
    invocations.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": None,
            "argv": list(argv if argv is not None else sys.argv[1:]),
        }
    )
    C.write_json(inv_path, invocations)
    machine_start = machine_info()
    command = "python -m experiments.spirals " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    C.write_json(
        out / "config.json",
        {
            "experiment": EXPERIMENT,
            "seed": args.seed,
            "dtype": str(dtype),
            "config": cfg,
            "command": command,
            "machine": machine_start,
        },
    )
    runner = Runner(cfg, out, args.seed, progress=not args.no_progress)
    data = SpiralData(cfg, args.seed, dtype)
    spiral_out = run_spirals(runner, data)
    results = spiral_out["results"]
    poisson = run_poisson(runner, dtype) if "poisson" in cfg["parts"] else None

    # Plots.
    plots = []
    for n in cfg["obs_counts"]:
        if n not in spiral_out["plots"]:
            continue
        name = f"figure8_extrapolation_n{n}.png"
        R.plot_extrapolation(out / name, data, spiral_out, n)
        plots.append(name)
    paper = R.paper_dict()
    if results["rmse"]:
        R.plot_rmse(out / "rmse_vs_observations.png", results, paper)
        plots.append("rmse_vs_observations.png")
    if runner.tasks:
        R.plot_training(out / "training_curves.png", out, runner.tasks)
        plots.append("training_curves.png")
    if poisson is not None:
        R.plot_poisson(out / "poisson_rate.png", poisson["plot"])
        plots.append("poisson_rate.png")

    metrics: dict[str, Any] = dict(results)
    if poisson is not None:
        metrics["poisson"] = poisson["metrics"]
    checks = {}
    for n in cfg["obs_counts"]:
        ours = results["rmse"].get("latent_ode", {}).get(str(n))
        rnns = [results["rmse"][k][str(n)] for k in ("rnn", "rnn_dt") if k in results["rmse"]]
        target = paper["rmse"]["latent_ode"].get(str(n))
        if ours is None:
            continue
        checks[str(n)] = {
            "latent_ode_beats_rnns": None if not rnns else ours < min(rnns),
            "latent_ode_at_or_below_paper": None if target is None else ours <= target,
        }
    metrics["checks"] = checks
    wall = time.perf_counter() - t_start
    invocations[-1]["wall_time_s"] = round(wall, 2)
    invocations[-1]["trained"] = runner.trained
    C.write_json(inv_path, invocations)
    timed = [i["wall_time_s"] for i in invocations if i.get("wall_time_s") is not None]
    # The run's wall time: the invocations that trained something (re-running a finished run
    # only re-evaluates it; that invocation is reported as invocation_time_s).
    working = [i["wall_time_s"] for i in invocations if i.get("trained") and i["wall_time_s"]]
    total_wall = sum(working) if working else sum(timed)
    machine_end = machine_info()
    summary = {
        "experiment": EXPERIMENT,
        "preset": args.preset,
        "seed": args.seed,
        "command": command,
        "wall_time_s": round(total_wall, 2),
        "invocation_time_s": round(wall, 2),
        "invocations": len(invocations),
        "interrupted_invocations": len(invocations) - len(timed),
        "train_time_total_s": round(sum(t["train_time_s"] for t in runner.tasks.values()), 2),
        "resumed": runner.resumed,
        "metrics": metrics,
        "paper": paper,
        "tables": R.tables(results, metrics.get("poisson"), cfg["obs_counts"]),
        "plots": plots,
        "plot_captions": {p: R.caption(p) for p in plots},
        "tasks": runner.tasks,
        "machine": {**machine_end, "loadavg_at_start": machine_start["loadavg"]},
        "config": cfg,
        "notes": R.notes(cfg, metrics),
    }
    with open(out / "metrics.jsonl", "w") as f:
        for name, info in runner.tasks.items():
            f.write(json.dumps({"task": name, **info}) + "\n")
        f.write(
            json.dumps(
                {"task": "evaluation", **{k: v for k, v in metrics.items() if k != "checks"}}
            )
            + "\n"
        )
    C.write_json(out / "summary.json", summary)
    print(
        f"[{EXPERIMENT}] done in {wall:.1f} s (the run's wall time over its training "
        f"invocations: {total_wall:.1f} s); load average {machine_end['loadavg']}"
    )
    for table in summary["tables"][:1]:
        print(table["title"])
        for r in table["rows"]:
            print("  " + " | ".join(r))
    print(f"[{EXPERIMENT}] summary:  {out / 'summary.json'}")
    print(f"[{EXPERIMENT}] metrics:  {out / 'metrics.jsonl'} (and <part>/metrics.jsonl)")
    print(f"[{EXPERIMENT}] plots:    " + ", ".join(str(out / p) for p in plots))
    return summary


if __name__ == "__main__":
    main()
