"""Optax training loops for Equinox models: jitted steps, metrics, checkpoints, resume, sharding.

The pieces compose; use as much or as little as you like:

- :func:`make_train_step` builds one jitted optimisation step from a loss function.
- :class:`Trainer` (or the shortcut :func:`fit`) runs the loop: progress bar, JSON-lines
  metrics, ``config.json``, atomic checkpoints and exact resume.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read checkpoints atomically.
- :func:`make_mesh`, :func:`shard_batch`, :func:`replicate` do data parallelism with
  ``jax.sharding``: the batch is split along its leading axis over all devices, the model and
  optimiser state are replicated, and ``jit`` inserts the gradient all-reduce.

**Reproducibility.** Step ``i`` (counting from 0) uses the keys ``step_keys(seed, i)`` and the
batch ``batch_fn(i, batch_key)``: everything random is a pure function of ``(seed, i)``. A run
that is killed and resumed from its last checkpoint therefore reproduces the uninterrupted run
bit for bit on the same hardware and software.

**Multi-host.** Call ``jax.distributed.initialize()`` at the start of every process (before
any other JAX call), then use the same code: :func:`make_mesh` spans the devices of all
processes, ``batch_fn`` returns the *process-local* part of the batch (its leading axis a
multiple of ``jax.local_device_count()``), and :func:`shard_batch` assembles the global array
with ``jax.make_array_from_process_local_data``. Only process 0 writes metrics, ``config.json``
and checkpoints; every process reads the checkpoint on resume, so ``run_dir`` must be on a
shared file system.

Example:
    >>> import equinox as eqx, jax, jax.numpy as jnp, optax
    >>> from neuralode import training
    >>> def loss_fn(model, batch, key):
    ...     x, y = batch
    ...     pred = jax.vmap(model)(x)
    ...     return jnp.mean((pred - y) ** 2), {}
    >>> def batch_fn(step, key):
    ...     x = jax.random.normal(key, (32, 1))
    ...     return x, jnp.sin(x)
    >>> model = eqx.nn.MLP(1, 1, 16, 2, key=jax.random.key(0))
    >>> trainer = training.Trainer(loss_fn, optax.adam(1e-2), batch_fn, progress=False)
    >>> state = trainer.fit(model, num_steps=10)
    >>> state.step
    10
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "ParamAverageState",
    "TrainState",
    "Trainer",
    "averaged_model",
    "fit",
    "load_checkpoint",
    "make_mesh",
    "make_train_step",
    "param_average",
    "replicate",
    "save_checkpoint",
    "seed_everything",
    "shard_batch",
    "step_keys",
]

CHECKPOINT_NAME = "checkpoint.eqx"
"""File name of the latest checkpoint inside a run directory."""
METRICS_NAME = "metrics.jsonl"
"""File name of the JSON-lines metrics log inside a run directory."""
CONFIG_NAME = "config.json"
"""File name of the run configuration inside a run directory."""

_CKPT_MAGIC = b"NEURALODE-CHECKPOINT v1\n"

LossFn = Callable[[PyTree, Any, PRNGKeyArray], tuple[Scalar, dict[str, Any]]]
BatchFn = Callable[[int, PRNGKeyArray], Any]


# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def seed_everything(seed: int) -> PRNGKeyArray:
    """Seed Python's ``random`` and NumPy's global generator, and return ``jax.random.key(seed)``.

    JAX code should thread the returned key explicitly; seeding the global generators only
    makes stray host-side randomness (e.g. in data preprocessing) repeatable.

    Example:
        >>> key = seed_everything(0)
        >>> jax.random.normal(key).shape
        ()
    """
    seed = _check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator, on purpose)
    return jax.random.key(seed)


def step_keys(seed: int | PRNGKeyArray, step: int) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """The ``(batch_key, loss_key)`` of training step ``step``: a pure function of seed and step.

    Args:
        seed: an int seed or a PRNG key.
        step: the step index (0 for the first step).

    Example:
        >>> a, _ = step_keys(0, 5)
        >>> b, _ = step_keys(0, 5)
        >>> bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
        True
    """
    key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    batch_key, loss_key = jax.random.split(jax.random.fold_in(key, step))
    return batch_key, loss_key


# ---------------------------------------------------------------------------------------------
# The train step
# ---------------------------------------------------------------------------------------------


def make_train_step(
    loss_fn: LossFn | Callable[[PyTree, Any, PRNGKeyArray], Scalar],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = True,
) -> Callable[[PyTree, PyTree, Any, PRNGKeyArray], tuple[PyTree, PyTree, Array, dict]]:
    """Build a jitted optimisation step ``(model, opt_state, batch, key) -> (model, opt_state,
    loss, aux)``.

    Gradients are taken with respect to the floating-point arrays of ``model``
    (``eqx.is_inexact_array``); everything else in the model is held fixed. Initialise the
    optimiser state to match: ``optimizer.init(eqx.filter(model, eqx.is_inexact_array))``.
    The step works unchanged on sharded inputs (see :func:`shard_batch`).

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux)`` with a scalar ``loss`` and a
            dict ``aux`` of extra outputs (e.g. ``{"nfe": ...}``); with ``has_aux=False`` it
            returns the loss alone and ``aux`` is ``{}``.
        optimizer: an optax gradient transformation.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
        The step function, wrapped in ``eqx.filter_jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
        >>> optimizer = optax.sgd(0.1)
        >>> opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        >>> loss_fn = lambda m, b, k: (jnp.mean((jax.vmap(m)(b) - 1.0) ** 2), {})
        >>> step = make_train_step(loss_fn, optimizer)
        >>> model, opt_state, loss, aux = step(model, opt_state, jnp.ones((4, 2)), None)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "`optimizer` must be an optax.GradientTransformation (with .init and .update), "
            f"got {type(optimizer).__name__}."
        )

    def wrapped(model, batch, key):
        out = loss_fn(model, batch, key)
        if not has_aux:
            return out, {}
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "`loss_fn` must return (loss, aux_dict); pass has_aux=False to "
                "make_train_step if it returns the loss alone."
            )
        return out

    grad_fn = eqx.filter_value_and_grad(wrapped, has_aux=True)

    @eqx.filter_jit
    def train_step(model, opt_state, batch, key):
        (loss, aux), grads = grad_fn(model, batch, key)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss, aux

    return train_step


# ---------------------------------------------------------------------------------------------
# Parameter averaging
# ---------------------------------------------------------------------------------------------


class ParamAverageState(NamedTuple):
    """State of :func:`param_average`: the number of updates seen and the running average."""

    count: Array
    average: PyTree


def param_average(decay: float = 0.999) -> optax.GradientTransformation:
    """Exponential moving average of the parameters (Polyak-Ruppert averaging) as an optax stage.

    Put it last in an ``optax.chain``: it passes the updates through unchanged and keeps
    ``avg <- d avg + (1 - d) (params + updates)``, i.e. the average of the parameters *after*
    each step, in its state. ``d = min(decay, (1 + k) / (10 + k))`` at update ``k`` (the
    usual warm-up, so early iterates are not over-weighted by the initial parameters). The
    average lives in the optimiser state, so checkpoints and resumed runs carry it; read it
    with :func:`averaged_model`. Averaging the iterates of a noisy optimiser gives a model
    that is usually better than the last iterate (Polyak and Juditsky, 1992).

    Args:
        decay: Long-run decay rate ``d`` in ``(0, 1)``; the average spans about
            ``1 / (1 - decay)`` steps.

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
        >>> optimizer = optax.chain(optax.adam(1e-2), param_average(0.99))
        >>> # ... train with optimizer; then evaluate
        >>> # averaged_model(state.opt_state, state.model)  # doctest: +SKIP
    """
    if not (isinstance(decay, int | float) and 0.0 < float(decay) < 1.0):
        raise ValueError(f"param_average: `decay` must lie in (0, 1), got {decay!r}.")
    decay = float(decay)

    def init(params):
        return ParamAverageState(
            jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                "param_average needs the parameters: call optimizer.update(grads, state, params)."
            )
        new = optax.apply_updates(params, updates)
        k = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + k) / (10.0 + k))

        def mix(avg, p):
            return (d * avg + (1.0 - d) * p).astype(avg.dtype)

        return updates, ParamAverageState(state.count + 1, jax.tree.map(mix, state.average, new))

    return optax.GradientTransformation(init, update)


def averaged_model(opt_state: PyTree, model: PyTree) -> PyTree:
    """``model`` with its parameters replaced by the :func:`param_average` in ``opt_state``.

    Args:
        opt_state: optimiser state of a chain containing exactly one :func:`param_average`
            (e.g. ``TrainState.opt_state``).
        model: the model being trained (supplies the non-parameter leaves and structure).

    Raises:
        ValueError: if ``opt_state`` holds no (or more than one) parameter average.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamAverageState))
        if isinstance(s, ParamAverageState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"averaged_model: `opt_state` must hold exactly one param_average state, found "
            f"{len(found)}; add param_average(decay) as the last stage of the optax chain."
        )
    _, static = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(found[0].average, static)


class TrainState(eqx.Module):
    """Everything that changes during training: model, optimiser state and the step counter.

    Attributes:
        model: the Equinox model (any pytree).
        opt_state: the optax optimiser state.
        step: number of completed optimisation steps.
    """

    model: PyTree
    opt_state: PyTree
    step: int


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _to_host(tree: PyTree) -> PyTree:
    """Arrays that span several processes (replicated) -> this process's full local copy."""

    def convert(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(
                    "cannot checkpoint an array that is sharded across processes; replicate "
                    "the model and optimiser state (see neuralode.training.replicate)."
                )
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree.map(convert, tree)


def _fsync_dir(directory: pathlib.Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(
    path: str | os.PathLike[str], tree: PyTree, metadata: dict[str, Any] | None = None
) -> None:
    """Save the arrays of ``tree`` and a JSON-able ``metadata`` dict to ``path``, atomically.

    The file is written to a temporary file next to ``path``, flushed to disk, then renamed
    over ``path``: a crash at any moment leaves either the previous checkpoint or the new one,
    never a partial file. The pytree structure is not stored; :func:`load_checkpoint` takes a
    ``like`` pytree of the same structure (as ``eqx.tree_serialise_leaves`` does).

    Args:
        path: destination file.
        tree: a pytree (e.g. ``(model, opt_state)``).
        metadata: small JSON-serialisable dict stored in the header (e.g. step and seed).

    Example:
        >>> import jax.numpy as jnp
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.eqx"
        >>> save_checkpoint(path, {"w": jnp.ones(3)}, {"step": 7})
        >>> tree, meta = load_checkpoint(path, {"w": jnp.zeros(3)})
        >>> meta["step"], tree["w"].tolist()
        (7, [1.0, 1.0, 1.0])
    """
    header = json.dumps(metadata or {}, sort_keys=True).encode()
    if b"\n" in header:  # json.dumps never emits raw newlines; guard the format anyway
        raise ValueError("`metadata` must serialise to a single line of JSON.")
    tree = _to_host(tree)

    def write(f: BinaryIO) -> None:
        f.write(_CKPT_MAGIC)
        f.write(header + b"\n")
        eqx.tree_serialise_leaves(f, tree)

    _atomic_write(pathlib.Path(path), write)


def load_checkpoint(path: str | os.PathLike[str], like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        like: a pytree with the structure, shapes and dtypes of the saved one (e.g. a freshly
            initialised ``(model, opt_state)``).

    Returns:
        ``(tree, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint, is corrupt, or does not match ``like``.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        magic = f.read(len(_CKPT_MAGIC))
        if magic != _CKPT_MAGIC:
            raise ValueError(
                f"{str(path)!r} is not a neuralode checkpoint (bad magic bytes). Delete it or "
                "start a fresh run (resume=False)."
            )
        try:
            metadata = json.loads(f.readline())
            tree = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            raise ValueError(
                f"could not load checkpoint {str(path)!r}: it is corrupt or does not match the "
                f"structure/shapes/dtypes of `like` ({type(e).__name__}: {e})."
            ) from e
    return tree, metadata


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "batch") -> Mesh:
    """A 1-D device mesh for data parallelism, over ``devices`` (default: ``jax.devices()``,
    i.e. every device of every process).

    Example:
        >>> make_mesh().axis_names
        ('batch',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must contain at least one device.")
    return Mesh(np.asarray(devices), (axis_name,))


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def shard_batch(batch: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Split every array of ``batch`` along its leading axis over the devices of ``mesh``.

    With one process, ``batch`` is the global batch and is placed with ``jax.device_put``.
    With several processes (after ``jax.distributed.initialize()``), ``batch`` is this
    process's share and the global array is assembled with
    ``jax.make_array_from_process_local_data``. Non-array leaves are left alone.

    Args:
        batch: a pytree of arrays sharing the leading (batch) axis.
        mesh: a 1-D mesh (default :func:`make_mesh`).

    Raises:
        ValueError: a leading axis is not divisible by the number of devices.

    Example:
        >>> import jax.numpy as jnp
        >>> x = shard_batch(jnp.zeros((len(jax.devices()) * 2, 3)))
        >>> len(x.sharding.device_set) == len(jax.devices())
        True
    """
    mesh = make_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    multi_process = jax.process_count() > 1
    num_devices = mesh.devices.size
    num_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def place(path, x):
        if not _is_array(x):
            return x
        if np.ndim(x) == 0:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} is a scalar; every array "
                "in a sharded batch needs a leading batch axis."
            )
        n = np.shape(x)[0]
        divisor = num_local if multi_process else num_devices
        if n % divisor:
            what = "process-local batch size" if multi_process else "batch size"
            raise ValueError(
                f"{what} {n} of batch leaf {jax.tree_util.keystr(path) or '<root>'} is not "
                f"divisible by the number of {'local ' if multi_process else ''}devices "
                f"({divisor}); choose a batch size that is a multiple of {divisor}."
            )
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(place, batch)


def replicate(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Place a full copy of every array of ``tree`` (model, optimiser state) on every device.

    Example:
        >>> import jax.numpy as jnp
        >>> w = replicate(jnp.ones(3))
        >>> w.sharding.is_fully_replicated
        True
    """
    mesh = make_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, PartitionSpec())
    multi_process = jax.process_count() > 1

    def place(x):
        if not _is_array(x):
            return x
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(place, tree)


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def _strong(tree: PyTree) -> PyTree:
    """Drop weak types so fresh and checkpoint-loaded states trace (and round) identically."""
    return jax.tree.map(
        lambda x: jax.lax.convert_element_type(x, x.dtype) if isinstance(x, jax.Array) else x,
        tree,
    )


def _scalar_metrics(aux: dict[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for name, value in aux.items():
        if _is_array(value) or isinstance(value, (int, float)):
            if np.size(value) != 1:
                continue
            value = np.asarray(value).reshape(())
            if np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_):
                out[str(name)] = int(value)
            elif np.issubdtype(value.dtype, np.floating):
                out[str(name)] = float(value)
    return out


def _truncate_metrics(path: pathlib.Path, max_step: int) -> None:
    """Drop log lines of steps after the checkpoint being resumed (they will be redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
        if record.get("step", 0) <= max_step:
            keep.append(json.dumps(record))
    text = "".join(line + "\n" for line in keep).encode()
    _atomic_write(path, lambda f: f.write(text))


class Trainer:
    """A reproducible, resumable training loop for Equinox models with optax.

    Step ``i`` (from 0) draws ``batch_key, loss_key = step_keys(seed, i)``, builds the batch
    ``batch_fn(i, batch_key)`` and calls the jitted step (:func:`make_train_step`) with
    ``loss_key``. With a ``run_dir`` it writes

    - ``config.json``: ``config`` plus the trainer's settings;
    - ``metrics.jsonl``: every ``log_every`` steps one JSON object with ``step`` (steps done),
      ``loss``, every scalar in ``aux`` (e.g. ``nfe``), ``steps_per_sec`` and ``time``;
    - ``checkpoint.eqx``: model, optimiser state and step every ``checkpoint_every`` steps and
      at the end, written atomically (:func:`save_checkpoint`).

    ``fit`` resumes from ``checkpoint.eqx`` when it exists (unless ``resume=False``), so a
    killed run started again with the same arguments reproduces the uninterrupted run bit for
    bit. A tqdm progress bar (if tqdm is installed) shows loss, NFE and steps/s.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux_dict)``.
        optimizer: an optax gradient transformation.
        batch_fn: ``batch_fn(step, key) -> batch``; must depend only on its arguments (and
            fixed data) for exact resume.
        seed: the run's seed; all randomness of step ``i`` derives from ``(seed, i)``.
        run_dir: output directory (created if needed); ``None`` writes nothing.
        config: JSON-serialisable run configuration stored in ``config.json``.
        checkpoint_every: checkpoint period in steps; ``None`` only checkpoints at the end.
        log_every: metrics/progress-bar period in steps (each log synchronises with the
            device, so keep it coarse for fast steps).
        progress: show a progress bar.
        mesh: a device mesh (:func:`make_mesh`) to train data-parallel: batches are sharded
            with :func:`shard_batch`, model and optimiser state replicated.
        callbacks: functions ``callback(state, metrics)`` called after every step, with the
            logged metrics dict on logging steps and ``None`` otherwise; return ``True`` to stop
            (a checkpoint is written). An exception in a callback propagates, leaving the last
            checkpoint in place (this is how tests simulate a kill).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Example:
        >>> trainer = Trainer(loss_fn, optax.adam(1e-3), batch_fn, seed=0,  # doctest: +SKIP
        ...                   run_dir="runs/demo", checkpoint_every=100)
        >>> state = trainer.fit(model, num_steps=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: optax.GradientTransformation,
        batch_fn: BatchFn,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        config: dict[str, Any] | None = None,
        checkpoint_every: int | None = 1000,
        log_every: int = 10,
        progress: bool = True,
        mesh: Mesh | None = None,
        callbacks: Sequence[Callable[[TrainState, dict | None], bool | None]] = (),
        has_aux: bool = True,
    ):
        if not callable(batch_fn):
            raise TypeError(f"`batch_fn` must be callable, got {type(batch_fn).__name__}.")
        self.seed = _check_int("seed", seed, 0)
        self.log_every = _check_int("log_every", log_every, 1)
        self.checkpoint_every = (
            None
            if checkpoint_every is None
            else _check_int("checkpoint_every", checkpoint_every, 1)
        )
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict or None, got {type(config).__name__}.")
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batch_fn = batch_fn
        self.run_dir = None if run_dir is None else pathlib.Path(run_dir)
        self.config = dict(config or {})
        self.progress = progress
        self.mesh = mesh
        self.callbacks = tuple(callbacks)
        self.train_step = make_train_step(loss_fn, optimizer, has_aux=has_aux)
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> pathlib.Path | None:
        """``run_dir / "checkpoint.eqx"``, or ``None`` without a run directory."""
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    def init_state(self, model: PyTree) -> TrainState:
        """A fresh :class:`TrainState` at step 0 for ``model``."""
        opt_state = self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=0)

    def save(self, state: TrainState) -> None:
        """Write ``state`` to :attr:`checkpoint_path` (process 0 only)."""
        if self.checkpoint_path is None or jax.process_index() != 0:
            return
        metadata = {"step": state.step, "seed": self.seed}
        save_checkpoint(self.checkpoint_path, (state.model, state.opt_state), metadata)

    def restore(self, like: TrainState) -> TrainState | None:
        """Load :attr:`checkpoint_path` into the structure of ``like``; ``None`` if absent."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return None
        (model, opt_state), meta = load_checkpoint(path, (like.model, like.opt_state))
        if meta.get("seed") != self.seed:
            raise ValueError(
                f"checkpoint {str(path)!r} was written with seed={meta.get('seed')} but this "
                f"Trainer has seed={self.seed}; resuming would not reproduce the run. Use the "
                "original seed, another run_dir, or resume=False to start over."
            )
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=meta["step"])

    def _write_config(self, num_steps: int) -> None:
        settings = {
            "seed": self.seed,
            "num_steps": num_steps,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
            "num_devices": 1 if self.mesh is None else int(self.mesh.devices.size),
            "jax_version": jax.__version__,
        }
        text = json.dumps(
            {"config": self.config, "trainer": settings}, indent=2, sort_keys=True, default=repr
        )
        _atomic_write(self.run_dir / CONFIG_NAME, lambda f: f.write(text.encode() + b"\n"))

    def fit(self, model: PyTree, num_steps: int, *, resume: bool = True) -> TrainState:
        """Train ``model`` until ``num_steps`` steps are done in total.

        Args:
            model: the initial model (also the structure template when resuming).
            num_steps: total number of steps of the run (not additional steps).
            resume: continue from ``run_dir/checkpoint.eqx`` if it exists.

        Returns:
            The final :class:`TrainState`.
        """
        num_steps = _check_int("num_steps", num_steps, 0)
        state = self.init_state(model)
        is_main = jax.process_index() == 0
        if self.run_dir is not None:
            if resume:
                restored = self.restore(state)
                if restored is not None:
                    state = restored
            if is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                _truncate_metrics(self.run_dir / METRICS_NAME, state.step)
                self._write_config(num_steps)
        if state.step >= num_steps:
            return state

        model, opt_state = state.model, state.opt_state
        if self.mesh is not None:
            model, opt_state = replicate((model, opt_state), self.mesh)

        bar = None
        if self.progress and is_main:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=num_steps, initial=state.step, desc="train", dynamic_ncols=True)
        metrics_file = None
        if self.run_dir is not None and is_main:
            metrics_file = open(self.run_dir / METRICS_NAME, "a")

        step = state.step
        t_start = t_last = time.perf_counter()
        step_last = step
        try:
            while step < num_steps:
                batch_key, loss_key = step_keys(self.seed, step)
                batch = self.batch_fn(step, batch_key)
                if self.mesh is not None:
                    batch = shard_batch(batch, self.mesh)
                model, opt_state, loss, aux = self.train_step(model, opt_state, batch, loss_key)
                step += 1
                state = TrainState(model=model, opt_state=opt_state, step=step)

                metrics = None
                if step % self.log_every == 0 or step == num_steps:
                    loss_value = float(loss)
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    metrics = {"step": step, "loss": loss_value, **_scalar_metrics(aux)}
                    metrics["steps_per_sec"] = rate
                    metrics["time"] = now - t_start
                    self.history.append(metrics)
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(metrics) + "\n")
                        metrics_file.flush()
                    if bar is not None:
                        postfix = {"loss": f"{loss_value:.4g}"}
                        if "nfe" in metrics:
                            postfix["nfe"] = f"{metrics['nfe']:.4g}"
                        postfix["steps/s"] = f"{rate:.3g}"
                        bar.set_postfix(postfix, refresh=False)
                if bar is not None:
                    bar.update(1)

                stop = any([bool(cb(state, metrics)) for cb in self.callbacks])
                periodic = self.checkpoint_every is not None and step % self.checkpoint_every == 0
                if periodic or stop or step == num_steps:
                    self.save(state)
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()
        return state


def fit(
    model: PyTree,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    batch_fn: BatchFn,
    num_steps: int,
    **trainer_kwargs: Any,
) -> TrainState:
    """Shortcut for ``Trainer(loss_fn, optimizer, batch_fn, **trainer_kwargs).fit(model,
    num_steps)``; see :class:`Trainer` for the keyword arguments.

    Example:
        >>> state = fit(model, loss_fn, optax.adam(1e-2), batch_fn, 5)  # doctest: +SKIP
        >>> state.step  # doctest: +SKIP
        5
    """
    resume = trainer_kwargs.pop("resume", True)
    trainer = Trainer(loss_fn, optimizer, batch_fn, **trainer_kwargs)
    return trainer.fit(model, num_steps, resume=resume)
