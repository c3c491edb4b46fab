"""Data parallelism with ``jax.sharding``: a 1-D mesh, a sharded batch, a replicated model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "batch") -> Mesh:
    """A 1-D device mesh for data parallelism, over ``devices`` (default: ``jax.devices()``,
    i.e. every device of every process).

    Example:
        >>> make_mesh().axis_names
        ('batch',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh: `devices` must contain at least one device.")
    return Mesh(np.asarray(devices), (axis_name,))


def is_array(x: Any) -> bool:
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
        if not is_array(x):
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
        if not is_array(x):
            return x
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(place, tree)
