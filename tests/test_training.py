"""Tests for neuralode.training: train step, exact resume, atomic checkpoints, metrics, sharding."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    OPTIMIZER,
    REPO_ROOT,
    assert_trees_equal,
    child_env,
    read_jsonl,
)
from helpers import make_mlp as make_model
from helpers import regression_batch as batch_fn
from helpers import regression_loss as loss_fn

from neuralode import training


def make_trainer(run_dir, **kwargs):
    kwargs.setdefault("checkpoint_every", 5)
    kwargs.setdefault("log_every", 1)
    kwargs.setdefault("progress", False)
    return training.Trainer(loss_fn, OPTIMIZER, batch_fn, run_dir=run_dir, **kwargs)


def read_metrics(run_dir):
    return read_jsonl(pathlib.Path(run_dir) / training.METRICS_NAME)


class Kill(Exception):
    pass


def kill_at(step):
    def callback(state, metrics):
        if state.step == step:
            raise Kill(f"killed after step {step}")

    return callback


# ---------------------------------------------------------------------------------------------


def test_train_step_decreases_loss():
    model = make_model()
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = training.make_train_step(loss_fn, optimizer)
    batch = batch_fn(0, jax.random.key(1))
    losses = []
    for i in range(30):
        model, opt_state, loss, aux = step(model, opt_state, batch, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert int(aux["nfe"]) == 7
    # has_aux=False: the loss alone, aux is {}
    plain = training.make_train_step(lambda m, b, k: loss_fn(m, b, k)[0], optimizer, has_aux=False)
    *_, aux = plain(model, opt_state, batch, jax.random.key(0))
    assert aux == {}
    bad = training.make_train_step(lambda m, b, k: loss_fn(m, b, k)[0], optimizer)
    with pytest.raises(TypeError, match="has_aux=False"):
        bad(model, opt_state, batch, jax.random.key(0))
    with pytest.raises(TypeError, match="optimizer"):
        training.make_train_step(loss_fn, object())


def test_step_keys_and_seeding():
    a = training.step_keys(3, 10)
    b = training.step_keys(3, 10)
    c = training.step_keys(3, 11)
    data = lambda k: np.asarray(jax.random.key_data(k))
    np.testing.assert_array_equal(data(a[0]), data(b[0]))
    assert not np.array_equal(data(a[0]), data(a[1]))
    assert not np.array_equal(data(a[0]), data(c[0]))
    k = training.seed_everything(5)
    np.testing.assert_array_equal(data(k), data(jax.random.key(5)))
    x1 = np.random.rand()  # noqa: NPY002 (checks the global generator is seeded)
    training.seed_everything(5)
    assert np.random.rand() == x1  # noqa: NPY002
    with pytest.raises(ValueError, match="seed"):
        training.seed_everything(-1)


def test_kill_and_resume_is_bit_exact(tmp_path):
    num_steps = 12
    full = make_trainer(tmp_path / "full").fit(make_model(), num_steps)

    # killed after step 8: the last checkpoint is at step 5, so steps 6-8 are redone
    run = tmp_path / "killed"
    with pytest.raises(Kill):
        make_trainer(run, callbacks=[kill_at(8)]).fit(make_model(), num_steps)
    _, meta = training.load_checkpoint(run / training.CHECKPOINT_NAME, (full.model, full.opt_state))
    assert meta["step"] == 5
    assert [m["step"] for m in read_metrics(run)] == list(range(1, 9))

    resumed = make_trainer(run).fit(make_model(), num_steps)  # a fresh Trainer, fresh model
    assert resumed.step == full.step == num_steps
    assert_trees_equal(
        eqx.filter(resumed.model, eqx.is_array), eqx.filter(full.model, eqx.is_array)
    )
    assert_trees_equal(resumed.opt_state, full.opt_state)
    # metrics of the redone steps are not duplicated, and equal the uninterrupted run's
    killed_metrics, full_metrics = read_metrics(run), read_metrics(tmp_path / "full")
    assert [m["step"] for m in killed_metrics] == list(range(1, num_steps + 1))
    assert [m["loss"] for m in killed_metrics] == [m["loss"] for m in full_metrics]

    # a second kill-free restart of a finished run is a no-op returning the final state
    again = make_trainer(run).fit(make_model(), num_steps)
    assert again.step == num_steps
    assert_trees_equal(eqx.filter(again.model, eqx.is_array), eqx.filter(full.model, eqx.is_array))


def test_resume_false_and_seed_mismatch(tmp_path):
    make_trainer(tmp_path, checkpoint_every=2).fit(make_model(), 2)
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        make_trainer(tmp_path, seed=1).fit(make_model(), 4)
    fresh = make_trainer(tmp_path, seed=1).fit(make_model(), 2, resume=False)
    assert fresh.step == 2
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]


def test_atomic_checkpoint_survives_crash_during_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.eqx"
    good = {"w": jnp.arange(4.0, dtype=jnp.float32), "b": jnp.ones((), jnp.int32)}
    training.save_checkpoint(path, good, {"step": 5})

    real = eqx.tree_serialise_leaves

    def crash_midway(f, tree, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk on fire")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", crash_midway)
    newer = {"w": jnp.zeros(4, jnp.float32), "b": jnp.zeros((), jnp.int32)}
    with pytest.raises(OSError, match="disk on fire"):
        training.save_checkpoint(path, newer, {"step": 10})
    monkeypatch.setattr(eqx, "tree_serialise_leaves", real)

    tree, meta = training.load_checkpoint(path, newer)
    assert meta == {"step": 5}
    assert_trees_equal(tree, good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.eqx"]  # no temp file left


def test_trainer_crash_in_checkpoint_keeps_last_good_one(tmp_path, monkeypatch):
    real = eqx.tree_serialise_leaves
    calls = []

    def crash_on_second(f, tree, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x93NUMPY garbage")
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write
        return real(f, tree, *args, **kwargs)

    monkeypatch.setattr(eqx, "tree_serialise_leaves", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path).fit(make_model(), 10)
    monkeypatch.setattr(eqx, "tree_serialise_leaves", real)
    resumed = make_trainer(tmp_path).fit(make_model(), 10)
    full = make_trainer(tmp_path / "full").fit(make_model(), 10)
    assert_trees_equal(
        eqx.filter(resumed.model, eqx.is_array), eqx.filter(full.model, eqx.is_array)
    )


def test_load_checkpoint_errors(tmp_path):
    path = tmp_path / "bad.eqx"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.eqx.*not a neuralode checkpoint"):
        training.load_checkpoint(path, {"w": jnp.zeros(3)})
    training.save_checkpoint(path, {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"bad\.eqx.*does not match"):
        training.load_checkpoint(path, {"w": jnp.zeros(4)})
    with pytest.raises(FileNotFoundError):
        training.load_checkpoint(tmp_path / "missing.eqx", {"w": jnp.zeros(3)})


def test_checkpoints_from_before_checksums_still_load(tmp_path):
    path = tmp_path / "v1.eqx"
    with open(path, "wb") as f:  # the v1 layout: magic, metadata line, leaves
        f.write(b"NEURALODE-CHECKPOINT v1\n" + b'{"step": 4}\n')
        eqx.tree_serialise_leaves(f, {"w": jnp.arange(3.0)})
    tree, meta = training.load_checkpoint(path, {"w": jnp.zeros(3)})
    assert meta == {"step": 4} and tree["w"].tolist() == [0.0, 1.0, 2.0]
    training.save_checkpoint(path, {"w": jnp.arange(3.0)}, {"step": 4})
    assert path.read_bytes().startswith(b"NEURALODE-CHECKPOINT v2\n")


def test_metrics_and_config(tmp_path):
    trainer = make_trainer(tmp_path, log_every=2, config={"lr": 1e-2, "model": "mlp"})
    trainer.fit(make_model(), 5)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 5]  # every log_every steps and the last
    for r in records:
        assert isinstance(r["loss"], float) and np.isfinite(r["loss"])
        assert r["nfe"] == 7  # scalar aux entries are logged
        assert "vec" not in r  # non-scalar ones are not
        assert r["steps_per_sec"] > 0 and r["time"] >= 0
    assert records == trainer.history
    config = json.loads((tmp_path / training.CONFIG_NAME).read_text())
    assert config["config"] == {"lr": 1e-2, "model": "mlp"}
    assert config["trainer"]["seed"] == 0 and config["trainer"]["num_steps"] == 5
    assert (tmp_path / training.CHECKPOINT_NAME).is_file()


def test_callback_can_stop_and_progress_bar_runs(tmp_path, capsys):
    pytest.importorskip("tqdm")
    stop_at_3 = lambda state, metrics: state.step == 3
    state = make_trainer(tmp_path, callbacks=[stop_at_3], progress=True).fit(make_model(), 10)
    assert state.step == 3
    _, meta = training.load_checkpoint(
        tmp_path / training.CHECKPOINT_NAME, (state.model, state.opt_state)
    )
    assert meta["step"] == 3  # stopping writes a checkpoint
    assert "nfe" in capsys.readouterr().err


def test_fit_shortcut_and_argument_errors(tmp_path):
    state = training.fit(make_model(), loss_fn, optax.sgd(1e-2), batch_fn, 3, progress=False)
    assert state.step == 3
    with pytest.raises(ValueError, match="log_every"):
        make_trainer(tmp_path, log_every=0)
    with pytest.raises(TypeError, match="batch_fn"):
        training.Trainer(loss_fn, optax.sgd(1e-2), None)
    with pytest.raises(TypeError, match="num_steps"):
        make_trainer(tmp_path).fit(make_model(), 2.5)


def test_shard_batch_single_device_and_errors():
    mesh = training.make_mesh()
    n = len(jax.devices())
    x = training.shard_batch({"x": jnp.ones((2 * n, 3))}, mesh)["x"]
    assert len(x.sharding.device_set) == n
    with pytest.raises(ValueError, match="leading batch axis"):
        training.shard_batch({"s": jnp.ones(())}, mesh)
    w = training.replicate(jnp.ones(3), mesh)
    assert w.sharding.is_fully_replicated


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, tempfile
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    from neuralode import training

    assert len(jax.devices()) == 4, jax.devices()
    mesh = training.make_mesh()

    def loss_fn(model, batch, key):
        x, y = batch
        return jnp.mean((jax.vmap(model)(x) - y) ** 2), {"nfe": jnp.asarray(3)}

    def batch_fn(step, key):
        x = jax.random.normal(key, (8, 3), jnp.float32)
        return x, jnp.tanh(x[:, :2])

    model = eqx.nn.MLP(3, 2, 16, 2, key=jax.random.key(0))
    optimizer = optax.adam(1e-2)
    step = training.make_train_step(loss_fn, optimizer)
    m1 = model
    s1 = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    m2, s2 = training.replicate((m1, s1), mesh)
    losses1, losses2 = [], []
    for i in range(3):
        batch_key, loss_key = training.step_keys(0, i)
        batch = batch_fn(i, batch_key)
        m1, s1, l1, _ = step(m1, s1, batch, loss_key)
        sharded = training.shard_batch(batch, mesh)
        assert len(sharded[0].sharding.device_set) == 4
        assert sharded[0].addressable_shards[0].data.shape == (2, 3)
        m2, s2, l2, _ = step(m2, s2, sharded, loss_key)
        losses1.append(float(l1)); losses2.append(float(l2))

    def max_diff(a, b):
        pairs = zip(jax.tree.leaves(eqx.filter(a, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(b, eqx.is_array)))
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)

    leaves2 = jax.tree.leaves(eqx.filter(m2, eqx.is_array))
    try:
        training.shard_batch((jnp.zeros((6, 3)),), mesh)
        error = None
    except ValueError as e:
        error = str(e)

    with tempfile.TemporaryDirectory() as d:
        kw = dict(progress=False, log_every=1, checkpoint_every=2)
        t1 = training.Trainer(loss_fn, optimizer, batch_fn, run_dir=d + "/a", **kw)
        t2 = training.Trainer(loss_fn, optimizer, batch_fn, run_dir=d + "/b", mesh=mesh, **kw)
        r1 = t1.fit(model, 4)
        r2 = t2.fit(model, 4)
        # the sharded run's checkpoint resumes (single-device) to the same parameters
        r3 = training.Trainer(loss_fn, optimizer, batch_fn, run_dir=d + "/b", **kw).fit(model, 4)
    print("RESULT " + json.dumps({
        "step_diff": max_diff(m1, m2),
        "opt_diff": max_diff(s1, s2),
        "loss_diff": max(abs(a - b) for a, b in zip(losses1, losses2)),
        "replicated": all(x.sharding.is_fully_replicated for x in leaves2),
        "num_devices_model": len(leaves2[0].sharding.device_set),
        "error": error,
        "trainer_diff": max_diff(r1.model, r2.model),
        "resume_diff": max_diff(r2.model, r3.model),
        "dtype": str(leaves2[0].dtype),
    }))
    """
)


def test_sharded_step_matches_single_device():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = child_env(XLA_FLAGS=flags.strip())
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["dtype"] == "float32"
    assert result["replicated"] and result["num_devices_model"] == 4
    # float32: the sharded mean reduces in a different order, so allow rounding differences
    assert result["step_diff"] <= 1e-6
    assert result["opt_diff"] <= 1e-6
    assert result["loss_diff"] <= 1e-6
    assert result["trainer_diff"] <= 1e-6
    assert result["resume_diff"] <= 1e-6
    assert "not divisible by the number of devices (4)" in result["error"]


def test_param_average_tracks_ema_of_iterates_and_survives_resume(tmp_path):
    decay = 0.9
    optimizer = optax.chain(optax.sgd(0.1), training.param_average(decay))
    model = make_model()
    params = eqx.filter(model, eqx.is_inexact_array)
    state = optimizer.init(params)
    step = training.make_train_step(loss_fn, optimizer)
    iterates = []
    for i in range(6):
        model, state, _, _ = step(model, state, batch_fn(i, jax.random.key(i)), jax.random.key(i))
        iterates.append(eqx.filter(model, eqx.is_inexact_array))
    # The reference recursion, written out: avg_k = d_k avg_{k-1} + (1 - d_k) theta_k.
    expect = params
    for k, theta in enumerate(iterates):
        d = min(decay, (1 + k) / (10 + k))
        expect = jax.tree.map(lambda a, p, d=d: d * a + (1 - d) * p, expect, theta)
    avg = training.averaged_model(state, model)
    for x, y in zip(
        jax.tree.leaves(eqx.filter(avg, eqx.is_array)), jax.tree.leaves(expect), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # It is not the last iterate (the average lags behind) ...
    last = jax.tree.leaves(iterates[-1])[0]
    assert not np.allclose(jax.tree.leaves(eqx.filter(avg, eqx.is_array))[0], last)
    # ... updates pass through unchanged: same trajectory as the plain optimizer.
    plain = training.make_train_step(loss_fn, optax.sgd(0.1))
    m2, s2 = make_model(), optax.sgd(0.1).init(params)
    for i in range(6):
        m2, s2, _, _ = plain(m2, s2, batch_fn(i, jax.random.key(i)), jax.random.key(i))
    assert_trees_equal(eqx.filter(m2, eqx.is_array), eqx.filter(model, eqx.is_array))

    # The average is part of the checkpointed optimiser state: a killed run resumes it exactly.
    def trainer(run_dir, **kw):
        return training.Trainer(
            loss_fn, optimizer, batch_fn, run_dir=run_dir, checkpoint_every=3, progress=False, **kw
        )

    full = trainer(tmp_path / "full").fit(make_model(), 8)
    with pytest.raises(Kill):
        trainer(tmp_path / "killed", callbacks=[kill_at(5)]).fit(make_model(), 8)
    resumed = trainer(tmp_path / "killed").fit(make_model(), 8)
    assert_trees_equal(
        eqx.filter(training.averaged_model(resumed.opt_state, resumed.model), eqx.is_array),
        eqx.filter(training.averaged_model(full.opt_state, full.model), eqx.is_array),
    )

    with pytest.raises(ValueError, match="param_average"):
        training.averaged_model(optax.adam(1e-2).init(params), model)
    with pytest.raises(ValueError, match="`decay`"):
        training.param_average(1.5)
    with pytest.raises(ValueError, match="params"):
        training.param_average(0.9).update(params, training.param_average(0.9).init(params))


def test_donation_changes_nothing_numerically(tmp_path):
    optimizer = optax.adam(1e-2)
    kept = []

    def keep(state, metrics):  # the Trainer's own buffers, as callbacks see them
        kept.append(state.model.layers[0].weight)

    def run(donate, callbacks=()):
        trainer = training.Trainer(loss_fn, optimizer, batch_fn, progress=False, donate=donate,
                                   callbacks=callbacks, log_every=1)
        return trainer.fit(model, 6), trainer.history

    model = make_model()
    donated, log_donated = run(True, [keep])
    plain, log_plain = run(False)
    arrays = lambda tree: eqx.filter(tree, eqx.is_array)
    assert_trees_equal(arrays(donated.model), arrays(plain.model))
    assert_trees_equal(donated.opt_state, plain.opt_state)
    assert [r["loss"] for r in log_donated] == [r["loss"] for r in log_plain]
    # donation really happened (a step's input buffers are reused by the next step) ...
    assert kept[0].is_deleted() and not kept[-1].is_deleted()
    # ... but never to the caller's model
    assert not model.layers[0].weight.is_deleted()
    # the same for make_train_step
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    batch, key = batch_fn(0, jax.random.key(1)), jax.random.key(2)
    expect = training.make_train_step(loss_fn, optimizer)(model, opt_state, batch, key)
    copies = jax.tree.map(
        lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, (model, opt_state)
    )
    got = training.make_train_step(loss_fn, optimizer, donate=True)(*copies, batch, key)
    assert copies[0].layers[0].weight.is_deleted()
    assert_trees_equal(arrays(got), arrays(expect))


def test_a_second_trainer_does_not_retrace():
    traces = []

    def counting_loss(model, batch, key):
        traces.append(1)  # runs once per trace, never per step
        return loss_fn(model, batch, key)

    optimizer = optax.sgd(1e-2)
    make = lambda: training.Trainer(counting_loss, optimizer, batch_fn, progress=False)
    make().fit(make_model(), 3)
    after_first = len(traces)
    assert after_first >= 1
    make().fit(make_model(), 3)
    assert len(traces) == after_first  # the second Trainer reuses the compiled step
    step = training.make_train_step(counting_loss, optimizer)
    state = (make_model(), optimizer.init(eqx.filter(make_model(), eqx.is_inexact_array)))
    step(*state, batch_fn(0, jax.random.key(0)), jax.random.key(1))
    with_plain_step = len(traces)
    training.make_train_step(counting_loss, optimizer)(
        *state, batch_fn(1, jax.random.key(0)), jax.random.key(1)
    )
    assert len(traces) == with_plain_step


def test_keeps_the_last_checkpoints_and_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        make_trainer(tmp_path, checkpoint_every=1, keep_checkpoints=2).fit(make_model(), 5)
    finally:
        os.umask(old)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-4.eqx", "checkpoint-5.eqx", "checkpoint.eqx", "config.json",
                     "metrics.jsonl"]
    like = (make_model(), optax.adam(1e-2).init(eqx.filter(make_model(), eqx.is_inexact_array)))
    _, meta = training.load_checkpoint(tmp_path / "checkpoint-4.eqx", like)
    assert meta["step"] == 4
    for name in names:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    with pytest.raises(ValueError, match="keep_checkpoints"):
        make_trainer(tmp_path, keep_checkpoints=0)
    with pytest.raises(TypeError, match="donate"):
        make_trainer(tmp_path, donate="yes")
