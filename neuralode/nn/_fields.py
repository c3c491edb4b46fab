"""Time-conditioned vector fields ``f(t, y, args)`` that plug straight into ``odeint``.

Every field here works on a *single* example (a feature vector ``(D,)`` or an image
``(C, H, W)``) and ignores ``args``; ``jax.vmap`` it (or the solve around it) for batches.
Outputs are cast to the dtype of ``y`` so that ``odeint``'s dtype check holds whatever dtype the
parameters were created with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

__all__ = [
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "ConvField",
    "MLPField",
]


def _check_positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int, got {value!r}.")
    return value


def _check_nonnegative_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: `{name}` must be a non-negative int, got {value!r}.")
    return value


def _check_vector(owner: str, y, size: int):
    if y.ndim != 1 or y.shape[0] != size:
        raise ValueError(
            f"{owner}: `y` must be a single example of shape ({size},), got shape {y.shape}. "
            "For a batch, jax.vmap the field (or the solve)."
        )


class ConcatLinear(eqx.Module):
    """A linear layer whose input is the time ``t`` concatenated to ``x``: ``W [t, x] + b``.

    Args:
        in_size: Size of ``x``.
        out_size: Size of the output.
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ConcatLinear

        layer = ConcatLinear(3, 4, key=jax.random.key(0))
        layer(0.5, jnp.ones(3)).shape  # (4,)
        ```
    """

    linear: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray):
        _check_positive_int("ConcatLinear", "in_size", in_size)
        _check_positive_int("ConcatLinear", "out_size", out_size)
        self.linear = eqx.nn.Linear(in_size + 1, out_size, key=key)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " in"]) -> Float[Array, " out"]:
        tt = jnp.reshape(jnp.asarray(t, x.dtype), (1,))
        return self.linear(jnp.concatenate([tt, x]))


class ConcatSquashLinear(eqx.Module):
    """FFJORD's concat-squash layer: ``(W x + b) * sigmoid(W_g t + b_g) + W_b t``.

    The time gates every output unit multiplicatively and shifts it additively; it is the
    default layer of FFJORD's toy CNFs (Grathwohl et al. 2019).

    Args:
        in_size: Size of ``x``.
        out_size: Size of the output.
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ConcatSquashLinear

        layer = ConcatSquashLinear(2, 5, key=jax.random.key(0))
        layer(0.0, jnp.ones(2)).shape  # (5,)
        ```
    """

    linear: eqx.nn.Linear
    gate: eqx.nn.Linear
    hyper_bias: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray):
        _check_positive_int("ConcatSquashLinear", "in_size", in_size)
        _check_positive_int("ConcatSquashLinear", "out_size", out_size)
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, key=k1)
        self.gate = eqx.nn.Linear("scalar", out_size, key=k2)
        self.hyper_bias = eqx.nn.Linear("scalar", out_size, use_bias=False, key=k3)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " in"]) -> Float[Array, " out"]:
        tt = jnp.asarray(t, x.dtype)
        return self.linear(x) * jax.nn.sigmoid(self.gate(tt)) + self.hyper_bias(tt)


class MLPField(eqx.Module):
    """A time-conditioned MLP vector field with the time concatenated to the inputs.

    ``time="all"`` (default) appends ``t`` to the input of every layer (torchdiffeq's and
    FFJORD's "concat" layers); ``time="first"`` only to the input of the first layer.

    Args:
        in_size: Dimension ``D`` of the state.
        width: Width of the hidden layers.
        depth: Number of hidden layers (``depth + 1`` linear layers in total).
        out_size: Output dimension, default ``in_size`` (a vector field).
        time: ``"all"`` or ``"first"``: which layers see ``t``.
        activation: Elementwise nonlinearity between layers (default ``tanh``; smooth
            activations give smooth Jacobians, which CNF traces need).
        final_activation: Applied to the output (default identity).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import MLPField

        field = MLPField(2, width=8, depth=2, key=jax.random.key(0))
        sol = nde.odeint(field, jnp.ones(2), jnp.linspace(0.0, 1.0, 3))
        sol.ys.shape  # (3, 2)
        ```
    """

    layers: tuple
    concat: tuple[bool, ...] = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    final_activation: Callable = eqx.field(static=True)
    in_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        width: int,
        depth: int,
        *,
        out_size: int | None = None,
        time: Literal["all", "first"] = "all",
        activation: Callable = jnp.tanh,
        final_activation: Callable = lambda x: x,
        key: PRNGKeyArray,
    ):
        _check_positive_int("MLPField", "in_size", in_size)
        _check_positive_int("MLPField", "width", width)
        _check_nonnegative_int("MLPField", "depth", depth)
        out_size = in_size if out_size is None else out_size
        _check_positive_int("MLPField", "out_size", out_size)
        if time not in ("all", "first"):
            raise ValueError(f"MLPField: `time` must be 'all' or 'first', got {time!r}.")
        sizes = [in_size] + [width] * depth + [out_size]
        keys = jax.random.split(key, depth + 1)
        layers, concat = [], []
        for i, k in enumerate(keys):
            with_t = time == "all" or i == 0
            if with_t:
                layers.append(ConcatLinear(sizes[i], sizes[i + 1], key=k))
            else:
                layers.append(eqx.nn.Linear(sizes[i], sizes[i + 1], key=k))
            concat.append(with_t)
        self.layers = tuple(layers)
        self.concat = tuple(concat)
        self.activation = activation
        self.final_activation = final_activation
        self.in_size = in_size

    def __call__(
        self, t: Float[ArrayLike, ""], y: Float[Array, " dim"], args: PyTree = None
    ) -> Float[Array, " out"]:
        _check_vector("MLPField", y, self.in_size)
        h = y
        last = len(self.layers) - 1
        for i, (layer, with_t) in enumerate(zip(self.layers, self.concat, strict=True)):
            h = layer(t, h) if with_t else layer(h)
            h = self.activation(h) if i < last else self.final_activation(h)
        return h.astype(y.dtype)


class ConcatSquashField(eqx.Module):
    """An MLP vector field made of :class:`ConcatSquashLinear` layers (FFJORD's toy CNF field).

    Args:
        in_size: Dimension ``D`` of the state.
        width: Width of the hidden layers.
        depth: Number of hidden layers (``depth + 1`` concat-squash layers in total).
        out_size: Output dimension, default ``in_size``.
        activation: Nonlinearity between layers (default ``tanh``).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ConcatSquashField

        field = ConcatSquashField(2, width=16, depth=2, key=jax.random.key(0))
        field(0.3, jnp.zeros(2), None).shape  # (2,)
        ```
    """

    layers: tuple[ConcatSquashLinear, ...]
    activation: Callable = eqx.field(static=True)
    in_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        width: int,
        depth: int,
        *,
        out_size: int | None = None,
        activation: Callable = jnp.tanh,
        key: PRNGKeyArray,
    ):
        _check_positive_int("ConcatSquashField", "in_size", in_size)
        _check_positive_int("ConcatSquashField", "width", width)
        _check_nonnegative_int("ConcatSquashField", "depth", depth)
        out_size = in_size if out_size is None else out_size
        _check_positive_int("ConcatSquashField", "out_size", out_size)
        sizes = [in_size] + [width] * depth + [out_size]
        keys = jax.random.split(key, depth + 1)
        self.layers = tuple(
            ConcatSquashLinear(sizes[i], sizes[i + 1], key=k) for i, k in enumerate(keys)
        )
        self.activation = activation
        self.in_size = in_size

    def __call__(
        self, t: Float[ArrayLike, ""], y: Float[Array, " dim"], args: PyTree = None
    ) -> Float[Array, " out"]:
        _check_vector("ConcatSquashField", y, self.in_size)
        h = y
        for layer in self.layers[:-1]:
            h = self.activation(layer(t, h))
        return self.layers[-1](t, h).astype(y.dtype)


class ConcatConv2d(eqx.Module):
    """A 2-D convolution whose input has the time ``t`` as an extra (first) channel.

    Args:
        in_channels: Channels of ``x`` (without the time channel).
        out_channels: Output channels.
        kernel_size: Kernel size (odd sizes keep the spatial shape with the default padding).
        padding: Zero padding, default ``kernel_size // 2`` ("same" for odd kernels).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        from neuralode.nn import ConcatConv2d

        conv = ConcatConv2d(4, 4, key=jax.random.key(0))
        conv(0.5, jnp.ones((4, 6, 6))).shape  # (4, 6, 6)
        ```
    """

    conv: eqx.nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int | None = None,
        *,
        key: PRNGKeyArray,
    ):
        _check_positive_int("ConcatConv2d", "in_channels", in_channels)
        _check_positive_int("ConcatConv2d", "out_channels", out_channels)
        _check_positive_int("ConcatConv2d", "kernel_size", kernel_size)
        padding = kernel_size // 2 if padding is None else padding
        self.conv = eqx.nn.Conv2d(
            in_channels + 1, out_channels, kernel_size, padding=padding, key=key
        )

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "channels height width"]
    ) -> Float[Array, "out_channels height2 width2"]:
        tt = jnp.full((1,) + x.shape[1:], jnp.asarray(t, x.dtype), x.dtype)
        return self.conv(jnp.concatenate([tt, x], axis=0))


class ConvField(eqx.Module):
    """The paper's ODE-Net vector field for images (section 3), channels-first.

    ``GroupNorm → ReLU → conv 3×3 (t as an extra channel) → GroupNorm → ReLU → conv 3×3 (t as
    an extra channel) → GroupNorm``, on a single example of shape ``(C, H, W)``; the output
    has the same shape. Use ``jax.vmap`` for batches.

    Args:
        channels: Number of channels ``C`` (64 in the paper).
        groups: Groups of the GroupNorms, default ``min(32, channels)``; must divide
            ``channels``.
        kernel_size: Convolution kernel size (odd; default 3).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import ConvField

        field = ConvField(4, groups=2, key=jax.random.key(0))
        images = jnp.ones((3, 4, 8, 8))  # a batch of 3
        out = jax.vmap(lambda y: field(0.0, y, None))(images)
        out.shape  # (3, 4, 8, 8)
        ```
    """

    norm1: eqx.nn.GroupNorm
    conv1: ConcatConv2d
    norm2: eqx.nn.GroupNorm
    conv2: ConcatConv2d
    norm3: eqx.nn.GroupNorm
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        *,
        groups: int | None = None,
        kernel_size: int = 3,
        key: PRNGKeyArray,
    ):
        _check_positive_int("ConvField", "channels", channels)
        groups = min(32, channels) if groups is None else groups
        _check_positive_int("ConvField", "groups", groups)
        if channels % groups != 0:
            raise ValueError(f"ConvField: `groups` ({groups}) must divide `channels` ({channels}).")
        _check_positive_int("ConvField", "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"ConvField: `kernel_size` must be odd to keep the image shape, got {kernel_size}."
            )
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.GroupNorm(groups, channels)
        self.conv1 = ConcatConv2d(channels, channels, kernel_size, key=k1)
        self.norm2 = eqx.nn.GroupNorm(groups, channels)
        self.conv2 = ConcatConv2d(channels, channels, kernel_size, key=k2)
        self.norm3 = eqx.nn.GroupNorm(groups, channels)
        self.channels = channels

    def __call__(
        self,
        t: Float[ArrayLike, ""],
        y: Float[Array, "channels height width"],
        args: PyTree = None,
    ) -> Float[Array, "channels height width"]:
        if y.ndim != 3 or y.shape[0] != self.channels:
            raise ValueError(
                f"ConvField: `y` must be a single image of shape ({self.channels}, H, W) "
                f"(channels first), got shape {y.shape}. For a batch, jax.vmap the field."
            )
        h = jax.nn.relu(self.norm1(y))
        h = self.conv1(t, h)
        h = jax.nn.relu(self.norm2(h))
        h = self.conv2(t, h)
        return self.norm3(h).astype(y.dtype)
