"""Smoke tests of the CNF experiments: density matching (Figure 4) and maximum likelihood
(Figure 5). Each runs its ``smoke`` preset end to end and checks what the run folder holds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import read_jsonl

from experiments import density_matching as dm
from experiments import max_likelihood as ml

SUMMARY_KEYS = {"experiment", "preset", "wall_time_s", "metrics", "paper", "plots"}


def _check_run_folder(out, summary, experiment):
    assert SUMMARY_KEYS <= set(summary)
    assert summary["experiment"] == experiment and summary["preset"] == "smoke"
    assert summary["wall_time_s"] > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["metrics"] == json.loads(json.dumps(summary["metrics"]))
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == experiment and config["preset"] == "smoke"
    assert read_jsonl(out / "metrics.jsonl")
    assert summary["plots"]
    for plot in summary["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def test_density_matching_smoke(tmp_path):
    summary = dm.main(["--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    _check_run_folder(tmp_path, summary, "density_matching")
    assert {"densities.png", "loss_curves.png"} <= set(summary["plots"])

    # one sub-run per model: Trainer files, loss and NFE logged, checkpoint written
    for name in ("cnf-M2", "nf-K2"):
        sub = tmp_path / "u1" / name
        for f in ("config.json", "metrics.jsonl", "checkpoint.eqx", "eval.json"):
            assert (sub / f).stat().st_size > 0, f"{name}/{f}"
        logs = read_jsonl(sub / "metrics.jsonl")
        assert [r["step"] for r in logs] == [1, 2, 3, 4]
        assert all(math.isfinite(r["loss"]) for r in logs)
    assert all(r["nfe"] > 0 for r in read_jsonl(tmp_path / "u1" / "cnf-M2" / "metrics.jsonl"))

    # the table: loss and normaliser-corrected KL of CNF and NF per (target, M = K)
    (row,) = summary["table"]
    assert row["target"] == "u1" and row["size"] == 2
    for key in ("cnf_loss", "nf_loss", "cnf_kl", "nf_kl", "cnf_nfe", "log_z"):
        assert math.isfinite(row[key]), key
    assert row["cnf_kl"] == pytest.approx(row["cnf_loss"] + row["log_z"])
    m = summary["metrics"]
    assert m["final_loss"]["u1"]["cnf-M2"] == row["cnf_loss"]
    assert set(m["kl"]["u1"]) == {"cnf-M2", "nf-K2"}
    assert "| u1 |" in (tmp_path / "table.md").read_text()

    # running the same command again resumes: nothing is retrained, the results are the same
    before = (tmp_path / "u1" / "cnf-M2" / "metrics.jsonl").read_text()
    again = dm.main(["--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "u1" / "cnf-M2" / "metrics.jsonl").read_text() == before
    assert again["table"] == summary["table"]


def test_density_matching_normaliser():
    """``log Z`` of the confined ``u2`` is known in closed form: a Gaussian ridge of std 0.4
    along z1 over the window [-4, 4] plus two half-Gaussian walls of std 0.2."""
    length = 2 * dm.BOX + 2 * dm.WALL * math.sqrt(math.pi / 2)
    exact = math.log(length * 0.4 * math.sqrt(2 * math.pi))
    assert dm.log_normaliser("u2", 1024) == pytest.approx(exact, abs=1e-3)
    # u1 lies well inside the window: the wall changes nothing
    z = np.array([[2.0, 0.0], [0.0, -2.0], [5.0, 0.0]])
    import neuralode as nde

    inside = np.asarray(dm.target_log_density("u1", z[:2]))
    np.testing.assert_allclose(inside, np.asarray(nde.datasets.target_log_density("u1", z[:2])))
    assert float(dm.target_log_density("u2", z[2])) < -12  # the wall outside the window


def test_max_likelihood_smoke(tmp_path):
    summary = ml.main(["--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    _check_run_folder(tmp_path, summary, "max_likelihood")
    assert {"densities.png", "samples.png", "cnf_flow.png", "loss_curves.png"} <= set(
        summary["plots"]
    )
    models = ("cnf", "nf", "ffjord", "ffjord_rnode")
    for name in models:
        sub = tmp_path / "circles" / name
        for f in ("config.json", "metrics.jsonl", "checkpoint.eqx", "eval.json"):
            assert (sub / f).stat().st_size > 0, f"{name}/{f}"
        assert [r["step"] for r in read_jsonl(sub / "metrics.jsonl")] == [1, 2, 3]
    rnode_logs = read_jsonl(tmp_path / "circles" / "ffjord_rnode" / "metrics.jsonl")
    assert all(r["nfe"] > 0 and r["kinetic"] > 0 and r["jacobian"] > 0 for r in rnode_logs)
    # with the regularisers the loss is the NLL plus positive terms
    assert all(r["loss"] > r["nll"] for r in rnode_logs)

    rows = {r["model"]: r for r in summary["table"]}
    assert set(rows) == set(models)
    for name, row in rows.items():
        assert row["dataset"] == "circles"
        assert math.isfinite(row["test_nll"]) and row["train_time_s"] > 0, name
        if name != "nf":
            assert row["nfe_train"] > 0 and row["nfe_test"] > 0, name
    m = summary["metrics"]
    assert set(m["test_nll"]["circles"]) == set(models)
    assert set(m["kinetic"]["circles"]) == {"ffjord", "ffjord_rnode"}
    assert "FFJORD CNF + RNODE" in (tmp_path / "table.md").read_text()
