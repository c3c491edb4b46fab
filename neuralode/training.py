"""Optax training loops for Equinox models: jitted steps, metrics, checkpoints, resume, sharding.

The pieces compose; use as much or as little as you like:

- :func:`make_train_step` builds one jitted optimisation step from a loss function.
- :class:`Trainer` (or the shortcut :func:`fit`) runs the loop: progress bar, JSON-lines
  metrics, ``config.json``, checksummed checkpoints (the last few kept), exact resume, a
  finiteness guard, and failures reported as Python exceptions on any number of devices.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read checkpoints atomically,
  with a SHA-256 checksum of their contents.
- :func:`make_mesh`, :func:`shard_batch`, :func:`replicate` do data parallelism with
  ``jax.sharding``: the batch is split along its leading axis over all devices, the model and
  optimiser state are replicated.

**Reproducibility.** Step ``i`` (counting from 0) uses the keys ``step_keys(seed, i)`` and the
batch ``batch_fn(i, batch_key)``: everything random is a pure function of ``(seed, i)``. A run
that is killed and resumed from its last checkpoint therefore reproduces the uninterrupted run
bit for bit on the same hardware and software.

**Guarantees.** The :class:`Trainer` never loses work: a step whose loss or gradient is not
finite is skipped (parameters and optimiser state unchanged) and counted, and too many in a
row stop the run with :class:`TrainingError`; a runtime error in the loss (e.g. a failed ODE
solve) stops the run with :class:`TrainingError` naming the step and, where it can be found,
the sample, on one device or many; checkpoints carry a checksum, the last few are kept and a
resume falls back to the newest valid one; a resume with other settings is refused.
``docs/training.md`` states them in full.

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
import hashlib
import inspect
import io
import json
import os
import pathlib
import random
import re
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

try:  # JAX >= 0.6
    from jax import shard_map as _shard_map

    _NO_REPLICATION_CHECK = {"check_vma": False}
except ImportError:  # older JAX
    from jax.experimental.shard_map import shard_map as _shard_map

    _NO_REPLICATION_CHECK = {"check_rep": False}

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "CheckpointCorruptError",
    "ParamAverageState",
    "TrainState",
    "Trainer",
    "TrainingError",
    "averaged_model",
    "changed_settings",
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
"""File name of the latest checkpoint inside a run directory (older ones are kept as
``checkpoint-<step>.eqx`` next to it)."""
METRICS_NAME = "metrics.jsonl"
"""File name of the JSON-lines metrics log inside a run directory."""
CONFIG_NAME = "config.json"
"""File name of the run configuration inside a run directory."""

_CKPT_MAGIC_V1 = b"NEURALODE-CHECKPOINT v1\n"
_CKPT_MAGIC = b"NEURALODE-CHECKPOINT v2\n"
_HISTORY_RE = re.compile(r"^checkpoint-(\d+)\.eqx$")
_TEMP_RE = re.compile(r"^\.(checkpoint(-\d+)?\.eqx|config\.json|metrics\.jsonl)\.[^/]*\.tmp$")

LossFn = Callable[[PyTree, Any, PRNGKeyArray], tuple[Scalar, dict[str, Any]]]
BatchFn = Callable[[int, PRNGKeyArray], Any]


class TrainingError(RuntimeError):
    """A training run stopped because it cannot go on; the last good state is kept.

    Raised by :meth:`Trainer.fit` when a step fails at run time (e.g. an ODE solve inside the
    loss exhausts ``max_steps``) or after too many consecutive non-finite steps.

    Attributes:
        step: the 1-based number of the step that failed (the run had completed
            ``step - 1`` steps).
        samples: indices into that step's batch of the samples that fail on their own (empty
            if none does), or ``None`` if they were not looked for.
        checkpoint: the checkpoint file holding the last good state, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        samples: list[int] | None = None,
        checkpoint: pathlib.Path | None = None,
    ):
        super().__init__(message)
        self.step = step
        self.samples = samples
        self.checkpoint = checkpoint


class CheckpointCorruptError(ValueError):
    """A checkpoint file is damaged: bad magic bytes, a checksum mismatch, or cut short.

    The message names the file. :meth:`Trainer.restore` falls back to an older checkpoint
    when it meets one.
    """


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


def _check_step_args(loss_fn: Any, optimizer: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "`optimizer` must be an optax.GradientTransformation (with .init and .update), "
            f"got {type(optimizer).__name__}."
        )


def _call_loss(loss_fn: Callable, has_aux: bool, model: PyTree, batch: Any, key: Any):
    """``loss_fn(model, batch, key)`` as ``(loss, aux)`` whether or not it returns ``aux``."""
    out = loss_fn(model, batch, key)
    if not has_aux:
        return out, {}
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "`loss_fn` must return (loss, aux_dict); pass has_aux=False to "
            "make_train_step (or Trainer) if it returns the loss alone."
        )
    return out


def _all_finite(tree: PyTree) -> Array:
    """One boolean: every floating-point entry of every array of ``tree`` is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _step(loss_fn, optimizer, has_aux, model, opt_state, batch, key):
    (loss, aux), grads = eqx.filter_value_and_grad(
        lambda m, b, k: _call_loss(loss_fn, has_aux, m, b, k), has_aux=True
    )(model, batch, key)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss, aux


def _step_keep_inputs(inputs, model, opt_state):
    loss_fn, optimizer, has_aux, batch, key = inputs
    return _step(loss_fn, optimizer, has_aux, model, opt_state, batch, key)


# One module-level jitted function each: the loss and optimiser are static arguments, so a step
# is traced once per (loss_fn, optimizer, shapes), however many steps or Trainers are built.
_step_plain = eqx.filter_jit(_step_keep_inputs)
_step_donating = eqx.filter_jit(_step_keep_inputs, donate="all-except-first")


def make_train_step(
    loss_fn: LossFn | Callable[[PyTree, Any, PRNGKeyArray], Scalar],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = True,
    donate: bool = False,
) -> Callable[[PyTree, PyTree, Any, PRNGKeyArray], tuple[PyTree, PyTree, Array, dict]]:
    """Build a jitted optimisation step ``(model, opt_state, batch, key) -> (model, opt_state,
    loss, aux)``.

    Gradients are taken with respect to the floating-point arrays of ``model``
    (``eqx.is_inexact_array``); everything else in the model is held fixed. Initialise the
    optimiser state to match: ``optimizer.init(eqx.filter(model, eqx.is_inexact_array))``.
    The step works unchanged on sharded inputs (see :func:`shard_batch`); ``jit`` then inserts
    the gradient all-reduce. It is compiled once per ``(loss_fn, optimizer)`` pair and input
    shapes: building the step again for the same pair does not recompile.

    This is the plain step, for loops of your own. :class:`Trainer` adds a finiteness guard
    and safe failure on several devices on top of it.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux)`` with a scalar ``loss`` and a
            dict ``aux`` of extra outputs (e.g. ``{"nfe": ...}``); with ``has_aux=False`` it
            returns the loss alone and ``aux`` is ``{}``.
        optimizer: an optax gradient transformation.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        donate: donate the buffers of ``model`` and ``opt_state`` to the step, so that they
            are updated in place instead of existing twice in device memory. The arrays
            passed in are then invalid after the call: keep only the returned ones.

    Returns:
        The step function.

    Example:
        >>> import jax.numpy as jnp
        >>> model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
        >>> optimizer = optax.sgd(0.1)
        >>> opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        >>> loss_fn = lambda m, b, k: (jnp.mean((jax.vmap(m)(b) - 1.0) ** 2), {})
        >>> step = make_train_step(loss_fn, optimizer)
        >>> model, opt_state, loss, aux = step(model, opt_state, jnp.ones((4, 2)), None)
    """
    _check_step_args(loss_fn, optimizer)
    jitted = _step_donating if donate else _step_plain

    def train_step(model, opt_state, batch, key):
        return jitted((loss_fn, optimizer, has_aux, batch, key), model, opt_state)

    return train_step


# The Trainer's step is two programs. The first computes loss, auxiliary outputs, gradients
# and a finiteness flag and never communicates between devices: a runtime error in it (an
# `eqx.error_if` raised by one device's shard) surfaces as a Python exception instead of
# leaving the other devices waiting in an all-reduce. The second averages over devices,
# applies the update when everything is finite, and donates the model and optimiser state.


def _loss_and_grads(loss_fn, has_aux, model, batch, key):
    (loss, aux), grads = eqx.filter_value_and_grad(
        lambda m, b, k: _call_loss(loss_fn, has_aux, m, b, k), has_aux=True
    )(model, batch, key)
    return loss, aux, grads, _all_finite((loss, grads))


def _sharded_loss_and_grads(loss_fn, has_aux, mesh, model, batch, key):
    """Per device: loss, aux, gradients and flag of its shard, stacked along a device axis."""
    axis = mesh.axis_names[0]
    dynamic, static = eqx.partition((model, batch, key), eqx.is_array)

    def local(dynamic_model, dynamic_batch, dynamic_key):
        m, b, k = eqx.combine((dynamic_model, dynamic_batch, dynamic_key), static)
        out = _loss_and_grads(loss_fn, has_aux, m, b, k)
        return jax.tree.map(lambda x: jnp.asarray(x)[None], out)

    spec = (PartitionSpec(), PartitionSpec(axis), PartitionSpec())
    run = _shard_map(
        local, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(axis), **_NO_REPLICATION_CHECK
    )
    return run(*dynamic)


def _grads_program(loss_fn, has_aux, mesh, model, batch, key):
    if mesh is None:
        return _loss_and_grads(loss_fn, has_aux, model, batch, key)
    return _sharded_loss_and_grads(loss_fn, has_aux, mesh, model, batch, key)


_grads_jit = eqx.filter_jit(_grads_program)


def _device_mean(x: Array) -> Array:
    """Reduce the leading device axis: mean for floating point, max for counts and flags."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.mean(x, axis=0)
    return jnp.max(x, axis=0)


def _select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(
        lambda a, b: jnp.where(pred, a, b) if eqx.is_array(a) else a, on_true, on_false
    )


def _update(inputs, model, opt_state):
    optimizer, sharded, loss, aux, grads, finite = inputs
    if sharded:
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        loss = jnp.mean(loss, axis=0)
        aux = jax.tree.map(_device_mean, aux)
        finite = jnp.all(finite)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_model = eqx.apply_updates(model, updates)
    # `finite` comes from the gradient program. (Also testing the new parameters here would
    # make XLA fuse the update differently and change its rounding; a kept step is bit for bit
    # the plain optimiser step.)
    model = _select(finite, new_model, model)
    opt_state = _select(finite, new_opt_state, opt_state)
    return model, opt_state, loss, aux, finite


_update_plain = eqx.filter_jit(_update)
_update_donating = eqx.filter_jit(_update, donate="all-except-first")

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
        step: number of completed optimisation steps (skipped non-finite steps included).
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


def _temp_path(path: pathlib.Path) -> pathlib.Path:
    """A fresh hidden name next to ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _open_new(path: pathlib.Path) -> BinaryIO:
    """Create ``path`` for writing; its mode is 0o666 less the umask, like any new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def _atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with _open_new(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _checkpoint_bytes(tree: PyTree, metadata: dict[str, Any] | None) -> bytes:
    """The file contents: magic line, checksum line, metadata line, serialised leaves.

    The checksum is the SHA-256 of everything after the checksum line.
    """
    header = json.dumps(metadata or {}, sort_keys=True).encode()
    if b"\n" in header:  # json.dumps never emits raw newlines; guard the format anyway
        raise ValueError("`metadata` must serialise to a single line of JSON.")
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, _to_host(tree))
    body = header + b"\n" + buffer.getvalue()
    return _CKPT_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def save_checkpoint(
    path: str | os.PathLike[str], tree: PyTree, metadata: dict[str, Any] | None = None
) -> None:
    """Save the arrays of ``tree`` and a JSON-able ``metadata`` dict to ``path``, atomically.

    The file is written to a temporary file next to ``path``, flushed to disk, then renamed
    over ``path``: a crash at any moment leaves either the previous checkpoint or the new one,
    never a partial file. It carries a SHA-256 checksum of its contents, which
    :func:`load_checkpoint` verifies. The pytree structure is not stored;
    :func:`load_checkpoint` takes a ``like`` pytree of the same structure (as
    ``eqx.tree_serialise_leaves`` does). The file's permissions follow the umask.

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
    data = _checkpoint_bytes(tree, metadata)
    _atomic_write(pathlib.Path(path), lambda f: f.write(data))


def _read_checkpoint(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
    """``(metadata, serialised leaves)`` of a checkpoint file, its checksum verified.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointCorruptError: bad magic bytes, checksum mismatch, unreadable metadata.
    """
    raw = path.read_bytes()
    where = f"checkpoint {str(path)!r}"
    remedy = (
        "Resume from an older checkpoint (the Trainer does so by itself), restore the file from "
        "a backup, or start over (resume=False; the experiment scripts: --fresh)."
    )
    if raw.startswith(_CKPT_MAGIC):
        checksum, sep, body = raw[len(_CKPT_MAGIC) :].partition(b"\n")
        if not sep or hashlib.sha256(body).hexdigest().encode() != checksum:
            raise CheckpointCorruptError(
                f"{where} is corrupt: its SHA-256 checksum does not match its contents (the "
                f"file is damaged or cut short; {len(raw)} bytes). {remedy}"
            )
    elif raw.startswith(_CKPT_MAGIC_V1):  # written before checksums existed
        body = raw[len(_CKPT_MAGIC_V1) :]
    else:
        raise CheckpointCorruptError(
            f"{str(path)!r} is not a neuralode checkpoint (bad magic bytes). {remedy}"
        )
    header, _, payload = body.partition(b"\n")
    try:
        metadata = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(
            f"{where} is corrupt: unreadable metadata ({e}). {remedy}"
        ) from e
    if not isinstance(metadata, dict):
        raise CheckpointCorruptError(f"{where} is corrupt: its metadata is not a dict. {remedy}")
    return metadata, payload


def _deserialise(path: pathlib.Path, payload: bytes, like: PyTree) -> PyTree:
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:
        raise ValueError(
            f"could not load checkpoint {str(path)!r}: it does not match the "
            f"structure/shapes/dtypes of `like` ({type(e).__name__}: {e}). Build `like` (the "
            "model and optimiser) exactly as for the run that wrote it."
        ) from e


def load_checkpoint(path: str | os.PathLike[str], like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Args:
        path: the checkpoint file.
        like: a pytree with the structure, shapes and dtypes of the saved one (e.g. a freshly
            initialised ``(model, opt_state)``).

    Returns:
        ``(tree, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointCorruptError: the file is not a checkpoint or is damaged (a ``ValueError``;
            the message names the file).
        ValueError: the file does not match ``like``.
    """
    path = pathlib.Path(path)
    metadata, payload = _read_checkpoint(path)
    return _deserialise(path, payload, like), metadata


def _history_path(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / f"checkpoint-{step}.eqx"


def _history(run_dir: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """The kept checkpoints ``checkpoint-<step>.eqx`` of a run directory, newest first."""
    found = []
    for path in run_dir.glob("checkpoint-*.eqx"):
        match = _HISTORY_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _write_checkpoint_files(run_dir: pathlib.Path, step: int, data: bytes, keep: int) -> None:
    """Write ``data`` as ``checkpoint-<step>.eqx`` and ``checkpoint.eqx``; prune old ones.

    Both names are written atomically (a hard link where the file system allows it, else a
    second copy), the history one first: a kill at any moment leaves every name either
    complete or absent. Only the ``keep`` newest ``checkpoint-<step>.eqx`` are kept.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    latest, history = run_dir / CHECKPOINT_NAME, _history_path(run_dir, step)
    tmp = _temp_path(latest)
    try:
        with _open_new(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            link = _temp_path(history)
            os.link(tmp, link)
            os.replace(link, history)
        except OSError:  # no hard links here: write the history copy separately
            _atomic_write(history, lambda f: f.write(data))
        os.replace(tmp, latest)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for _, old in _history(run_dir)[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
    _fsync_dir(run_dir)


def _remove_temp_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporary files that writes interrupted by a crash left in ``run_dir``."""
    removed = []
    for path in run_dir.glob(".*.tmp"):
        if _TEMP_RE.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _json_normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two run configurations, as readable lines.

    Values are compared as JSON (tuples equal lists; other objects by ``repr``); a key present
    on one side only counts as changed. :meth:`Trainer.restore` uses it to refuse resuming a
    run with other settings.

    Args:
        stored: the configuration the run was started with.
        current: the configuration now.

    Returns:
        One ``"key: stored -> current"`` line per changed key, sorted by key; empty if equal.

    Example:
        >>> changed_settings({"lr": 0.01, "steps": 10}, {"lr": 0.02, "steps": 10})
        ['lr: 0.01 -> 0.02']
    """
    a, b = _json_normalise(stored), _json_normalise(current)
    missing = "(absent)"
    return [
        f"{key}: {json.dumps(a[key]) if key in a else missing} -> "
        f"{json.dumps(b[key]) if key in b else missing}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing) or (key in a) != (key in b)
    ]


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


_DEVICE_PUT_COPIES = "may_alias" in inspect.signature(jax.device_put).parameters


def _copy_arrays(tree: PyTree) -> PyTree:
    """Fresh device buffers for every JAX array of ``tree``, so donating them harms no caller.

    ``jax.device_put(x, may_alias=False)`` copies without compiling anything (older JAX: a
    compiled copy per shape).
    """

    def copy(x):
        if not isinstance(x, jax.Array):
            return x
        return jax.device_put(x, may_alias=False) if _DEVICE_PUT_COPIES else jnp.array(x, copy=True)

    return jax.tree.map(copy, tree)


def _host_all_finite(tree: PyTree) -> bool:
    """Whether every floating-point entry of ``tree`` is finite, checked on the host."""
    return all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree.leaves(tree)
        if eqx.is_inexact_array(x)
    )


def _scalar_metrics(aux: dict[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for name, value in _to_host(aux).items():
        if _is_array(value) or isinstance(value, (int, float)):
            if np.size(value) != 1:
                continue
            value = np.asarray(value).reshape(())
            if np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_):
                out[str(name)] = int(value)
            elif np.issubdtype(value.dtype, np.floating):
                out[str(name)] = float(value)
    return out


def _host_value(x: Any) -> np.ndarray:
    """``x`` as a NumPy array, also where it is replicated over the devices of several hosts."""
    return np.asarray(_to_host(x))


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


def _check_batch(batch: Any, step: int) -> None:
    """Refuse a batch in which an array has an empty leading (batch) axis."""
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if _is_array(x) and np.ndim(x) >= 1 and np.shape(x)[0] == 0:
            raise ValueError(
                f"`batch_fn` returned an empty batch at step {step}: leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has shape {np.shape(x)}, so the loss "
                "would be a mean over no samples (NaN). Make `batch_fn` return at least one "
                "sample per step."
            )


def _error_message(error: BaseException) -> str:
    """The human part of a runtime error: Equinox's message without the stack around it."""
    text = str(error)
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.rsplit(marker, 1)[1].split("\n\n-------------------", 1)[0]
    return text.strip() or type(error).__name__


def _check_error_mode(platforms: set[str]) -> None:
    """Refuse TPU training while Equinox runtime errors are in their default ``raise`` mode.

    On TPU, Equinox cannot raise a runtime error (``eqx.error_if``, e.g. a failed ODE solve
    with ``throw=True``); it prints the message and waits for input, which hangs a batch job.
    ``EQX_ON_ERROR=nan`` makes failed computations return NaN instead: the Trainer then skips
    those steps and stops after ``max_nonfinite_steps`` in a row.
    """
    mode = os.environ.get("EQX_ON_ERROR", "raise")
    if "tpu" in platforms and mode not in ("nan", "off"):
        raise RuntimeError(
            f"Trainer on TPU with EQX_ON_ERROR={mode!r}: on TPU an Equinox runtime error (e.g. "
            "a failed ODE solve with throw=True) cannot raise and waits for input instead, "
            "which would hang this job. Set the environment variable EQX_ON_ERROR=nan before "
            "Python starts (failed solves then give NaN, and the Trainer skips those steps and "
            "stops after `max_nonfinite_steps` in a row). See docs/training.md."
        )


class Trainer:
    """A reproducible, resumable training loop for Equinox models with optax.

    Step ``i`` (from 0) draws ``batch_key, loss_key = step_keys(seed, i)``, builds the batch
    ``batch_fn(i, batch_key)``, computes the loss and its gradient with ``loss_key`` and
    applies the optimiser update. With a ``run_dir`` it writes

    - ``config.json``: ``config`` plus the trainer's settings;
    - ``metrics.jsonl``: every ``log_every`` steps one JSON object with ``step`` (steps done),
      ``loss``, every scalar in ``aux`` (e.g. ``nfe``), ``skipped_steps`` (non-finite steps
      skipped so far), ``steps_per_sec`` and ``time``;
    - ``checkpoint.eqx``: model, optimiser state, step and settings every ``checkpoint_every``
      steps and at the end, written atomically with a checksum (:func:`save_checkpoint`); the
      ``keep_checkpoints`` newest are also kept as ``checkpoint-<step>.eqx``.

    ``fit`` resumes from the newest valid checkpoint (unless ``resume=False``), so a killed
    run started again with the same arguments reproduces the uninterrupted run bit for bit.
    A damaged newest checkpoint is reported with a warning and the one before it is used; a
    checkpoint written with another ``seed`` or ``config`` is refused with the differing keys.

    **Guarantees** (``docs/training.md``). A step whose loss or gradient is not finite is
    skipped: parameters and optimiser state stay as they were, a warning names the step, and
    ``skipped_steps`` counts it; ``max_nonfinite_steps`` such steps in a row stop the run
    with :class:`TrainingError`. A runtime error inside the loss (e.g. an ODE solve that
    exhausts ``max_steps`` with ``throw=True``) stops the run with :class:`TrainingError`
    naming the step, the failure and, where they fail on their own, the samples; the state
    before that step is checkpointed first. A non-finite model is never written to a
    checkpoint.

    **Devices.** With a ``mesh`` the batch is sharded over its devices (:func:`shard_batch`)
    and the model and optimiser state are replicated. Each device computes the loss and
    gradient of its shard in a program without cross-device communication, and a second
    program averages them (the loss and floating-point ``aux`` entries are averaged over
    devices, integer ones take their maximum) and updates the parameters. A failure on one
    device therefore raises on the host instead of leaving the others waiting in an
    all-reduce. For a loss that is a mean over the batch this is the single-device step up to
    rounding. On TPU the Trainer requires ``EQX_ON_ERROR=nan`` (see :class:`TrainingError`
    and ``docs/training.md``).

    A tqdm progress bar (if tqdm is installed) shows loss, NFE and steps/s.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux_dict)``.
        optimizer: an optax gradient transformation.
        batch_fn: ``batch_fn(step, key) -> batch``; must depend only on its arguments (and
            fixed data) for exact resume.
        seed: the run's seed; all randomness of step ``i`` derives from ``(seed, i)``.
        run_dir: output directory (created if needed); ``None`` writes nothing.
        config: JSON-serialisable run configuration, stored in ``config.json`` and in every
            checkpoint; resuming with a different one is refused.
        checkpoint_every: checkpoint period in steps; ``None`` only checkpoints at the end.
        log_every: metrics/progress-bar period in steps (each log synchronises with the
            device, so keep it coarse for fast steps).
        progress: show a progress bar.
        mesh: a device mesh (:func:`make_mesh`) to train data-parallel.
        callbacks: functions ``callback(state, metrics)`` called after every step, with the
            logged metrics dict on logging steps and ``None`` otherwise; return ``True`` to stop
            (a checkpoint is written). An exception in a callback propagates, leaving the last
            checkpoint in place (this is how tests simulate a kill). With ``donate=True`` the
            next step reuses the buffers of ``state``: copy what you keep beyond the call.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        keep_checkpoints: how many checkpoints to keep (the newest ones).
        max_nonfinite_steps: stop after this many consecutive non-finite (skipped) steps.
        donate: update the model and optimiser state in place on the device (buffer
            donation) instead of holding them twice; results are identical either way.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range.
        RuntimeError: training on TPU without ``EQX_ON_ERROR=nan``.

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
        keep_checkpoints: int = 3,
        max_nonfinite_steps: int = 10,
        donate: bool = True,
    ):
        _check_step_args(loss_fn, optimizer)
        if not callable(batch_fn):
            raise TypeError(f"`batch_fn` must be callable, got {type(batch_fn).__name__}.")
        self.seed = _check_int("seed", seed, 0)
        self.log_every = _check_int("log_every", log_every, 1)
        self.checkpoint_every = (
            None
            if checkpoint_every is None
            else _check_int("checkpoint_every", checkpoint_every, 1)
        )
        self.keep_checkpoints = _check_int("keep_checkpoints", keep_checkpoints, 1)
        self.max_nonfinite_steps = _check_int("max_nonfinite_steps", max_nonfinite_steps, 1)
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict or None, got {type(config).__name__}.")
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        for name, flag in (("has_aux", has_aux), ("donate", donate), ("progress", progress)):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be True or False, got {flag!r}.")
        devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        _check_error_mode({d.platform for d in devices})
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batch_fn = batch_fn
        self.run_dir = None if run_dir is None else pathlib.Path(run_dir)
        self.config = dict(config or {})
        self.progress = progress
        self.mesh = mesh
        self.callbacks = tuple(callbacks)
        self.has_aux = has_aux
        self.donate = donate
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._grads_fn: Callable = _grads_jit
        self._update_fn: Callable = _update_donating if donate else _update_plain

    @property
    def checkpoint_path(self) -> pathlib.Path | None:
        """``run_dir / "checkpoint.eqx"``, or ``None`` without a run directory."""
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    def init_state(self, model: PyTree) -> TrainState:
        """A fresh :class:`TrainState` at step 0 for ``model``."""
        opt_state = self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=0)

    def compile(
        self, model: PyTree, batch: Any, *, compiler_options: dict[str, Any] | None = None
    ) -> dict[str, int]:
        """Compile the step's two programs ahead of time for ``batch``'s shapes.

        ``fit`` then uses these executables (so every batch must have these shapes and dtypes)
        and compiles nothing more. Useful to pass XLA ``compiler_options`` or to measure memory
        before training.

        Args:
            model: the model to train (only its structure, shapes and dtypes matter).
            batch: a batch as ``batch_fn`` returns it.
            compiler_options: XLA options for this compilation.

        Returns:
            XLA's memory analysis of the loss-and-gradient program (the one whose memory grows
            with the model and the batch), ``{"temp_bytes", "argument_bytes",
            "output_bytes"}``, or ``{}`` where the backend reports none.
        """
        state = self.init_state(model)
        key = step_keys(self.seed, 0)[1]
        m, opt_state = state.model, state.opt_state
        if self.mesh is not None:
            m, opt_state = replicate((m, opt_state), self.mesh)
            batch = shard_batch(batch, self.mesh)
        args = (self.loss_fn, self.has_aux, self.mesh, m, batch, key)
        grads = _grads_jit.lower(*args).compile(compiler_options)
        # The update program takes the gradient program's outputs: zeros of their shapes,
        # placed as they will be (stacked per device under a mesh).
        placement = None
        if self.mesh is not None:
            placement = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0]))
        outputs = jax.tree.map(
            lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), placement),
            eqx.filter_eval_shape(_grads_program, *args),
        )
        update_jit = _update_donating if self.donate else _update_plain
        inputs = (self.optimizer, self.mesh is not None, *outputs)
        self._update_fn = update_jit.lower(inputs, m, opt_state).compile(compiler_options)
        self._grads_fn = grads
        analysis = grads.compiled.memory_analysis()
        if analysis is None:
            return {}
        return {
            "temp_bytes": int(analysis.temp_size_in_bytes),
            "argument_bytes": int(analysis.argument_size_in_bytes),
            "output_bytes": int(analysis.output_size_in_bytes),
        }

    def save(self, state: TrainState) -> None:
        """Write ``state`` to :attr:`checkpoint_path` (process 0 only), keeping older ones.

        Raises:
            TrainingError: the model holds NaN or inf (such a model is never written).
        """
        if self.run_dir is None or jax.process_index() != 0:
            return
        model, opt_state = _to_host((state.model, state.opt_state))
        if not _host_all_finite(model):
            raise TrainingError(
                f"refusing to checkpoint a model with NaN or inf parameters at step "
                f"{state.step}; the previous checkpoints in {str(self.run_dir)!r} are kept. "
                "Check the initial model for non-finite values.",
                step=state.step,
            )
        metadata = {
            "step": state.step,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
            "config": _json_normalise(self.config),
        }
        data = _checkpoint_bytes((model, opt_state), metadata)
        _write_checkpoint_files(self.run_dir, state.step, data, self.keep_checkpoints)

    def _stored_config(self, metadata: dict[str, Any]) -> dict[str, Any] | None:
        if "config" in metadata:
            return metadata["config"]
        path = self.run_dir / CONFIG_NAME  # checkpoints from before configs were stored
        try:
            return json.loads(path.read_text()).get("config")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    def restore(self, like: TrainState) -> TrainState | None:
        """Load the newest valid checkpoint of ``run_dir`` into the structure of ``like``.

        Damaged checkpoints (checksum mismatch, cut short, not a checkpoint) are skipped with a
        warning that names them; the newest valid one is used.

        Returns:
            The restored state, or ``None`` if ``run_dir`` holds no checkpoint.

        Raises:
            CheckpointCorruptError: every checkpoint is damaged.
            ValueError: the checkpoint was written with another ``seed`` or ``config`` (the
                message lists the differing keys), or does not match ``like``.
        """
        if self.run_dir is None or not self.run_dir.is_dir():
            return None
        # checkpoint.eqx first, then the kept ones newest first, until none can be newer
        candidates = [(None, self.run_dir / CHECKPOINT_NAME), *_history(self.run_dir)]
        best, damaged = None, []
        for named_step, path in candidates:
            if best is not None and named_step is not None and named_step <= best[0]:
                break
            if not path.is_file():
                continue
            try:
                metadata, payload = _read_checkpoint(path)
            except CheckpointCorruptError as e:
                damaged.append(e)
                continue
            step = int(metadata.get("step", -1))
            if best is None or step > best[0]:
                best = (step, path, metadata, payload)
        if best is None:
            if not damaged:
                return None
            raise CheckpointCorruptError(
                f"no valid checkpoint in {str(self.run_dir)!r}: " + " ".join(map(str, damaged))
            )
        step, path, metadata, payload = best
        for error in damaged:
            warnings.warn(
                f"{error} Resuming from {str(path)!r} (step {step}) instead.",
                RuntimeWarning,
                stacklevel=2,
            )
        changed = []
        if metadata.get("seed") != self.seed:
            changed.append(f"seed: {metadata.get('seed')} -> {self.seed}")
        stored = self._stored_config(metadata)
        if stored is not None:
            changed += changed_settings(stored, self.config)
        if changed:
            raise ValueError(
                f"checkpoint {str(path)!r} was written with other settings; resuming would not "
                "reproduce the run. Changed: " + "; ".join(changed) + ". Use the original "
                "settings, another run_dir, or start over (resume=False; the experiment "
                "scripts: --fresh)."
            )
        model, opt_state = _deserialise(path, payload, (like.model, like.opt_state))
        self.skipped_steps = int(metadata.get("skipped_steps", 0))
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=step)

    def _write_config(self, num_steps: int) -> None:
        settings = {
            "seed": self.seed,
            "num_steps": num_steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
            "max_nonfinite_steps": self.max_nonfinite_steps,
            "donate": self.donate,
            "num_devices": 1 if self.mesh is None else int(self.mesh.devices.size),
            "jax_version": jax.__version__,
        }
        text = json.dumps(
            {"config": self.config, "trainer": settings}, indent=2, sort_keys=True, default=repr
        )
        _atomic_write(self.run_dir / CONFIG_NAME, lambda f: f.write(text.encode() + b"\n"))

    def _start(self, model: PyTree, num_steps: int, resume: bool) -> TrainState:
        """Fresh or restored state; prepares ``run_dir`` (process 0 writes)."""
        self.skipped_steps = 0
        state = self.init_state(model)
        if self.run_dir is None:
            return state
        is_main = jax.process_index() == 0
        if is_main and self.run_dir.is_dir():
            _remove_temp_files(self.run_dir)
            if not resume:
                for path in [self.run_dir / CHECKPOINT_NAME] + [
                    p for _, p in _history(self.run_dir)
                ]:
                    path.unlink(missing_ok=True)
        if resume:
            restored = self.restore(state)
            if restored is not None:
                state = restored
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(self.run_dir / METRICS_NAME, state.step)
            self._write_config(num_steps)
        return state

    def _failing_samples(self, model: PyTree, batch: Any, key: PRNGKeyArray) -> list[int] | None:
        """Indices of the samples of ``batch`` whose loss and gradient fail on their own.

        Each sample is run as a batch of one on a single device. ``None`` if the batch has no
        common leading axis, is large (over 1024), or several processes train together.
        """
        leaves = [x for x in jax.tree.leaves(batch) if _is_array(x) and np.ndim(x) >= 1]
        sizes = {np.shape(x)[0] for x in leaves}
        if len(sizes) != 1 or jax.process_count() > 1 or next(iter(sizes)) > 1024:
            return None
        device = jax.devices()[0]
        model = jax.device_put(model, device)
        failing = []
        for i in range(next(iter(sizes))):
            one = jax.tree.map(
                lambda x, i=i: x[i : i + 1] if _is_array(x) and np.ndim(x) >= 1 else x, batch
            )
            try:
                out = _grads_jit(self.loss_fn, self.has_aux, None, model, one, key)
                jax.block_until_ready(out)
            except RuntimeError:
                failing.append(i)
            except Exception:  # the loss does not accept a batch of one: give up
                return None
        return failing

    def fit(self, model: PyTree, num_steps: int, *, resume: bool = True) -> TrainState:
        """Train ``model`` until ``num_steps`` steps are done in total.

        Args:
            model: the initial model (also the structure template when resuming).
            num_steps: total number of steps of the run (not additional steps).
            resume: continue from the newest valid checkpoint in ``run_dir`` if there is one;
                ``False`` deletes the checkpoints of ``run_dir`` and starts over.

        Returns:
            The final :class:`TrainState`.

        Raises:
            TrainingError: a step failed at run time, or ``max_nonfinite_steps`` consecutive
                steps were not finite. The last good state is checkpointed first.
            ValueError: ``batch_fn`` returned an empty batch, or the checkpoint was written
                with other settings (see :meth:`restore`).
        """
        num_steps = _check_int("num_steps", num_steps, 0)
        state = self._start(model, num_steps, resume)
        if state.step >= num_steps:
            return state

        model, opt_state = _copy_arrays((state.model, state.opt_state))
        if self.mesh is not None:
            model, opt_state = replicate((model, opt_state), self.mesh)
        is_main = jax.process_index() == 0
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

        step = saved_step = state.step
        consecutive = 0
        pending: tuple[int, Array] | None = None  # (step, flag) of the last update in flight

        def settle() -> None:
            """Account for the last dispatched update: was its step finite?"""
            nonlocal pending, consecutive
            if pending is None:
                return
            done, ok = pending
            pending = None
            if bool(_host_value(ok)):
                consecutive = 0
                return
            self.skipped_steps += 1
            consecutive += 1
            warnings.warn(
                f"training step {done}: the loss or a gradient is not finite (NaN or inf); "
                "the step was skipped (parameters and optimiser state "
                f"unchanged; {consecutive} in a row, the run stops at "
                f"{self.max_nonfinite_steps}).",
                RuntimeWarning,
                stacklevel=3,
            )
            if consecutive >= self.max_nonfinite_steps:
                stop(
                    f"training stopped at step {done}: {consecutive} consecutive steps had a "
                    "non-finite loss or gradient and were skipped. Lower the learning "
                    "rate, clip gradients, check the data for NaN/inf, or resume from an "
                    "earlier checkpoint.",
                    done,
                )

        def stop(
            message: str,
            failed_step: int,
            samples: list[int] | None = None,
            cause: BaseException | None = None,
        ) -> None:
            """Checkpoint the last good state, then raise TrainingError."""
            nonlocal saved_step
            good = TrainState(model=model, opt_state=opt_state, step=step)
            if self.run_dir is not None and saved_step != step:
                self.save(good)
                saved_step = step
            where = ""
            if self.checkpoint_path is not None and self.checkpoint_path.is_file():
                where = (
                    f" The last good state (step {saved_step}) is in "
                    f"{str(self.checkpoint_path)!r}; running again resumes from it."
                )
            raise TrainingError(
                message + where,
                step=failed_step,
                samples=samples,
                checkpoint=self.checkpoint_path if where else None,
            ) from cause

        t_start = t_last = time.perf_counter()
        step_last = step
        try:
            while step < num_steps:
                batch_key, loss_key = step_keys(self.seed, step)
                host_batch = self.batch_fn(step, batch_key)
                _check_batch(host_batch, step)
                batch = host_batch if self.mesh is None else shard_batch(host_batch, self.mesh)
                try:
                    grads_out = self._grads_fn(
                        self.loss_fn, self.has_aux, self.mesh, model, batch, loss_key
                    )
                    jax.block_until_ready(grads_out)
                except RuntimeError as error:
                    settle()
                    samples = self._failing_samples(model, host_batch, loss_key)
                    located = ""
                    if samples:
                        located = f" It fails for sample(s) {samples} of the step's batch."
                    elif samples == []:
                        located = " No sample of the step's batch fails on its own."
                    stop(
                        f"training step {step + 1} failed: {_error_message(error)}{located}",
                        step + 1,
                        samples,
                        cause=error,
                    )
                settle()
                model, opt_state, loss, aux, ok = self._update_fn(
                    (self.optimizer, self.mesh is not None, *grads_out), model, opt_state
                )
                step += 1
                pending = (step, ok)
                state = TrainState(model=model, opt_state=opt_state, step=step)

                metrics = None
                if step % self.log_every == 0 or step == num_steps:
                    settle()
                    loss_value = float(_host_value(loss))
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    metrics = {"step": step, "loss": loss_value, **_scalar_metrics(aux)}
                    metrics["skipped_steps"] = self.skipped_steps
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
                        if self.skipped_steps:
                            postfix["skipped"] = str(self.skipped_steps)
                        bar.set_postfix(postfix, refresh=False)
                if bar is not None:
                    bar.update(1)

                halt = any([bool(cb(state, metrics)) for cb in self.callbacks])
                periodic = self.checkpoint_every is not None and step % self.checkpoint_every == 0
                if periodic or halt or step == num_steps:
                    settle()
                    self.save(state)
                    saved_step = step
                if halt:
                    break
            settle()
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
