"""The optimisation step: seeding, the jitted plain step, and the Trainer's two programs.

Everything random in a training run derives from ``(seed, step)`` (:func:`step_keys`). The plain
step (:func:`make_train_step`) is one jitted program; the :class:`~neuralode.training.Trainer`
splits a step in two programs (loss and gradients without cross-device communication, then the
update) so that a runtime failure on one device raises instead of hanging the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from .._checks import check_callable, check_int, describe

try:  # JAX >= 0.6
    from jax import shard_map as _shard_map

    _NO_REPLICATION_CHECK = {"check_vma": False}
except ImportError:  # older JAX
    from jax.experimental.shard_map import shard_map as _shard_map

    _NO_REPLICATION_CHECK = {"check_rep": False}

LossFn = Callable[[PyTree, Any, PRNGKeyArray], tuple[Scalar, dict[str, Any]]]
BatchFn = Callable[[int, PRNGKeyArray], Any]


def seed_everything(seed: int) -> PRNGKeyArray:
    """Seed Python's ``random`` and NumPy's global generator, and return ``jax.random.key(seed)``.

    JAX code should thread the returned key explicitly; seeding the global generators only
    makes stray host-side randomness (e.g. in data preprocessing) repeatable.

    Example:
        >>> key = seed_everything(0)
        >>> jax.random.normal(key).shape
        ()
    """
    seed = check_int("seed_everything", "seed", seed, minimum=0)
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


def check_step_args(owner: str, loss_fn: Any, optimizer: Any) -> None:
    """The loss function and optimiser that :func:`make_train_step` and the Trainer take."""
    check_callable(owner, "loss_fn", loss_fn, "loss_fn(model, batch, key)")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{owner}: `optimizer` must be an optax.GradientTransformation (with .init and "
            f".update), got {describe(optimizer, 'optimizer')}."
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
    check_step_args("make_train_step", loss_fn, optimizer)
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


def grads_program(loss_fn, has_aux, mesh, model, batch, key):
    if mesh is None:
        return _loss_and_grads(loss_fn, has_aux, model, batch, key)
    return _sharded_loss_and_grads(loss_fn, has_aux, mesh, model, batch, key)


grads_jit = eqx.filter_jit(grads_program)


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


update_plain = eqx.filter_jit(_update)
update_donating = eqx.filter_jit(_update, donate="all-except-first")

