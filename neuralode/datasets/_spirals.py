"""The paper's spiral data set (PAPER.md section 5), irregular subsampling and splits.

Everything random takes an explicit PRNG key and creates arrays in an explicit dtype (float32 by
default), so results do not depend on whether ``jax_enable_x64`` is on.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from .._checks import check_float_dtype, check_int, check_real


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
    num_spirals = check_int("make_spirals", "num_spirals", num_spirals)
    num_points = check_int("make_spirals", "num_points", num_points, minimum=2)
    total_points = check_int("make_spirals", "total_points", total_points, minimum=2)
    num_extrapolate = check_int("make_spirals", "num_extrapolate", num_extrapolate, minimum=0)
    dtype = check_float_dtype("make_spirals", dtype)
    check_real("make_spirals", "noise_std", noise_std, nonnegative=True)
    if not check_real("make_spirals", "stop", stop) > check_real("make_spirals", "start", start):
        raise ValueError(
            f"make_spirals: `stop` must be greater than `start`, got start={start}, stop={stop}."
        )
    window = num_points + num_extrapolate
    num_starts = total_points - window - num_points
    if num_starts < 1:
        raise ValueError(
            f"make_spirals: `total_points`={total_points} is too small: windows start in "
            f"[num_points, total_points - num_points - num_extrapolate), which needs "
            f"total_points >= {2 * num_points + num_extrapolate + 1}. Increase `total_points` "
            "or reduce `num_points`/`num_extrapolate`."
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
    num_observed = check_int("split_extrapolation", "num_observed", num_observed)
    num_times = data.ts.shape[0]
    if num_observed >= num_times:
        raise ValueError(
            f"split_extrapolation: `num_observed`={num_observed} leaves nothing to "
            f"extrapolate: the data has {num_times} time points. Generate it with "
            "`make_spirals(..., num_extrapolate=K)`."
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


def subsample(key: PRNGKeyArray, ts: Float[ArrayLike, "*N T"], ys: Float[ArrayLike, "N T D"],
              n: int) -> IrregularSamples:
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
        raise ValueError(f"subsample: `ys` must have shape (N, T, D), got shape {ys.shape}.")
    num, num_times = ys.shape[:2]
    if ts.ndim == 1:
        ts = jnp.broadcast_to(ts, (num, ts.shape[0]))
    if ts.shape != (num, num_times):
        raise ValueError(
            f"subsample: `ts` must have shape (T,) or (N, T) = {(num, num_times)} to match `ys`, "
            f"got shape {ts.shape}."
        )
    n = check_int("subsample", "n", n)
    if n > num_times:
        raise ValueError(f"subsample: `n`={n} exceeds the number of time points T={num_times}.")
    times, values, indices, mask = _subsample(key, ts, ys, n=n)
    return IrregularSamples(times=times, values=values, indices=indices, mask=mask)


def train_test_split(data: PyTree[ArrayLike] | Spirals, *, test_size: float | int = 0.2,
                     seed: int = 0, shuffle: bool = True) -> tuple[Any, Any]:
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
            raise ValueError("train_test_split: `data` has no array leaves to split.")
        lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(lengths) != 1 or None in lengths:
            raise ValueError(
                "train_test_split: every array in `data` must have the same leading axis "
                f"length, got lengths {sorted(str(x) for x in lengths)}."
            )
        (num,) = lengths
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(
            f"train_test_split: `test_size` must be a float fraction or an int count, got "
            f"{test_size!r}."
        )
    if isinstance(test_size, float):
        test_size = check_real("train_test_split", "test_size", test_size, interval=(0.0, 1.0))
        num_test = math.ceil(test_size * num)
    else:
        num_test = test_size
    if not 0 < num_test < num:
        raise ValueError(
            f"train_test_split: `test_size`={test_size} gives {num_test} test samples out of "
            f"{num}; both parts must be non-empty."
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
