"""Smoke tests of the MNIST experiments (experiments/mnist.py, experiments/nfe_study.py).

The smoke presets train every model for a few steps on a tiny subset with cheap compilation;
the tests check the run folders and the summary fields the reproduction report relies on.
"""

from __future__ import annotations

import json

import jax
import pytest
from helpers import read_jsonl

from experiments import mnist, nfe_study


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist-smoke")
    summary = mnist.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, summary


def test_mnist_smoke_writes_run_folder(mnist_run):
    out, summary = mnist_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "table.md"):
        assert (out / name).stat().st_size > 0, name
    assert summary["plots"] and all((out / p).stat().st_size > 0 for p in summary["plots"])
    assert all(p.endswith(".png") for p in summary["plots"])
    for model in mnist.MODELS:
        for name in ("checkpoint.eqx", "metrics.jsonl", "eval.jsonl", "config.json"):
            assert (out / model / name).stat().st_size > 0, (model, name)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_mnist_smoke_summary_has_table_fields(mnist_run):
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
    logs = read_jsonl(out / "odenet" / "metrics.jsonl")
    assert [r["step"] for r in logs] == list(range(1, len(logs) + 1))
    assert all(r["nfe"] > 0 for r in logs)
    assert {r["model"] for r in read_jsonl(out / "metrics.jsonl")} == set(mnist.MODELS)


def test_mnist_rerun_resumes_without_redoing_steps(tmp_path):
    args = ["--preset", "smoke", "--set", "models=mlp", "--out", str(tmp_path), "--no-progress"]
    mnist.main(args)
    first = read_jsonl(tmp_path / "mlp" / "metrics.jsonl")
    mnist.main(args)  # finished: nothing is retrained
    assert read_jsonl(tmp_path / "mlp" / "metrics.jsonl") == first
    summary = mnist.main(args + ["--set", "epochs=2"])  # continues from the checkpoint
    steps = [r["step"] for r in read_jsonl(tmp_path / "mlp" / "metrics.jsonl")]
    assert steps == list(range(1, 2 * len(first) + 1))
    assert read_jsonl(tmp_path / "mlp" / "metrics.jsonl")[: len(first)] == first
    assert summary["metrics"]["mlp"]["steps"] == 2 * len(first)
    # another learning rate is refused (it used to resume silently and overwrite config.json)
    stored = (tmp_path / "mlp" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"Changed: lr: \S+ -> 0\.5\. .*--fresh"):
        mnist.main(args + ["--set", "epochs=2", "--set", "lr=0.5"])
    assert (tmp_path / "mlp" / "config.json").read_text() == stored


def test_odenet_uses_the_library_fields_and_with_solve():
    import neuralode as nde

    cfg = mnist.PRESETS["smoke"]
    model = mnist.make_model("odenet", cfg, jax.random.key(0))
    assert isinstance(model.block.field, nde.nn.BatchField)
    assert isinstance(model.block.field.field, nde.nn.ConvField)
    full = model.with_solve(adjoint=nde.BacksolveAdjoint(seminorm=False))
    assert full.block.solve.adjoint == nde.BacksolveAdjoint(seminorm=False)
    assert model.block.solve.adjoint == nde.BacksolveAdjoint(seminorm=cfg["seminorm"])
    same = jax.tree.leaves(full.block.field), jax.tree.leaves(model.block.field)
    assert all(x is y for x, y in zip(*same, strict=True))  # the same parameters


def test_nfe_study_smoke(mnist_run, tmp_path):
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
    assert len(read_jsonl(out / "metrics.jsonl")) == len(tols)
    assert summary["paper"]["nfe_b_over_f_replications"] == [0.78, 0.86]


def test_nfe_study_trains_its_own_model_when_none_given(tmp_path):
    out = tmp_path / "nfe"
    summary = nfe_study.main(
        ["--preset", "smoke", "--from", str(tmp_path / "absent"), "--out", str(out),
         "--no-progress"]
    )
    assert (out / "mnist" / "odenet" / "checkpoint.eqx").stat().st_size > 0
    assert (out / "mnist" / "summary.json").is_file()
    assert summary["from"] == str(out / "mnist")
    assert summary["metrics"]["d_training"]["nfe_first_10pct"] > 0
