"""Vector fields of neuralode.nn: shapes, time conditioning, formulas, validation."""

import inspect
import re
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralode as nde
from neuralode import nn


def _key(i):
    return jax.random.key(i)


@eqx.filter_jit
def _at_two_times(field, y, t_a, t_b):
    return field(t_a, y, None), field(t_b, y, None)


def test_mlp_field_shapes_and_time_conditioning():
    y = jnp.array([0.3, -0.2, 0.5])
    for time in ("all", "first"):
        field = nn.MLPField(3, width=5, depth=2, time=time, key=_key(0))
        out, out1 = _at_two_times(field, y, 0.0, 1.0)
        assert out.shape == (3,) and out.dtype == y.dtype
        assert not np.allclose(out, out1), "output must depend on t"
    all_t = nn.MLPField(3, width=5, depth=2, time="all", key=_key(0))
    first_t = nn.MLPField(3, width=5, depth=2, time="first", key=_key(0))
    assert all(isinstance(layer, nn.ConcatLinear) for layer in all_t.layers)
    assert isinstance(first_t.layers[0], nn.ConcatLinear)
    assert not any(isinstance(layer, nn.ConcatLinear) for layer in first_t.layers[1:])
    assert nn.MLPField(3, 5, 1, out_size=7, key=_key(0))(0.0, y).shape == (7,)
    # float32 state with float64 parameters: output follows the state's dtype.
    assert all_t(0.0, y.astype(jnp.float32)).dtype == jnp.float32


def test_concat_linear_formula():
    layer = nn.ConcatLinear(2, 3, key=_key(1))
    x, t = jnp.array([0.4, -1.0]), 0.7
    expected = layer.linear.weight @ jnp.array([t, 0.4, -1.0]) + layer.linear.bias
    np.testing.assert_allclose(layer(t, x), expected, rtol=1e-12)


def test_concat_squash_linear_formula():
    layer = nn.ConcatSquashLinear(2, 4, key=_key(2))
    x, t = jnp.array([0.4, -1.0]), 0.7
    lin = layer.linear.weight @ x + layer.linear.bias
    gate = jax.nn.sigmoid(layer.gate.weight[:, 0] * t + layer.gate.bias)
    shift = layer.hyper_bias.weight[:, 0] * t
    np.testing.assert_allclose(layer(t, x), lin * gate + shift, rtol=1e-12)


def test_concat_squash_field():
    field = nn.ConcatSquashField(2, width=6, depth=2, key=_key(3))
    out0, out1 = _at_two_times(field, jnp.array([0.1, 0.2]), 0.0, 0.5)
    assert out0.shape == (2,)
    assert not np.allclose(out0, out1)
    assert len(field.layers) == 3


def test_conv_field_shapes_time_and_batch():
    field = nn.ConvField(4, groups=2, key=_key(4))
    img = jax.random.normal(_key(5), (4, 6, 5))
    batch = jnp.stack([img, img, 2 * img])
    times = jnp.array([0.0, 0.9, 0.3])

    @eqx.filter_jit
    def run(field):
        outs = jax.vmap(lambda t, y: field(t, y, None))(times, batch)
        return outs, field(0.3, 2 * img, None)

    outs, out_single = run(field)
    assert outs.shape == (3, 4, 6, 5) and outs.dtype == img.dtype
    assert not np.allclose(outs[0], outs[1]), "t must enter as an extra channel"
    # The convolutions see t as an extra input channel.
    assert field.conv1.conv.weight.shape == (4, 5, 3, 3)
    np.testing.assert_allclose(outs[2], out_single, rtol=1e-10, atol=1e-12)
    # The last GroupNorm normalises each group (affine parameters start at 1 and 0).
    np.testing.assert_allclose(outs[0].reshape(2, -1).mean(axis=1), 0.0, atol=1e-8)


def test_conv_field_in_odeint():
    field = nn.ConvField(2, groups=1, key=_key(6))
    img = jax.random.normal(_key(7), (2, 4, 4))
    # A fixed-step solve keeps the compilation small; adaptive solves take the same path.
    model = nn.NeuralODE(field, t1=0.5, solve=nn.SolveOptions(solver=nde.Heun(), dt0=0.25))
    y1 = eqx.filter_jit(lambda m, y: jax.vmap(m)(y))(model, jnp.stack([img, -img]))
    assert y1.shape == (2, 2, 4, 4)
    assert bool(jnp.all(jnp.isfinite(y1)))


def test_concat_conv2d():
    conv = nn.ConcatConv2d(3, 5, key=_key(8))
    assert jax.eval_shape(conv, 0.0, jnp.ones((3, 7, 7))).shape == (5, 7, 7)
    wide = nn.ConcatConv2d(3, 5, kernel_size=5, padding=1, key=_key(8))
    assert jax.eval_shape(wide, 0.0, jnp.ones((3, 7, 7))).shape == (5, 5, 5)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_im2col_convolution_equals_xla_convolution(kernel_size):
    """The default im2col + matmul form computes the XLA convolution's function (values and
    derivatives, to rounding) with the same parameters, alone, batched and inside a solve."""
    fast = nn.ConvField(6, groups=3, kernel_size=kernel_size, key=_key(12))
    plain = nn.ConvField(6, groups=3, kernel_size=kernel_size, im2col=False, key=_key(12))
    assert fast.conv1.im2col and not plain.conv1.im2col
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)  # identical parameters
    batch = jax.random.normal(_key(13), (3, 6, 5, 7))
    cotangent = jax.random.normal(_key(14), batch.shape)

    @eqx.filter_jit
    def run(field):
        out, vjp = jax.vjp(lambda f, y: nn.BatchField(f)(0.4, y, None), field, batch)
        grads = vjp(cotangent)
        sol = nde.odeint(nn.BatchField(field), batch, jnp.array([0.0, 0.5]), rtol=1e-9, atol=1e-9)
        return out, grads, sol.ys[-1]

    for x, y in zip(jax.tree.leaves(run(fast)), jax.tree.leaves(run(plain)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-10)


def test_batch_field_is_one_state_with_one_step_size():
    field = nn.MLPField(2, width=8, depth=1, key=_key(15))
    batch = jax.random.normal(_key(16), (5, 2))
    np.testing.assert_allclose(
        nn.BatchField(field)(0.3, batch, None), jax.vmap(lambda y: field(0.3, y, None))(batch)
    )
    ts = jnp.linspace(0.0, 1.0, 3)
    one = nde.odeint(nn.BatchField(field), batch, ts, rtol=1e-10, atol=1e-10)
    each = jax.vmap(lambda y: nde.odeint(field, y, ts, rtol=1e-10, atol=1e-10))(batch)
    assert one.ys.shape == (3, 5, 2) and one.stats["nfe"].shape == ()
    assert each.stats["nfe"].shape == (5,)  # one NFE per sample when the solve is vmapped
    np.testing.assert_allclose(one.ys, jnp.swapaxes(each.ys, 0, 1), rtol=1e-8, atol=1e-10)
    with pytest.raises(TypeError, match="BatchField: `field`"):
        nn.BatchField(nn.MLPField)


def test_planar_cnf_field_divergence_is_exact():
    field = nn.PlanarCNFField(3, width=4, hyper_width=8, key=_key(9))
    z = jnp.array([0.3, -0.7, 1.1])

    @eqx.filter_jit
    def run(field, t):
        f, div = field.value_and_divergence(t, z, None)
        jac = jax.jacfwd(lambda zz: field(t, zz, None))(z)
        return f, div, jac, field.parameters(t)

    for t in (0.0, 0.6):
        f, div, jac, (w, u, b, gate) = run(field, t)
        np.testing.assert_allclose(div, jnp.trace(jac), rtol=1e-10)
        expected = sum(gate[n] * u[n] * jnp.tanh(w[n] @ z + b[n]) for n in range(4))
        np.testing.assert_allclose(f, expected, rtol=1e-10)
        assert bool(jnp.all((gate > 0) & (gate < 1)))


def test_hutchinson_noise():
    like = {"a": jnp.zeros((2000,)), "b": jnp.zeros((3, 4), jnp.float32)}
    g = nn.hutchinson_noise(_key(10), like)
    assert g["a"].shape == (2000,) and g["b"].dtype == jnp.float32
    assert abs(float(jnp.mean(g["a"] ** 2)) - 1.0) < 0.1
    r = nn.hutchinson_noise(_key(11), like, "rademacher")
    assert set(np.unique(np.asarray(r["a"]))) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="noise"):
        nn.hutchinson_noise(_key(0), like, "uniform")


def test_field_validation_errors():
    with pytest.raises(ValueError, match="time"):
        nn.MLPField(2, 4, 1, time="middle", key=_key(0))
    with pytest.raises(ValueError, match="width"):
        nn.MLPField(2, 0, 1, key=_key(0))
    with pytest.raises(TypeError, match="width"):
        nn.MLPField(2, 4.0, 1, key=_key(0))
    with pytest.raises(ValueError, match="shape"):
        nn.MLPField(2, 4, 1, key=_key(0))(0.0, jnp.ones(3), None)
    with pytest.raises(ValueError, match="groups"):
        nn.ConvField(6, groups=4, key=_key(0))
    with pytest.raises(ValueError, match="kernel_size"):
        nn.ConvField(4, groups=2, kernel_size=4, key=_key(0))
    with pytest.raises(ValueError, match="channels first"):
        nn.ConvField(4, groups=2, key=_key(0))(0.0, jnp.ones((6, 6, 4)), None)


def _docstring_examples():
    blocks = []
    for name in nn.__all__:
        obj = getattr(nn, name)
        docs = [inspect.getdoc(obj) or ""]
        if inspect.isclass(obj):
            docs += [inspect.getdoc(m) or "" for _, m in inspect.getmembers(obj, callable)]
        for doc in docs:
            for block in re.findall(r"```python\n(.*?)```", doc, flags=re.S):
                blocks.append(pytest.param(textwrap.dedent(block), id=name))
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize("code", _docstring_examples())
def test_docstring_examples_run(code):
    exec(compile(code, "<docstring>", "exec"), {})


def test_modules_are_pytrees():
    field = nn.MLPField(2, 4, 1, key=_key(0))
    params = eqx.filter(field, eqx.is_inexact_array)
    assert len(jax.tree.leaves(params)) == 4
