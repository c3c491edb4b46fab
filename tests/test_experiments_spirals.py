"""The Table 2 spirals experiment (experiments.spirals): smoke preset and its pieces, and the
configuration mechanism every experiment shares."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
from helpers import REPO_ROOT

from experiments import _common as C
from experiments import reproduce, spirals


def _steps(path: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _config(*overrides):
    return C.resolve_config(spirals.PRESETS, "smoke", list(overrides))


def test_smoke_preset_writes_a_complete_run(tmp_path):
    out = tmp_path / "spirals-smoke"
    summary = spirals.main(["--preset", "smoke", "--out", str(out), "--no-progress"])

    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "figure8_extrapolation_n30.png" in pngs
    assert set(summary["plots"]) <= set(pngs)
    checkpoints = sorted(out.glob("*/checkpoint.eqx"))
    assert checkpoints, "no checkpoint written"

    # Every training part is a resumable Trainer run with its own log and checkpoint.
    cfg = spirals.PRESETS["smoke"]
    for part, steps in (("latent_ode_n30", cfg["steps"]), ("rnn_dt_n30", cfg["rnn_steps"])):
        assert (out / part / "checkpoint.eqx").is_file()
        assert (out / part / "config.json").is_file()
        assert _steps(out / part / "metrics.jsonl") == list(range(1, steps + 1))
        assert summary["tasks"][part]["steps"] == steps

    # The summary follows the experiments' shared convention.
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("experiment", "preset", "wall_time_s", "metrics", "paper", "plots"):
        assert key in on_disk, key
    assert on_disk["experiment"] == "spirals" and on_disk["preset"] == "smoke"
    assert on_disk["paper"]["rmse"]["latent_ode"] == {"30": 0.1642, "50": 0.1502, "100": 0.1346}
    for kind in ("latent_ode", "rnn", "rnn_dt"):
        for key in ("rmse", "rmse_noisy"):
            value = on_disk["metrics"][key][kind]["30"]
            assert math.isfinite(value) and value > 0
    assert on_disk["metrics"]["nfe"]["latent_ode"]["30"] > 0
    assert on_disk["machine"]["cpu_count"] >= 1


def test_rerunning_a_finished_run_trains_nothing_and_gives_the_same_numbers(tmp_path):
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--out", str(out), "--no-progress", "--set", "parts=rnn_dt"]
    first = spirals.main(argv)
    second = spirals.main(argv)
    assert second["resumed"]
    assert second["metrics"]["rmse"] == first["metrics"]["rmse"]
    # The run's wall time is that of the invocation that trained; the re-evaluation is
    # reported on its own.
    assert second["invocations"] == 2 and second["interrupted_invocations"] == 0
    assert second["wall_time_s"] == first["wall_time_s"] == first["invocation_time_s"]
    assert second["invocation_time_s"] > 0
    assert _steps(out / "rnn_dt_n30" / "metrics.jsonl") == list(range(1, 5))
    timing = json.loads((out / "rnn_dt_n30" / "timing.json").read_text())
    assert timing["invocations"] == 1

    # Other settings: the part refuses to resume, names the key and leaves its files alone.
    part_config = (out / "rnn_dt_n30" / "config.json").read_text()
    changed = [*argv, "--set", "rnn_lr=0.02"]
    with pytest.raises(ValueError, match=r"Changed: rnn_lr: 0\.01 -> 0\.02\. .*--fresh"):
        spirals.main(changed)
    assert (out / "rnn_dt_n30" / "config.json").read_text() == part_config
    # --fresh starts over: the old folder is moved aside, untouched, and training runs again.
    third = spirals.main([*changed, "--fresh"])
    (moved,) = tmp_path.glob("run.old-*")
    assert (moved / "rnn_dt_n30" / "config.json").read_text() == part_config
    assert not third["resumed"] and third["invocations"] == 1
    assert json.loads((out / "rnn_dt_n30" / "timing.json").read_text())["invocations"] == 1
    assert third["metrics"]["rmse"] != first["metrics"]["rmse"]


def test_every_experiment_has_the_same_command_line_and_presets():
    from experiments import density_matching, max_likelihood, mnist, nfe_study

    for module in (spirals, mnist, nfe_study, density_matching, max_likelihood):
        args = module.SCRIPT.parse_args(["--fresh", "--set", "a=1", "--set", "b=2"])
        assert args.fresh and args.overrides == ["a=1", "b=2"], module.__name__
        assert not module.SCRIPT.parse_args([]).fresh
        assert module.SCRIPT.parse_args([]).preset == "small"
        assert module.SCRIPT.presets is module.PRESETS and module.SCRIPT.name == module.EXPERIMENT
        assert set(module.PRESETS) == {"smoke", "small", "paper"}, module.__name__
        keys = set(module.PRESETS["paper"])
        for name, preset in module.PRESETS.items():
            assert set(preset) == keys, (module.__name__, name)
    assert C.start_fresh(REPO_ROOT / "no-such-run-folder") is None


def test_config_overrides_are_typed_and_validated():
    cfg = _config("steps=7", "lr=0.5", "obs_counts=30,50", "parts=rnn", "resample=false")
    assert cfg["steps"] == 7 and cfg["lr"] == 0.5 and cfg["obs_counts"] == [30, 50]
    assert cfg["parts"] == ["rnn"] and cfg["resample"] is False
    with pytest.raises(SystemExit, match="unknown key 'no_such_key'"):
        _config("no_such_key=1")
    with pytest.raises(SystemExit, match="steps"):
        _config("steps=many")
    with pytest.raises(SystemExit, match="key=value"):
        _config("steps")
    with pytest.raises(SystemExit):
        C.resolve_config(spirals.PRESETS, "nonexistent", [])
    # Typed by the preset's value: tuples stay tuples, None accepts any type, strings stay
    # strings unless true/false, none is None everywhere.
    from experiments import density_matching, mnist

    dm = C.resolve_config(density_matching.PRESETS, "smoke", ["sizes=2,8", "targets=u1,u3"])
    assert dm["sizes"] == (2, 8) and dm["targets"] == ("u1", "u3")
    mn = C.resolve_config(
        mnist.PRESETS, "small",
        ["groups=4", "train_subset=none", "im2col=false", "milestones=3,5", "schedule=step"],
    )
    assert mn["groups"] == 4 and mn["train_subset"] is None and mn["im2col"] is False
    assert mn["milestones"] == (3, 5) and mn["schedule"] == "step"
    assert C.parse_override("[]", [1, 2]) == [] and C.parse_override("2.5", None) == 2.5


def test_event_data_is_a_valid_padded_grid():
    cfg = _config("poisson_num_seqs=40")
    data = spirals.make_event_data(cfg, seed=0, dtype=np.float64)
    times, mask = data["times"], data["mask"]
    assert times.shape == mask.shape and times.shape[0] == 40
    assert np.all(np.diff(times, axis=1) > 0)  # strictly increasing, padding included
    np.testing.assert_allclose(times[:, 0], 0.0)
    np.testing.assert_allclose(times[:, -1], cfg["poisson_t_end"])
    assert not mask[:, 0].any() and not mask[:, -1].any()
    np.testing.assert_array_equal(mask.sum(axis=1), data["counts"])
    # The event count matches the integral of the true rate on average.
    grid = np.linspace(0.0, data["t_end"], 2001)
    expected = np.mean(
        [np.trapezoid(spirals.true_rate(data, grid, p), grid) for p in data["phases"]]
    )
    assert abs(data["counts"].mean() - expected) < 4 * math.sqrt(expected / 40) + 0.5


def test_reproduce_discovers_spirals_and_renders_a_summary(tmp_path):
    found, missing = reproduce.discover()
    assert "spirals" in found and "reproduce" not in found
    assert not set(found) & set(missing)

    run = tmp_path / "runs" / "spirals-smoke"
    run.mkdir(parents=True)
    (run / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    summary = {
        "experiment": "spirals",
        "preset": "smoke",
        "wall_time_s": 12.5,
        "metrics": {"rmse": {"latent_ode": {"30": 0.2}}, "other": 3},
        "paper": {"rmse": {"latent_ode": {"30": 0.1642}}},
        "plots": ["plot.png"],
        "notes": ["a note"],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    doc = tmp_path / "docs" / "reproduction.md"
    result = reproduce.main(
        [
            "--preset",
            "smoke",
            "--from-existing",
            "--only",
            "spirals",
            "--summary",
            str(run),
            "--out",
            str(tmp_path / "runs"),
            "--doc",
            str(doc),
        ]
    )
    text = doc.read_text()
    assert result["experiments"]["spirals"]["summary"] == str(run / "summary.json")
    assert "| rmse.latent_ode.30 | 0.1642 | 0.2 |" in text
    assert "(reproduction/spirals-plot.png)" in text
    assert (tmp_path / "docs" / "reproduction" / "spirals-plot.png").is_file()
    assert "a note" in text and "CPUs" in text


@pytest.mark.slow
def test_smoke_preset_odernn_and_poisson_parts(tmp_path):
    out = tmp_path / "run"
    summary = spirals.main(
        ["--preset", "smoke", "--out", str(out), "--no-progress", "--set", "parts=odernn,poisson"]
    )
    assert math.isfinite(summary["metrics"]["rmse"]["odernn"]["30"])
    assert math.isfinite(summary["metrics"]["poisson"]["rate_rmse"])
    assert (out / "poisson_rate.png").is_file()
    assert (out / "poisson" / "checkpoint.eqx").is_file()


def test_extrapolation_batches_read_n_points_and_score_the_future():
    import jax
    import jax.numpy as jnp

    cfg = _config()
    assert cfg["objective"] == "extrapolate" and cfg["normalize"]
    data = spirals.SpiralData(cfg, seed=0, dtype=jnp.float32)
    # Training windows carry the 100 points after the observed ones; standardised units.
    assert data.train.ts.shape[0] == cfg["num_points"] + cfg["num_extrapolate"]
    z = np.asarray(data.norm(data.train.ys)).reshape(-1, 2)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    # one scale for both coordinates (the std of all training values), so shapes are kept
    np.testing.assert_allclose(data.scale, np.asarray(data.train.ys, np.float64).std(), rtol=1e-6)
    np.testing.assert_allclose(z.std(), 1.0, rtol=1e-2)
    np.testing.assert_allclose(data.denorm(data.norm(data.train.ys)), data.train.ys, atol=1e-5)

    n, batch = 30, 5
    values, times, mask, enc = data.batch_fn(n, batch, True, 0, latent=True)(0, jax.random.key(1))
    assert values.shape == (batch, n + 100, 2) and times.shape == mask.shape == enc.shape
    assert bool(mask.all()) and np.all(np.asarray(enc).sum(axis=1) == n)
    assert not np.asarray(enc)[:, n:].any()  # the encoder never reads the future
    assert np.all(np.diff(np.asarray(times), axis=1) > 0)
    np.testing.assert_allclose(times[:, n:], np.broadcast_to(data.train.ts[100:], (batch, 100)))
    assert float(np.max(np.asarray(times)[:, :n])) <= float(data.train.ts[99])
    # The future values are rows of the standardised training windows.
    fut = np.asarray(values[:, n:])
    windows = np.asarray(data.norm(data.train.ys))[:, 100:]
    for row in fut:
        assert np.min(np.abs(windows - row).max(axis=(1, 2))) < 1e-6
    # The RNN reads the same sequences (values and times, no masks).
    rnn_batch = data.batch_fn(n, batch, True, 0, latent=False)(0, jax.random.key(1))
    assert len(rnn_batch) == 2 and rnn_batch[0].shape == (batch, n + 100, 2)
