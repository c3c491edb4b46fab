"""Problems and checks shared by the tests of nn, datasets, training and the experiments.

Imported as ``from helpers import ...`` (pytest puts ``tests/`` on the import path of the test
modules it collects from there).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Numerical checks
# ---------------------------------------------------------------------------------------------


def simpson(values, ts) -> float:
    """Composite Simpson's rule on an odd number of equally spaced points."""
    values, ts = np.asarray(values), np.asarray(ts)
    assert values.shape[0] % 2 == 1
    h = ts[1] - ts[0]
    return h / 3 * (values[0] + values[-1] + 4 * values[1:-1:2].sum() + 2 * values[2:-1:2].sum())


def fd_check(loss, theta, key, *, h=1e-5, rtol=1e-5, atol=1e-9, n_dirs=2) -> None:
    """The gradient of ``loss`` at the flat parameters ``theta`` against central differences
    along ``n_dirs`` random directions (one compilation serves both)."""
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(theta)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.linalg.norm(grad)) > 0
    for k in jax.random.split(key, n_dirs):
        v = jax.random.normal(k, theta.shape, theta.dtype)
        fd = (value_and_grad(theta + h * v)[0] - value_and_grad(theta - h * v)[0]) / (2 * h)
        np.testing.assert_allclose(jnp.dot(grad, v), fd, rtol=rtol, atol=atol)


def assert_trees_equal(a, b) -> None:
    """Same structure, and every leaf equal bit for bit with the same dtype."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


# ---------------------------------------------------------------------------------------------
# A small regression problem for the training loop
# ---------------------------------------------------------------------------------------------

OPTIMIZER = optax.adam(1e-2)  # one object for every test: the train step compiles once


def make_mlp():
    """A float32 MLP ``R² -> R`` (the same initialisation every time)."""
    return eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(0), dtype=jnp.float32)


def regression_loss(model, batch, key):
    """Mean squared error to a noisy target: the key matters, so a resume must reproduce it.
    ``aux`` holds a scalar that is logged and a vector that is not."""
    x, y = batch
    pred = jax.vmap(model)(x)
    y = y + 0.01 * jax.random.normal(key, y.shape, y.dtype)
    return jnp.mean((pred - y) ** 2), {"nfe": jnp.asarray(7, jnp.int32), "vec": jnp.ones(3)}


def regression_batch(step, key, bad: dict[int, float] | None = None):
    """16 points ``(x, sin(x_0) cos(x_1))``; with ``bad``, step ``i`` gets one input
    ``bad[i]`` (NaN or inf)."""
    x = jax.random.normal(key, (16, 2), jnp.float32)
    y = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:])
    if bad and step in bad:
        x = x.at[3, 0].set(bad[step])
    return x, y


# ---------------------------------------------------------------------------------------------
# Run folders and subprocesses
# ---------------------------------------------------------------------------------------------


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a kill is skipped."""
    out = []
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process: CPU only, float32 (no inherited x64)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    env.pop("JAX_ENABLE_X64", None)
    return env


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float,
              output: Callable[[], str]) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 20 ms).

    Fails with the child's ``output()`` if it ends first, or if ``ready()`` does not hold
    within ``timeout`` seconds.
    """
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, output()[-4000:]
            assert time.monotonic() < deadline, f"not ready within {timeout} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
