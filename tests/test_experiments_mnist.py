"""Smoke tests of the MNIST experiments (experiments/mnist.py, experiments/nfe_study.py).

The smoke presets train every model for a few steps on a tiny subset with cheap compilation;
the tests check the run folders and the summary fields the reproduction report relies on.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"

pytest.importorskip("matplotlib")


def _load(name):
    module_name = f"_test_experiments_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="module")
def mnist():
    return _load("mnist")


@pytest.fixture(scope="module")
def nfe_study():
    return _load("nfe_study")


@pytest.fixture(scope="module")
def mnist_run(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist-smoke")
    summary = mnist.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, summary


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mnist_smoke_writes_run_folder(mnist, mnist_run):
    out, summary = mnist_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "table.md"):
        assert (out / name).stat().st_size > 0, name
    assert summary["plots"] and all((out / p).stat().st_size > 0 for p in summary["plots"])
    assert all(p.endswith(".png") for p in summary["plots"])
    for model in mnist.MODELS:
        for name in ("checkpoint.eqx", "metrics.jsonl", "eval.jsonl", "config.json"):
            assert (out / model / name).stat().st_size > 0, (model, name)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_mnist_smoke_summary_has_table_fields(mnist, mnist_run):
    out, summary = mnist_run
    assert summary["experiment"] == "mnist" and summary["preset"] == "smoke"
    assert summary["wall_time_s"] > 0
    assert set(summary["metrics"]) == set(mnist.MODELS) == set(summary["paper"])
    for name, m in summary["metrics"].items():
        assert 0.0 <= m["test_error"] <= 1.0, name
        assert m["params"] > 0, name
        assert m["memory_temp_bytes"] >= 0, name
        assert m["train_time_s"] > 0, name
    ode = summary["metrics"]["odenet"]
    assert ode["nfe_f"] > 0 and ode["nfe_b"] > 0
    assert summary["metrics"]["rknet"]["nfe_f"] == 4 * mnist.PRESETS["smoke"]["rk_steps"]
    for title in mnist.MODEL_TITLES.values():
        assert title in summary["table_markdown"]
    # every logged training step of the ODE-Net carries its forward NFE (Figure 3d needs it)
    logs = _jsonl(out / "odenet" / "metrics.jsonl")
    assert [r["step"] for r in logs] == list(range(1, len(logs) + 1))
    assert all(r["nfe"] > 0 for r in logs)
    assert {r["model"] for r in _jsonl(out / "metrics.jsonl")} == set(mnist.MODELS)


def test_mnist_rerun_resumes_without_redoing_steps(mnist, tmp_path):
    args = ["--preset", "smoke", "--models", "mlp", "--out", str(tmp_path), "--no-progress"]
    mnist.main(args)
    first = _jsonl(tmp_path / "mlp" / "metrics.jsonl")
    mnist.main(args)  # finished: nothing is retrained
    assert _jsonl(tmp_path / "mlp" / "metrics.jsonl") == first
    summary = mnist.main(args + ["--epochs", "2"])  # continues from the checkpoint
    steps = [r["step"] for r in _jsonl(tmp_path / "mlp" / "metrics.jsonl")]
    assert steps == list(range(1, 2 * len(first) + 1))
    assert _jsonl(tmp_path / "mlp" / "metrics.jsonl")[: len(first)] == first
    assert summary["metrics"]["mlp"]["steps"] == 2 * len(first)
    # another learning rate is refused (it used to resume silently and overwrite config.json)
    stored = (tmp_path / "mlp" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"Changed: lr: \S+ -> 0\.5\. .*--fresh"):
        mnist.main(args + ["--epochs", "2", "--set", "lr=0.5"])
    assert (tmp_path / "mlp" / "config.json").read_text() == stored


def test_im2col_field_matches_conv_field(mnist):
    import neuralode as nde

    field = nde.nn.ConvField(8, groups=4, key=jax.random.key(0))
    field = mnist._float32(field)
    y = jax.random.normal(jax.random.key(1), (3, 8, 6, 6), jnp.float32)
    fast, plain = mnist.BatchField(field, True), mnist.BatchField(field, False)
    np.testing.assert_allclose(fast(0.3, y, None), plain(0.3, y, None), rtol=1e-5, atol=1e-5)

    def loss(f):
        return jnp.sum(jnp.sin(f(0.7, y, None)))

    g_fast = jax.grad(loss)(fast)
    g_plain = jax.grad(loss)(plain)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_nfe_study_smoke(nfe_study, mnist_run, tmp_path):
    mnist_out, _ = mnist_run
    out = tmp_path / "nfe"
    summary = nfe_study.main(
        ["--preset", "smoke", "--from", str(mnist_out), "--out", str(out), "--no-progress"]
    )
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(summary["plots"]) == 5
    assert all((out / p).stat().st_size > 0 for p in summary["plots"])
    assert summary["experiment"] == "nfe_study" and summary["wall_time_s"] > 0
    m = summary["metrics"]
    tols = nfe_study.PRESETS["smoke"]["tolerances"]
    assert m["a_nfe_vs_error"]["tol"] == tols
    assert all(n > 0 for n in m["a_nfe_vs_error"]["nfe_f"])
    assert all(e >= 0 for e in m["a_nfe_vs_error"]["error_rms"])
    assert len(m["b_time_vs_nfe"]["time_min_s"]) == len(tols)
    c = m["c_backward_vs_forward"]
    assert all(n > 0 for n in c["nfe_b_fullnorm"] + c["nfe_b_seminorm"])
    assert c["ratio_fullnorm_mean"] > 0
    assert m["d_training"]["nfe_first_10pct"] > 0
    assert len(_jsonl(out / "metrics.jsonl")) == len(tols)
    assert summary["paper"]["nfe_b_over_f_replications"] == [0.78, 0.86]


def test_nfe_study_trains_its_own_model_when_none_given(nfe_study, tmp_path):
    out = tmp_path / "nfe"
    summary = nfe_study.main(
        ["--preset", "smoke", "--from", str(tmp_path / "absent"), "--out", str(out),
         "--no-progress"]
    )
    assert (out / "mnist" / "odenet" / "checkpoint.eqx").stat().st_size > 0
    assert (out / "mnist" / "summary.json").is_file()
    assert summary["from"] == str(out / "mnist")
    assert summary["metrics"]["d_training"]["nfe_first_10pct"] > 0
