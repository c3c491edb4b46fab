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
- :func:`param_average` / :func:`averaged_model`: Polyak averaging kept in the optimiser state.

One module per piece: ``_step.py`` (seeding, the step programs), ``_averaging.py``,
``_checkpoint.py`` (run-directory files), ``_sharding.py``, ``_errors.py``, ``_trainer.py``;
this package re-exports their public names.

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

from ._averaging import ParamAverageState, averaged_model, param_average
from ._checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    CheckpointCorruptError,
    changed_settings,
    load_checkpoint,
    save_checkpoint,
)
from ._errors import TrainingError
from ._sharding import make_mesh, replicate, shard_batch
from ._step import make_train_step, seed_everything, step_keys
from ._trainer import Trainer, TrainState, fit

__all__ = [
    # the step
    "make_train_step",
    "seed_everything",
    "step_keys",
    # the loop
    "TrainState",
    "Trainer",
    "TrainingError",
    "fit",
    # averaging
    "ParamAverageState",
    "averaged_model",
    "param_average",
    # checkpoints
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "CheckpointCorruptError",
    "changed_settings",
    "load_checkpoint",
    "save_checkpoint",
    # sharding
    "make_mesh",
    "replicate",
    "shard_batch",
]
