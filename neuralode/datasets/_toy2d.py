"""Toy 2-D densities (FFJORD's, PAPER.md sections 4 and 6): one sampler each.

Every sampler takes an explicit PRNG key and a dtype (float32 by default) and returns points of
shape ``(n, 2)``; :func:`sample_toy_2d` picks one by name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_float_dtype, check_int, check_real


def _size_and_dtype(owner: str, n: Any, dtype: Any) -> tuple[int, np.dtype]:
    return check_int(owner, "n", n), check_float_dtype(owner, dtype)


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
        >>> x = sample_circles(jax.random.key(0), 512, noise=0.0)
        >>> x.shape, sorted(set(jnp.round(jnp.linalg.norm(x, axis=1), 4).tolist()))
        ((512, 2), [0.5, 1.0])
    """
    n, dtype = _size_and_dtype("sample_circles", n, dtype)
    check_real("sample_circles", "factor", factor, interval=(0.0, 1.0))
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
        >>> x = sample_moons(jax.random.key(0), 4000)
        >>> bool(jnp.all(jnp.abs(x.mean(axis=0)) < 0.05))  # centred
        True
    """
    n, dtype = _size_and_dtype("sample_moons", n, dtype)
    return _moons(key, noise, n=n, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _8gaussians(key, radius, std, *, n, dtype):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.randint(k_comp, (n,), 0, 8)
    centres = radius * _unit(comp.astype(dtype) * (math.pi / 4))
    return centres + std * jax.random.normal(k_noise, (n, 2), dtype)


def sample_8gaussians(key: PRNGKeyArray, n: int, *, radius: float = 2.0 * math.sqrt(2.0),
                      std: float = 0.5 / math.sqrt(2.0),
                      dtype: Any = jnp.float32) -> Float[Array, "n 2"]:
    """Equal mixture of 8 isotropic Gaussians with means evenly spaced on a circle.

    Means at ``radius * (cos kπ/4, sin kπ/4)``, ``k = 0..7``, standard deviation ``std``.

    Example:
        >>> x = sample_8gaussians(jax.random.key(0), 64, radius=2.0, std=0.0)
        >>> sorted(set(jnp.round(jnp.linalg.norm(x, axis=1), 4).tolist()))
        [2.0]
    """
    n, dtype = _size_and_dtype("sample_8gaussians", n, dtype)
    return _8gaussians(key, radius, std, n=n, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n", "num_arms", "dtype"))
def _pinwheel(key, radial_std, tangential_std, rate, scale, *, n, num_arms, dtype):
    k_arm, k_noise = jax.random.split(key)
    arm = jax.random.randint(k_arm, (n,), 0, num_arms).astype(dtype)
    eps = jax.random.normal(k_noise, (n, 2), dtype)
    g = jnp.stack([1.0 + radial_std * eps[:, 0], tangential_std * eps[:, 1]], axis=-1)
    angle = arm * (2 * math.pi / num_arms) + rate * jnp.exp(g[:, 0])
    return scale * _rotate(g, angle)


def sample_pinwheel(key: PRNGKeyArray, n: int, *, num_arms: int = 5, radial_std: float = 0.3,
                    tangential_std: float = 0.1, rate: float = 0.25, scale: float = 2.0,
                    dtype: Any = jnp.float32) -> Float[Array, "n 2"]:
    """A pinwheel of ``num_arms`` curved arms.

    A point of arm ``k`` is ``g = (1 + radial_std ε₁, tangential_std ε₂)`` rotated by the angle
    ``2πk / num_arms + rate * exp(g₁)`` (arms bend more further out), times ``scale``.

    Example:
        >>> sample_pinwheel(jax.random.key(0), 64, num_arms=3).shape
        (64, 2)
    """
    n, dtype = _size_and_dtype("sample_pinwheel", n, dtype)
    num_arms = check_int("sample_pinwheel", "num_arms", num_arms)
    return _pinwheel(
        key, radial_std, tangential_std, rate, scale, n=n, num_arms=num_arms, dtype=dtype
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
        >>> x = sample_checkerboard(jax.random.key(0), 64)
        >>> bool(jnp.all(jnp.floor(x / 2).sum(axis=1) % 2 == 0))  # black squares only
        True
    """
    n, dtype = _size_and_dtype("sample_checkerboard", n, dtype)
    return _checkerboard(key, n=n, dtype=dtype)


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
        >>> x = sample_2spirals(jax.random.key(0), 64, noise=0.0)
        >>> float(jnp.max(jnp.linalg.norm(x, axis=1))) <= math.pi  # at most 1.5 turns out
        True
    """
    n, dtype = _size_and_dtype("sample_2spirals", n, dtype)
    return _2spirals(key, noise, n=n, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _rings(key, radii, noise, *, n, dtype):
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    radius = radii.astype(dtype)[jax.random.randint(k_ring, (n,), 0, radii.shape[0])]
    angle = jax.random.uniform(k_angle, (n,), dtype, 0.0, 2 * math.pi)
    return radius[:, None] * _unit(angle) + noise * jax.random.normal(k_noise, (n, 2), dtype)


def sample_rings(key: PRNGKeyArray, n: int, *, radii: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
                 noise: float = 0.08, dtype: Any = jnp.float32) -> Float[Array, "n 2"]:
    """Concentric rings: a uniformly chosen radius from ``radii``, a uniform angle, plus noise.

    Example:
        >>> x = sample_rings(jax.random.key(0), 64, radii=(1.0, 3.0), noise=0.0)
        >>> sorted(set(jnp.round(jnp.linalg.norm(x, axis=1), 4).tolist()))
        [1.0, 3.0]
    """
    n, dtype = _size_and_dtype("sample_rings", n, dtype)
    radii = np.asarray(radii, np.float64)
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError(
            f"sample_rings: `radii` must be a non-empty sequence of radii, got {radii!r}."
        )
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
            f"sample_toy_2d: unknown toy 2-D data set `name`={name!r}; valid names are "
            f"{list(TOY_2D_NAMES)}."
        ) from None
    return sampler(key, n, **kwargs)
