"""Polyak-Ruppert parameter averaging kept in the optimiser state (so it is checkpointed)."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree

from .._checks import check_real


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
        >>> optimizer = optax.chain(optax.sgd(0.1), param_average(0.9))
        >>> params = {"w": jnp.zeros(2)}
        >>> state = optimizer.init(params)
        >>> updates, state = optimizer.update({"w": jnp.ones(2)}, state, params)
        >>> # first update: d = min(0.9, 1/10), avg = 0.1 * 0 + 0.9 * (0 - 0.1 * 1)
        >>> [round(x, 6) for x in averaged_model(state, params)["w"].tolist()]
        [-0.09, -0.09]
    """
    decay = check_real("param_average", "decay", decay, interval=(0.0, 1.0))

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
