"""Fault injection into neuralode.training.Trainer: what goes wrong must never lose work.

NaN/inf batches (skipped, never checkpointed), too many of them (the run stops with the last
good state), damaged checkpoints (detected; resume falls back to the previous one, exactly),
changed settings (refused), SIGKILL in the middle of a checkpoint write (exact resume, the
temporary file removed), and a failing sample on a forced 4-device mesh (a Python exception
within seconds, the last good state checkpointed).
"""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OPTIMIZER,
    assert_trees_equal,
    child_env,
    kill_when,
    read_jsonl,
    regression_batch,
)
from helpers import make_mlp as make_model
from helpers import regression_loss as loss_fn

from neuralode import training
from neuralode.training._errors import check_error_mode


def poisoned(bad: dict[int, float]):
    """A batch_fn whose batch at (0-based) step i has one input set to ``bad[i]``."""
    return functools.partial(regression_batch, bad=bad)


def make_trainer(run_dir, batch_fn=None, **kwargs):
    kwargs.setdefault("checkpoint_every", 1)
    kwargs.setdefault("log_every", 1)
    kwargs.setdefault("progress", False)
    return training.Trainer(
        loss_fn, OPTIMIZER, batch_fn or poisoned({}), run_dir=run_dir, **kwargs
    )


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), eqx.filter(tree, eqx.is_array))


def recorder(store):
    """Callback keeping a host copy of (model, opt_state) after every step."""

    def callback(state, metrics):
        store[state.step] = host_copy((state.model, state.opt_state))

    return callback


def like():
    model = make_model()
    return model, OPTIMIZER.init(eqx.filter(model, eqx.is_inexact_array))


def read_metrics(run_dir):
    return read_jsonl(pathlib.Path(run_dir) / training.METRICS_NAME)


def checkpoint_files(run_dir):
    return sorted(pathlib.Path(run_dir).glob("checkpoint*.eqx"))


class Kill(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Non-finite steps
# ---------------------------------------------------------------------------------------------


def test_nan_and_inf_batches_are_skipped_and_never_checkpointed(tmp_path):
    seen = {}
    trainer = make_trainer(
        tmp_path, poisoned({3: np.nan, 5: np.inf}), callbacks=[recorder(seen)]
    )
    with pytest.warns(RuntimeWarning, match="skipped") as caught:
        state = trainer.fit(make_model(), 8)
    assert state.step == 8
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [m.split(":")[0] for m in messages] == ["training step 4", "training step 6"]
    # Skipped steps leave model and optimiser state exactly as they were ...
    assert_trees_equal(seen[4], seen[3])
    assert_trees_equal(seen[6], seen[5])
    # ... and training goes on after them.
    assert not np.array_equal(seen[5][0].layers[0].weight, seen[4][0].layers[0].weight)
    records = read_metrics(tmp_path)
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert not np.isfinite(records[3]["loss"]) and not np.isfinite(records[5]["loss"])
    assert trainer.skipped_steps == 2
    # Every checkpoint on disk is finite, and the newest is the final state.
    files = checkpoint_files(tmp_path)
    assert files, "no checkpoint written"
    for path in files:
        (model, opt_state), meta = training.load_checkpoint(path, like())
        for leaf in jax.tree.leaves(eqx.filter((model, opt_state), eqx.is_inexact_array)):
            assert np.all(np.isfinite(leaf)), path
    (model, _), meta = training.load_checkpoint(tmp_path / training.CHECKPOINT_NAME, like())
    assert meta["step"] == 8 and meta["skipped_steps"] == 2
    assert_trees_equal(eqx.filter(model, eqx.is_array), seen[8][0])


def test_skipped_steps_resume_exactly(tmp_path):
    batch_fn = poisoned({2: np.nan})
    full = make_trainer(tmp_path / "full", batch_fn, checkpoint_every=2)
    with pytest.warns(RuntimeWarning, match="training step 3"):
        full_state = full.fit(make_model(), 7)

    def kill_at_5(state, metrics):
        if state.step == 5:
            raise Kill

    run = tmp_path / "killed"
    with pytest.warns(RuntimeWarning, match="training step 3"), pytest.raises(Kill):
        make_trainer(run, batch_fn, checkpoint_every=2, callbacks=[kill_at_5]).fit(
            make_model(), 7
        )
    resumed = make_trainer(run, batch_fn, checkpoint_every=2).fit(make_model(), 7)
    assert_trees_equal(host_copy(resumed.model), host_copy(full_state.model))
    assert_trees_equal(host_copy(resumed.opt_state), host_copy(full_state.opt_state))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "steps_per_sec")}
                        for r in rs]
    assert json.dumps(strip(read_metrics(run))) == json.dumps(strip(read_metrics(full.run_dir)))


def test_consecutive_nonfinite_steps_stop_with_the_last_good_state(tmp_path):
    seen = {}
    trainer = make_trainer(
        tmp_path,
        poisoned({i: np.nan for i in range(3, 100)}),
        checkpoint_every=5,
        max_nonfinite_steps=3,
        callbacks=[recorder(seen)],
    )
    with (
        pytest.warns(RuntimeWarning, match="skipped"),
        pytest.raises(training.TrainingError, match=r"stopped at step 6: 3 consecutive") as err,
    ):
        trainer.fit(make_model(), 20)
    assert err.value.step == 6
    assert err.value.checkpoint == tmp_path / training.CHECKPOINT_NAME
    (model, opt_state), meta = training.load_checkpoint(err.value.checkpoint, like())
    assert meta["step"] == 6 and meta["skipped_steps"] == 3
    assert_trees_equal(host_copy((model, opt_state)), seen[3])  # the last finite update


def test_nonfinite_model_is_never_checkpointed(tmp_path):
    model = make_model()
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, model.layers[0].bias.at[0].set(np.nan))
    with (
        pytest.warns(RuntimeWarning, match="skipped"),
        pytest.raises(training.TrainingError, match="refusing to checkpoint a model with NaN"),
    ):
        make_trainer(tmp_path).fit(model, 5)
    assert checkpoint_files(tmp_path) == []


def test_empty_batch_is_an_error(tmp_path):
    def batch_fn(step, key):
        n = 0 if step == 2 else 4
        return jnp.zeros((n, 2), jnp.float32), jnp.zeros((n, 1), jnp.float32)

    with pytest.raises(ValueError, match=r"empty batch at step 2: leaf \[0\] has shape \(0, 2\)"):
        make_trainer(tmp_path, batch_fn).fit(make_model(), 5)
    _, meta = training.load_checkpoint(tmp_path / training.CHECKPOINT_NAME, like())
    assert meta["step"] == 2


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------------


def _flip_bits(raw: bytes) -> bytes:
    data = bytearray(raw)
    rng = np.random.default_rng(0)
    start = len(data) // 2  # in the serialised arrays, past magic, checksum and metadata
    for pos in rng.choice(np.arange(start, len(data)), size=20, replace=False):
        data[pos] ^= 1 << int(rng.integers(8))
    return bytes(data)


DAMAGE = {
    "flipped_bits": _flip_bits,
    "truncated": lambda raw: raw[: 2 * len(raw) // 3],
    "garbage": lambda raw: np.random.default_rng(1).bytes(len(raw)),
}


def _damage(path: pathlib.Path, how: str) -> None:
    """Damage the file in place (a hard-linked copy under another name is damaged too)."""
    raw = path.read_bytes()
    with open(path, "r+b") as f:
        f.write(DAMAGE[how](raw))
        f.truncate()


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    full = make_trainer(tmp_path / "full", checkpoint_every=3).fit(make_model(), 9)
    run = tmp_path / "run"
    make_trainer(run, checkpoint_every=3).fit(make_model(), 6)
    newest = run / training.CHECKPOINT_NAME
    _damage(newest, how)
    step6 = run / "checkpoint-6.eqx"
    if not os.path.samefile(newest, step6):  # no hard links on this file system
        _damage(step6, how)

    with pytest.raises(training.CheckpointCorruptError, match=re.escape(repr(str(newest)))):
        training.load_checkpoint(newest, like())
    with pytest.warns(RuntimeWarning) as caught:
        resumed = make_trainer(run, checkpoint_every=3).fit(make_model(), 9)
    # one warning per damaged file name, each naming it and the checkpoint used instead
    warned = [str(w.message) for w in caught]
    assert any(m.startswith(f"checkpoint {str(newest)!r}") or m.startswith(repr(str(newest)))
               for m in warned), warned
    previous = f"Resuming from {str(run / 'checkpoint-3.eqx')!r} (step 3) instead."
    assert all(m.endswith(previous) for m in warned), warned

    assert_trees_equal(host_copy(resumed.model), host_copy(full.model))
    assert_trees_equal(host_copy(resumed.opt_state), host_copy(full.opt_state))
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 10))
    assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(tmp_path / "full")]
    training.load_checkpoint(newest, like())  # rewritten, valid again


def test_no_valid_checkpoint_is_an_error(tmp_path):
    make_trainer(tmp_path, checkpoint_every=2).fit(make_model(), 4)
    for path in checkpoint_files(tmp_path):
        path.write_bytes(b"\x00" * 64)
    with pytest.raises(training.CheckpointCorruptError, match="no valid checkpoint"):
        make_trainer(tmp_path).fit(make_model(), 6)


# ---------------------------------------------------------------------------------------------
# Changed settings
# ---------------------------------------------------------------------------------------------


def test_changed_settings_are_refused(tmp_path):
    config = {"lr": 0.01, "sizes": (2, 8), "model": "mlp"}
    make_trainer(tmp_path, config=config).fit(make_model(), 2)
    stored = (tmp_path / training.CONFIG_NAME).read_text()
    changed = {"lr": 0.02, "sizes": [2, 8], "model": "mlp", "extra": 1}
    with pytest.raises(
        ValueError, match=r"Changed: extra: \(absent\) -> 1; lr: 0\.01 -> 0\.02\. Use the"
    ):
        make_trainer(tmp_path, config=changed).fit(make_model(), 4)
    with pytest.raises(ValueError, match=r"Changed: seed: 0 -> 3\. "):
        make_trainer(tmp_path, config=config, seed=3).fit(make_model(), 4)
    assert (tmp_path / training.CONFIG_NAME).read_text() == stored  # not overwritten
    # The same settings (a tuple stored as a list is the same setting) resume.
    same = dict(config, sizes=[2, 8])
    assert make_trainer(tmp_path, config=same).fit(make_model(), 4).step == 4


# ---------------------------------------------------------------------------------------------
# SIGKILL during a checkpoint write
# ---------------------------------------------------------------------------------------------


CHILD = textwrap.dedent(
    """
    import hashlib, os, pathlib, sys, time
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    from neuralode import training
    from neuralode.training import _checkpoint

    mode, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])

    def loss_fn(model, batch, key):
        x, y = batch
        y = y + 0.01 * jax.random.normal(key, y.shape, y.dtype)
        return jnp.mean((jax.vmap(model)(x) - y) ** 2), {}

    def batch_fn(step, key):
        x = jax.random.normal(key, (16, 2), jnp.float32)
        return x, jnp.sin(x[:, :1])

    if mode == "kill":  # the 4th checkpoint write hangs half-way; the parent kills us there
        real_open, opened = _checkpoint._open_new, []

        class HalfThenHang:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)
            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                os.fsync(self.f.fileno())
                (run_dir / "WRITING").write_text("")
                time.sleep(600)

        def open_new(path):
            f = real_open(path)
            if path.name.startswith(".checkpoint.eqx."):
                opened.append(path)
                if len(opened) == 4:
                    return HalfThenHang(f)
            return f

        _checkpoint._open_new = open_new

    model = eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(0), dtype=jnp.float32)
    trainer = training.Trainer(loss_fn, optax.adam(1e-2), batch_fn, run_dir=run_dir,
                               checkpoint_every=1, log_every=1, progress=False)
    state = trainer.fit(model, 8)
    leaves = jax.tree.leaves(eqx.filter((state.model, state.opt_state), eqx.is_array))
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest()
    print("RESULT", state.step, digest)
    """
)


def _run_child(mode, run_dir):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(run_dir)],
        env=child_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))


def test_sigkill_during_checkpoint_write_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "kill", str(run)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:  # the 4th checkpoint write has begun: kill it there
        kill_when(proc, (run / "WRITING").exists, timeout=180,
                  output=lambda: proc.stdout.read().decode())
    finally:
        proc.stdout.close()
    temps = list(run.glob(".checkpoint.eqx.*.tmp"))
    assert len(temps) == 1, sorted(p.name for p in run.iterdir())  # the half-written file
    _, meta = training.load_checkpoint(run / training.CHECKPOINT_NAME, like())
    assert meta["step"] == 3  # the write of step 4 never completed

    resumed = _run_child("resume", run)
    assert not list(run.glob(".*.tmp"))  # cleaned up
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))
    assert resumed == _run_child("full", tmp_path / "full")  # bit for bit
    assert resumed.startswith("RESULT 8 ")


# ---------------------------------------------------------------------------------------------
# A failing sample, on one device and on a forced 4-device mesh
# ---------------------------------------------------------------------------------------------


MESH_CHILD = textwrap.dedent(
    """
    import json, pathlib, sys, time
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    import neuralode as nde
    from neuralode import training

    assert len(jax.devices()) == 4, jax.devices()
    root = pathlib.Path(sys.argv[1])

    class Decay(eqx.Module):
        rate: jax.Array

        def __call__(self, t, y, stiffness):
            return -self.rate * stiffness * y

    def loss_fn(model, batch, key):
        y0, stiffness = batch
        solve = lambda y, s: nde.odeint(model, y, jnp.array([0.0, 1.0]), s, max_steps=16).ys[-1]
        return jnp.mean(jax.vmap(solve)(y0, stiffness) ** 2), {}

    def batch_fn(step, key):  # sample 5 is stiff from step index 2 on: 16 steps are too few
        y0 = jax.random.normal(key, (8, 2), jnp.float32)
        return y0, jnp.ones(8, jnp.float32).at[5].set(1e4 if step >= 2 else 1.0)

    results = {}
    for name, mesh in (("one_device", None), ("mesh4", training.make_mesh())):
        run_dir, seen = root / name, {}

        def remember(state, metrics):
            seen["time"] = time.perf_counter()
            seen[state.step] = [np.array(x) for x in jax.tree.leaves(state.model)]

        trainer = training.Trainer(loss_fn, optax.sgd(1e-2), batch_fn, run_dir=run_dir,
                                   mesh=mesh, checkpoint_every=100, log_every=1,
                                   progress=False, callbacks=[remember])
        model = Decay(jnp.ones(2, jnp.float32))
        try:
            trainer.fit(model, 6)
            results[name] = {"raised": None}
            continue
        except Exception as e:
            seconds = time.perf_counter() - seen["time"]
            error = e
        (saved, _), meta = training.load_checkpoint(
            run_dir / training.CHECKPOINT_NAME,
            (model, optax.sgd(1e-2).init(eqx.filter(model, eqx.is_inexact_array))),
        )
        results[name] = {
            "raised": type(error).__name__,
            "message": str(error),
            "step": getattr(error, "step", None),
            "samples": getattr(error, "samples", None),
            "seconds": seconds,
            "checkpoint_step": meta["step"],
            "checkpoint_is_last_good": all(
                np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved), seen[2])
            ),
            "temp_files": [p.name for p in run_dir.glob(".*.tmp")],
        }
    print("RESULT " + json.dumps(results))
    """
)


def test_failing_sample_raises_quickly_on_one_device_and_on_a_4_device_mesh(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = child_env(XLA_FLAGS=flags.strip())
    proc = subprocess.run(
        [sys.executable, "-c", MESH_CHILD, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    # Before the fix the 4-device run died of an XLA all-reduce timeout (SIGABRT, ~60 s).
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line[len("RESULT ") :])
    for name in ("one_device", "mesh4"):
        r = results[name]
        assert r["raised"] == "TrainingError", (name, r)
        assert r["step"] == 3 and r["samples"] == [5], (name, r)
        assert "training step 3 failed: neuralode.odeint: the solver took `max_steps`" in (
            r["message"]
        ), r["message"]
        assert "sample(s) [5]" in r["message"] and "step 2" in r["message"]
        assert r["seconds"] < 10, (name, r["seconds"])
        # nothing lost: the state after the last good step is the checkpoint
        assert r["checkpoint_step"] == 2 and r["checkpoint_is_last_good"], (name, r)
        assert r["temp_files"] == []


# ---------------------------------------------------------------------------------------------
# TPU
# ---------------------------------------------------------------------------------------------


def test_tpu_requires_eqx_on_error_nan(monkeypatch):
    monkeypatch.delenv("EQX_ON_ERROR", raising=False)
    with pytest.raises(RuntimeError, match="EQX_ON_ERROR=nan"):
        check_error_mode({"tpu"})
    monkeypatch.setenv("EQX_ON_ERROR", "breakpoint")
    with pytest.raises(RuntimeError, match="EQX_ON_ERROR='breakpoint'"):
        check_error_mode({"tpu"})
    monkeypatch.setenv("EQX_ON_ERROR", "nan")
    check_error_mode({"tpu"})
    monkeypatch.delenv("EQX_ON_ERROR")
    check_error_mode({"cpu", "gpu"})
