"""Target energies for density matching (Figure 4; Rezende & Mohamed 2015, Table 1).

Unnormalised 2-D log-densities ``-U(z)``, jitted, on points of shape ``(..., 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def _as_points(z: ArrayLike) -> Array:
    z = jnp.asarray(z)
    if z.ndim == 0 or z.shape[-1] != 2:
        raise ValueError(f"log_density: `z` must have shape (..., 2), got shape {z.shape}.")
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
            f"target_log_density: unknown target `name`={name!r}; valid names are "
            f"{list(TARGET_NAMES)}."
        ) from None
    return fn(z)
