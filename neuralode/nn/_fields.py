"""Time-conditioned vector fields ``f(t, y, args)`` that plug straight into ``odeint``.

Every field here works on a *single* example (a feature vector ``(D,)`` or an image
``(C, H, W)``) and ignores ``args``; ``jax.vmap`` the solve around it for batches (every sample
gets its own step sizes), or wrap it in :class:`BatchField` to solve a whole batch as one state
(one shared step size, as the paper's code does). Outputs are cast to the dtype of ``y`` so that
``odeint``'s dtype check holds whatever dtype the parameters were created with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_array, check_bool, check_callable, check_choice, check_int

_VMAP_HINT = " For a batch, jax.vmap the field (or the solve), or wrap it in nn.BatchField."


Time = Float[ArrayLike, ""]
Vector = Float[Array, " dim"]


def _check_vector(owner: str, y, size: int):
    return check_array(owner, "y", y, shape=(size,), hint=_VMAP_HINT)


def _mlp_sizes(owner: str, in_size, width, depth, out_size) -> list[int]:
    """Checked layer sizes ``[in, width, ..., width, out]`` of an MLP field (``depth`` hidden
    layers; ``out_size=None`` is ``in_size``)."""
    in_size, width = check_int(owner, "in_size", in_size), check_int(owner, "width", width)
    depth = check_int(owner, "depth", depth, minimum=0)
    out_size = check_int(owner, "out_size", in_size if out_size is None else out_size)
    return [in_size] + [width] * depth + [out_size]


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
        in_size = check_int("ConcatLinear", "in_size", in_size)
        out_size = check_int("ConcatLinear", "out_size", out_size)
        self.linear = eqx.nn.Linear(in_size + 1, out_size, key=key)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " in"]) -> Float[Array, " out"]:
        tt = jnp.reshape(jnp.asarray(t, x.dtype), (1,))
        return self.linear(jnp.concatenate([tt, x]))


class ConcatSquashLinear(eqx.Module):
    """FFJORD's concat-squash layer: ``(W x + b) * sigmoid(W_g t + b_g) + W_b t``.

    The time gates every output unit multiplicatively and shifts it additively; it is the
    default layer of FFJORD's toy CNFs (Grathwohl et al. 2019). The arguments are those of
    :class:`ConcatLinear`, and so is its use: ``ConcatSquashLinear(2, 5, key=key)(t, x)`` maps
    ``x`` of shape ``(2,)`` at time ``t`` to shape ``(5,)``.
    """

    linear: eqx.nn.Linear
    gate: eqx.nn.Linear
    hyper_bias: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray):
        in_size = check_int("ConcatSquashLinear", "in_size", in_size)
        out_size = check_int("ConcatSquashLinear", "out_size", out_size)
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

    def __init__(self, in_size: int, width: int, depth: int, *, out_size: int | None = None,
                 time: Literal["all", "first"] = "all", activation: Callable = jnp.tanh,
                 final_activation: Callable = lambda x: x, key: PRNGKeyArray):
        sizes = _mlp_sizes("MLPField", in_size, width, depth, out_size)
        check_choice("MLPField", "time", time, ("all", "first"))
        check_callable("MLPField", "activation", activation, "activation(x)")
        keys = jax.random.split(key, len(sizes) - 1)
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
        self.in_size = sizes[0]

    def __call__(self, t: Time, y: Vector, args: PyTree = None) -> Vector:
        h = y = _check_vector("MLPField", y, self.in_size)
        last = len(self.layers) - 1
        for i, (layer, with_t) in enumerate(zip(self.layers, self.concat, strict=True)):
            h = layer(t, h) if with_t else layer(h)
            h = self.activation(h) if i < last else self.final_activation(h)
        return h.astype(y.dtype)


class AutonomousMLPField(eqx.Module):
    """An autonomous vector field ``f(t, z, args) = mlp(z)`` (the latent ODE's dynamics)."""

    mlp: eqx.nn.MLP

    def __init__(self, size: int, width: int, depth: int, activation: Callable[[Array], Array], *,
                 key: PRNGKeyArray):
        self.mlp = eqx.nn.MLP(size, size, width, depth, activation=activation, key=key)

    def __call__(
        self, t: Float[ArrayLike, ""], z: Float[Array, " n"], args: PyTree = None
    ) -> Float[Array, " n"]:
        return self.mlp(z)


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

    def __init__(self, in_size: int, width: int, depth: int, *, out_size: int | None = None,
                 activation: Callable = jnp.tanh, key: PRNGKeyArray):
        sizes = _mlp_sizes("ConcatSquashField", in_size, width, depth, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            ConcatSquashLinear(sizes[i], sizes[i + 1], key=k) for i, k in enumerate(keys)
        )
        self.activation = activation
        self.in_size = sizes[0]

    def __call__(self, t: Time, y: Vector, args: PyTree = None) -> Vector:
        h = y = _check_vector("ConcatSquashField", y, self.in_size)
        for layer in self.layers[:-1]:
            h = self.activation(layer(t, h))
        return self.layers[-1](t, h).astype(y.dtype)


def _conv_im2col(conv: eqx.nn.Conv2d, x: Array) -> Array:
    """``conv(x)`` for one channels-first image (stride 1, no dilation, one group), written as
    im2col and one matrix product: the image's ``k×k`` patches become the rows of a matrix
    (channels last), multiplied by the kernel reshaped to ``(k·k·C_in, C_out)``."""
    (pt, pb), (pl, pr) = conv.padding
    kh, kw = conv.weight.shape[2:]
    xp = jnp.pad(x.transpose(1, 2, 0), ((pt, pb), (pl, pr), (0, 0)))  # (H, W, C) padded
    ho, wo = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
    cols = jnp.concatenate(
        [xp[i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    w = conv.weight.astype(x.dtype).transpose(2, 3, 1, 0).reshape(kh * kw * x.shape[0], -1)
    out = (cols.reshape(ho * wo, -1) @ w).reshape(ho, wo, -1).transpose(2, 0, 1)
    return out + conv.bias.astype(x.dtype) if conv.use_bias else out


class ConcatConv2d(eqx.Module):
    """A 2-D convolution whose input has the time ``t`` as an extra (first) channel.

    The convolution is computed as im2col and one matrix product (``im2col=True``, default)
    or by XLA's convolution (``im2col=False``); both use the same parameters (an
    ``eqx.nn.Conv2d`` of ``in_channels + 1`` input channels) and agree to rounding. Inside an
    ODE solve on a CPU the matrix product is the fast one: XLA:CPU keeps its fast convolution
    kernels only outside loops, and inside the solver's ``while_loop`` a convolution and its
    VJP run several times slower (``docs/architecture.md`` has the measurement). On a GPU,
    where convolutions are library kernels, ``im2col=False`` may be the faster choice (not
    measured here).

    Args:
        in_channels: Channels of ``x`` (without the time channel).
        out_channels: Output channels.
        kernel_size: Kernel size (odd sizes keep the spatial shape with the default padding).
        padding: Zero padding, default ``kernel_size // 2`` ("same" for odd kernels).
        im2col: Compute the convolution as im2col + matrix product (default) or with
            ``jax.lax.conv``.
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
    im2col: bool = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int | None = None, *, im2col: bool = True, key: PRNGKeyArray):
        owner = "ConcatConv2d"
        in_channels = check_int(owner, "in_channels", in_channels)
        out_channels = check_int(owner, "out_channels", out_channels)
        kernel_size = check_int(owner, "kernel_size", kernel_size)
        if padding is None:
            padding = kernel_size // 2
        padding = check_int(owner, "padding", padding, minimum=0)
        self.conv = eqx.nn.Conv2d(
            in_channels + 1, out_channels, kernel_size, padding=padding, key=key
        )
        self.im2col = check_bool(owner, "im2col", im2col)

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "channels height width"]
    ) -> Float[Array, "out_channels height2 width2"]:
        tt = jnp.full((1,) + x.shape[1:], jnp.asarray(t, x.dtype), x.dtype)
        xt = jnp.concatenate([tt, x], axis=0)
        return _conv_im2col(self.conv, xt) if self.im2col else self.conv(xt)


class ConvField(eqx.Module):
    """The paper's ODE-Net vector field for images (section 3), channels-first.

    ``GroupNorm → ReLU → conv 3×3 (t as an extra channel) → GroupNorm → ReLU → conv 3×3 (t as
    an extra channel) → GroupNorm``, on a single example of shape ``(C, H, W)``; the output
    has the same shape. Use ``jax.vmap`` for batches, or :class:`BatchField` to solve a batch
    as one state. The convolutions are :class:`ConcatConv2d` layers, computed as im2col and
    matrix products by default (the fast form inside an ODE solve on a CPU).

    Args:
        channels: Number of channels ``C`` (64 in the paper).
        groups: Groups of the GroupNorms, default ``min(32, channels)``; must divide
            ``channels``.
        kernel_size: Convolution kernel size (odd; default 3).
        im2col: See :class:`ConcatConv2d` (default ``True``).
        key: PRNG key of the initialisation.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import BatchField, ConvField

        field = ConvField(4, groups=2, key=jax.random.key(0))
        images = jnp.ones((3, 4, 8, 8))  # a batch of 3
        out = jax.vmap(lambda y: field(0.0, y, None))(images)
        out.shape  # (3, 4, 8, 8)
        sol = nde.odeint(BatchField(field), images, jnp.array([0.0, 1.0]))  # one state
        ```
    """

    norm1: eqx.nn.GroupNorm
    conv1: ConcatConv2d
    norm2: eqx.nn.GroupNorm
    conv2: ConcatConv2d
    norm3: eqx.nn.GroupNorm
    channels: int = eqx.field(static=True)

    def __init__(self, channels: int, *, groups: int | None = None, kernel_size: int = 3,
                 im2col: bool = True, key: PRNGKeyArray):
        owner = "ConvField"
        channels = check_int(owner, "channels", channels)
        groups = check_int(owner, "groups", min(32, channels) if groups is None else groups)
        if channels % groups != 0:
            raise ValueError(f"ConvField: `groups` ({groups}) must divide `channels` ({channels}).")
        kernel_size = check_int(owner, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"ConvField: `kernel_size` must be odd to keep the image shape, got {kernel_size}."
            )
        k1, k2 = jax.random.split(key)
        conv = dict(im2col=im2col)
        self.norm1 = eqx.nn.GroupNorm(groups, channels)
        self.conv1 = ConcatConv2d(channels, channels, kernel_size, key=k1, **conv)
        self.norm2 = eqx.nn.GroupNorm(groups, channels)
        self.conv2 = ConcatConv2d(channels, channels, kernel_size, key=k2, **conv)
        self.norm3 = eqx.nn.GroupNorm(groups, channels)
        self.channels = channels

    def __call__(self, t: Float[ArrayLike, ""], y: Float[Array, "channels height width"],
                 args: PyTree = None) -> Float[Array, "channels height width"]:
        if y.ndim != 3 or y.shape[0] != self.channels:
            raise ValueError(
                f"ConvField: `y` must be a single image of shape ({self.channels}, H, W) "
                f"(channels first), got shape {y.shape}.{_VMAP_HINT}"
            )
        h = jax.nn.relu(self.norm1(y))
        h = self.conv1(t, h)
        h = jax.nn.relu(self.norm2(h))
        h = self.conv2(t, h)
        return self.norm3(h).astype(y.dtype)


class BatchField(eqx.Module):
    """A per-example field applied to a whole batch: ``jax.vmap`` over the state's axis 0.

    ``odeint(BatchField(field), batch, ts)`` solves the batch ``(B, ...)`` as *one* ODE state,
    with one shared step size and one NFE per batch, as the paper's torchdiffeq code does (its
    MNIST ODE-Net and the CNF figures). The error norm is then taken over the whole batch.
    ``jax.vmap`` of the solve instead gives every sample its own step sizes (each is as cheap
    as it can be, but the batch waits for its slowest sample). ``t`` and ``args`` are shared
    by the batch.

    Args:
        field: A vector field ``field(t, y, args)`` on one example.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import BatchField, MLPField

        field = MLPField(2, width=8, depth=1, key=jax.random.key(0))
        sol = nde.odeint(BatchField(field), jnp.ones((16, 2)), jnp.array([0.0, 1.0]))
        sol.ys.shape      # (2, 16, 2)
        sol.stats["nfe"]  # one number for the whole batch
        ```
    """

    field: Callable

    def __init__(self, field: Callable):
        self.field = check_callable("BatchField", "field", field, "field(t, y, args)")

    def __call__(self, t: Float[ArrayLike, ""], y: PyTree[Array], args: PyTree = None):
        return jax.vmap(self.field, in_axes=(None, 0, None))(t, y, args)
