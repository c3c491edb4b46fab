"""Smoke tests: the examples run as the README says (``python examples/<name>.py``) and write
what they promise."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO_ROOT, child_env, read_jsonl


def _run(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, f"examples/{name}.py", *args],
        cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_spiral_demo_writes_run_folder(tmp_path):
    _run("spiral_demo", "--out", str(tmp_path), "--iters", "3", "--batch", "4")
    for name in ("config.json", "metrics.jsonl", "summary.json", "spiral.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r["nfe"] > 0 for r in records)
    assert json.loads((tmp_path / "summary.json").read_text())["trajectory_rmse"] > 0


def test_backward_nfe_example():
    out = _run("backward_nfe")
    assert out.count("NFE-B") == 3
    nfe_b = [int(line.split("NFE-B")[1].split()[0]) for line in out.splitlines() if "NFE-B" in line]
    assert all(n > 0 for n in nfe_b)


def test_bouncing_ball_example_fits_the_restitution():
    out = _run("bouncing_ball", "--bounces", "3", "--steps", "40")
    fitted = float(out.split("fitted e =")[1].split()[0])
    assert abs(fitted - 0.8) < 0.02, out


def test_neural_event_example_learns_the_boundary():
    out = _run("neural_event", "--steps", "100", "--trajectories", "8")
    # "exit-time RMSE: <initial> (unit circle) -> <final> (learned)"
    rmse = out.split("exit-time RMSE:")[1].split("->")
    initial, final = float(rmse[0].split()[0]), float(rmse[1].split()[0])
    assert final < 0.25 * initial, out


def test_robertson_fit_example_reduces_the_loss():
    out = _run("robertson_fit", "--iters", "4")
    initial, final = (float(v) for v in out.split("\nloss ")[1].split()[:3:2])
    assert final < initial, out
    rel = [float(v) for v in out.split("relative errors [")[1].split("]")[0].split(",")]
    assert all(0 <= e < 1.5 for e in rel), out
    steps = int(out.split("]; ")[1].split()[0])
    assert steps < 200, out  # stiff: an explicit solver needs ~1e5 steps
